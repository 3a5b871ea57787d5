"""Next-token pipeline: text -> train a SimpleRNN/LSTM/GRU -> evaluate -> export.

    python -m pipelines.text --corpus FILE --cell lstm --units 256 --layers 1 \\
        --seq-len 100 --epochs 10 --output saved_models/NAME

Without `--corpus` it trains on CPython's reference documentation
(`pydoc_data.topics`), which every Python install has. Every input is checked
before TensorFlow is loaded, so a mistake costs a second, not a training run.
At the end the exported SavedModel is loaded back and asked for a next-token
prediction and a sample, exactly as a serving client would.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from model.config import MAX_TOKENS_LIMIT, ModelConfig, OptimizerConfig, TrainingConfig, UsageError
from model.export import check_export_base
from pipelines import cli
from pipelines.text_data import DEFAULT_CORPUS_NAME, TextData, default_corpus, prepare_text, read_corpus


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipelines.text", description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", default=None,
                      help=f"UTF-8 text file (default: {DEFAULT_CORPUS_NAME}, shipped with Python)")
    data.add_argument("--token-level", default="char", help="char (default) | word")
    data.add_argument("--seq-len", type=int, default=100, help="window length in tokens")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of the corpus, at its end, kept for validation")
    data.add_argument("--max-vocab", type=int, default=None,
                      help="keep the most frequent tokens only; the rest map to [UNK]")
    cli.add_model_flags(parser)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--bidirectional", action="store_true",
                        help="refused: a next-token model must not see the future")
    cli.add_optimizer_flags(parser)
    cli.add_training_flags(parser)
    out = parser.add_argument_group("export and sample")
    out.add_argument("--output", default="saved_models/text",
                     help="model directory; each run adds the next version (default saved_models/text)")
    out.add_argument("--prompt", default="The ", help="prompt of the sample printed at the end")
    out.add_argument("--max-tokens", type=int, default=200, help="length of that sample")
    out.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, > 0")
    out.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    out.add_argument("--sample-seed", type=int, default=0)
    return parser


def check_sampling_flags(args: argparse.Namespace) -> None:
    if args.bidirectional:
        raise UsageError("--bidirectional is refused for text: a next-token model reads left to right "
                         "and must not see the tokens it predicts (it is for pipelines.series)")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature} (use 0.01 for greedy)")
    if not 0 <= args.max_tokens <= MAX_TOKENS_LIMIT:
        raise UsageError(f"--max-tokens must be between 0 and {MAX_TOKENS_LIMIT}, got {args.max_tokens}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 samples from all tokens), got {args.top_k}")


def train_text_model(data: TextData, model_config: ModelConfig, optimizer_config: OptimizerConfig,
                     training_config: TrainingConfig, seq_len: int, output: str | Path,
                     data_config: dict[str, Any] | None = None,
                     extra_callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """Build, train, evaluate and export a next-token model; write summary.json.

    Args:
        data: The prepared corpus.
        model_config: Cell, width, depth, dropout, embedding width.
        optimizer_config: Learning rate, schedule and clipping.
        training_config: Epochs, batch size, run directory...
        seq_len: Window length.
        output: `saved_models/<name>`.
        data_config: Data settings to record in summary.json.
        extra_callbacks: More Keras callbacks for `fit`.

    Returns:
        The summary written to `runs/<run-id>/summary.json`.
    """
    from model import distribute

    with distribute.placement(training_config.strategy) as place:
        return _train_text_model(place, data, model_config, optimizer_config, training_config, seq_len, output,
                                 data_config, extra_callbacks)


def _train_text_model(place, data, model_config, optimizer_config, training_config, seq_len, output,
                      data_config, extra_callbacks) -> dict[str, Any]:
    import keras

    from model import builders, distribute, through_time, training
    from model.text_export import export_text_model
    from model.vocabulary import id_space_size
    from pipelines.text_data import batches_per_pass, make_dataset, training_batch_size

    keras.utils.set_random_seed(training_config.seed)
    run = training.RunDirectory.open(place.runs_dir(training_config.runs_dir), training_config.run_id,
                                     Path(output).name)
    # One endless dataset, `steps_per_epoch` batches an epoch: Keras then keeps one iterator for the
    # whole run. Ending each epoch by running out of data makes it rebuild the iterator, and that
    # stalled each epoch by 30-40 s for a GRU-256x2 (2 cores).
    train_data = distribute.shard_by_data(make_dataset(data.train_ids, seq_len, training_config.batch_size,
                                                       shuffle=True, seed=training_config.seed).repeat())
    val_data = distribute.shard_by_data(make_dataset(data.val_ids, seq_len, training_config.batch_size,
                                                     shuffle=False))
    steps_per_epoch = training_config.steps_per_epoch or batches_per_pass(data.train_ids, seq_len,
                                                                          training_config.batch_size)
    with place.strategy.scope():
        model = builders.build_next_token_model(id_space_size(data.vocabulary), model_config)
        optimizer = training.make_run_optimizer(optimizer_config, training_config, steps_per_epoch)
        builders.compile_next_token_model(model, optimizer)

    probe_x, probe_y = next(iter(val_data))  # the monitor's through-time check reads these sequences
    probe = (probe_x[:16], through_time.next_token_loss(probe_y[:16, -1]))
    result = training.train(model, train_data, val_data, run, training_config, optimizer_config,
                            extra_callbacks, probe, steps_per_epoch)
    val_nats = float(model.evaluate(val_data, verbose=0))
    version_dir = export_text_model(
        model, place.output(output), data.vocabulary, data.token_level, data.unigram_counts, seq_len,
        extra_metadata={"run_id": run.run_id, "val_loss_nats_per_token": val_nats})

    batch = training_batch_size(data.train_ids, seq_len, training_config.batch_size)
    # Steady state: the first step (graph tracing) and validation are not counted.
    tokens_per_second = result.timed_steps * batch * seq_len / result.train_seconds if result.timed_steps else 0.0
    summary = {
        "run_id": run.run_id,
        "run_dir": str(run.path),
        "config": {"model": dataclasses.asdict(model_config),
                   "optimizer": dataclasses.asdict(optimizer_config),
                   "training": dataclasses.asdict(training_config),
                   "data": {**(data_config or {}), "seq_len": seq_len, "token_level": data.token_level}},
        "parameters": int(model.count_params()),
        "vocabulary_size": len(data.vocabulary),
        "train_tokens": len(data.train_ids),
        "val_tokens": len(data.val_ids),
        "val_oov_share": data.oov_share_val,
        "token_unit": data.token_level,
        "val_loss_nats_per_token": val_nats,
        "val_bits_per_token": val_nats / math.log(2),
        "val_perplexity": math.exp(val_nats) if val_nats < 700 else math.inf,
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "wall_seconds": result.wall_seconds,
        "tokens_per_second": tokens_per_second,
        "train_batch_size": batch,  # the requested one, shrunk when a pass has fewer windows
        "steps_per_epoch": steps_per_epoch,
        "stopped_early": result.stopped_early,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "resumed": result.resumed,
        "gradient_health": result.gradient_health,
        "export_path": str(version_dir),
        "worker": distribute.worker_name(place.strategy),
        "chief": place.chief,
    }
    run.write_summary(summary)
    return summary


def show_exported_model(version_dir: str, prompt: str, max_tokens: int, temperature: float,
                        top_k: int, seed: int) -> None:
    """Load the export back, as another app would, and print what it predicts."""
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    text = tf.constant([prompt])
    nxt = loaded.signatures["serving_default"](text=text)
    tokens = [t.decode("utf-8") for t in nxt["top_k_tokens"].numpy()[0]]
    probabilities = nxt["top_k_probabilities"].numpy()[0]
    print(f"\nLoaded {version_dir}. Most likely next tokens after {prompt!r}:")
    print("  " + ", ".join(f"{t!r} {p:.3f}" for t, p in zip(tokens, probabilities)))
    generated = loaded.signatures["generate_top_k"](
        text=text, max_tokens=tf.constant([max_tokens], tf.int32),
        temperature=tf.constant([temperature], tf.float32), seed=tf.constant([seed], tf.int64),
        top_k=tf.constant([top_k], tf.int32))["generated"].numpy()[0].decode("utf-8")
    print(f"Sample (temperature {temperature}, top-k {top_k or 'off'}, seed {seed}):")
    print("-" * 72 + f"\n{prompt}{generated}\n" + "-" * 72)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model_config = cli.model_config(args, embedding_dim=args.embedding_dim)
    optimizer_config = cli.optimizer_config(args)
    training_config = cli.training_config(args)
    check_sampling_flags(args)
    check_export_base(args.output)
    text = read_corpus(args.corpus) if args.corpus else default_corpus()
    data = prepare_text(text, args.token_level, args.seq_len, args.val_fraction, args.max_vocab)
    print(f"Corpus {args.corpus or DEFAULT_CORPUS_NAME}: {len(data.train_ids):,} training and "
          f"{len(data.val_ids):,} validation {args.token_level}s, vocabulary {len(data.vocabulary)}")

    summary = train_text_model(
        data, model_config, optimizer_config, training_config, args.seq_len, args.output,
        data_config={"corpus": args.corpus or DEFAULT_CORPUS_NAME, "val_fraction": args.val_fraction,
                     "max_vocab": args.max_vocab})
    unit = args.token_level
    print(f"\nValidation loss {summary['val_loss_nats_per_token']:.4f} nats/{unit} = "
          f"{summary['val_bits_per_token']:.4f} bits/{unit}, perplexity {summary['val_perplexity']:.2f}; "
          f"{summary['tokens_per_second']:,.0f} {unit}s/s in training")
    if not summary["chief"]:
        print(f"{summary['worker']} done: the chief writes the run directory and the export")
        return 0
    print(f"Run: {summary['run_dir']}   Export: {summary['export_path']}")
    show_exported_model(summary["export_path"], args.prompt, args.max_tokens, args.temperature,
                        args.top_k, args.sample_seed)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
