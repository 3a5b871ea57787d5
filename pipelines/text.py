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
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from model.config import ModelConfig, OptimizerConfig, SamplingConfig, TextDataConfig, TrainingConfig, UsageError
from model.export import check_export_base
from pipelines import cli
from pipelines.text_data import DEFAULT_CORPUS_NAME, TextData, default_corpus, prepare_text, read_corpus


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipelines.text", description=__doc__.split("\n\n")[0])
    cli.add_config_flags(parser, TextDataConfig, "data")
    cli.add_model_flags(parser, embedding=True)
    parser.add_argument("--bidirectional", action="store_true",
                        help="refused: a next-token model must not see the future")
    cli.add_optimizer_flags(parser)
    cli.add_training_flags(parser)
    cli.add_config_flags(parser, SamplingConfig, "export and sample")
    parser.add_argument("--output", default="saved_models/text",
                        help="model directory; each run adds the next version (default saved_models/text)")
    return parser


class TextTask:
    """Next-token prediction on a prepared corpus (a `model.training.Task`).

    Args:
        data: The corpus as ids, split, with its vocabulary.
        seq_len: Window length.
        data_config: Data settings recorded in summary.json.
    """

    def __init__(self, data: TextData, seq_len: int, name: str, data_config: dict[str, Any] | None = None):
        self.data = data
        self.seq_len = seq_len
        self.name = name
        self.data_config = data_config or {}

    def build(self, model_config: ModelConfig):
        from model import builders
        from model.vocabulary import id_space_size

        return builders.build_next_token_model(id_space_size(self.data.vocabulary), model_config)

    def datasets(self, model, config: TrainingConfig):
        from model.training import Datasets
        from pipelines.text_data import batches_per_pass, make_dataset, training_batch_size

        ids, seq_len, batch = self.data.train_ids, self.seq_len, config.batch_size
        return Datasets(train=make_dataset(ids, seq_len, batch, shuffle=True, seed=config.seed).repeat(),
                        validation=make_dataset(self.data.val_ids, seq_len, batch, shuffle=False),
                        steps_per_pass=batches_per_pass(ids, seq_len, batch),
                        batch_size=training_batch_size(ids, seq_len, batch), steps_per_example=seq_len)

    def compile(self, model, optimizer) -> None:
        from model import builders

        builders.compile_next_token_model(model, optimizer)

    def probe(self, model, validation):
        from model import through_time

        x, y = next(iter(validation))  # the monitor's through-time check reads these sequences
        return x[:16], through_time.next_token_loss(y[:16, -1])

    def evaluate(self, model, validation) -> dict[str, Any]:
        nats = float(model.evaluate(validation, verbose=0))
        return {"val_loss_nats_per_token": nats, "val_bits_per_token": nats / math.log(2),
                "val_perplexity": math.exp(nats) if nats < 700 else math.inf}

    def export(self, model, output: Path, run_id: str, evaluation: dict[str, Any]) -> Path:
        from model.text_export import export_text_model

        data = self.data
        return export_text_model(model, output, data.vocabulary, data.token_level, data.unigram_counts, self.seq_len,
                                 extra_metadata={"run_id": run_id,
                                                 "val_loss_nats_per_token": evaluation["val_loss_nats_per_token"]})

    def test(self, model, run, evaluation: dict[str, Any]) -> dict[str, Any]:
        return evaluation  # no test span: the validation figures are the result

    def describe(self) -> dict[str, Any]:
        data = self.data
        return {"config": {"data": {**self.data_config, "seq_len": self.seq_len, "token_level": data.token_level}},
                "vocabulary_size": len(data.vocabulary), "train_tokens": len(data.train_ids),
                "val_tokens": len(data.val_ids), "val_oov_share": data.oov_share_val, "token_unit": data.token_level}


def train_text_model(data: TextData, model_config: ModelConfig, optimizer_config: OptimizerConfig,
                     training_config: TrainingConfig, seq_len: int, output: str | Path,
                     data_config: dict[str, Any] | None = None, extra_callbacks: Iterable[Any] = (),
                     setting_names: dict[str, str] | None = None) -> dict[str, Any]:
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
        setting_names: How messages name settings (`model.config.name_settings`).

    Returns:
        The summary written to `runs/<run-id>/summary.json`.
    """
    from model import training

    task = TextTask(data, seq_len, Path(output).name, data_config)
    return training.run_job(task, model_config, optimizer_config, training_config, output, extra_callbacks,
                            setting_names)


def show_exported_model(version_dir: str, sampling: SamplingConfig) -> None:
    """Load the export back, as another app would, and print what it predicts."""
    import tensorflow as tf

    prompt, max_tokens, temperature = sampling.prompt, sampling.max_tokens, sampling.temperature
    top_k, seed = sampling.top_k, sampling.sample_seed
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
    data_config = cli.config_from_args(TextDataConfig, args)
    model_config = cli.model_config(args)
    optimizer_config = cli.optimizer_config(args)
    training_config = cli.training_config(args)
    sampling = cli.config_from_args(SamplingConfig, args)
    if args.bidirectional:
        raise UsageError("--bidirectional is refused for text: a next-token model reads left to right "
                         "and must not see the tokens it predicts (it is for pipelines.series)")
    check_export_base(args.output)
    text = read_corpus(data_config.corpus) if data_config.corpus else default_corpus()
    data = prepare_text(text, data_config.token_level, data_config.seq_len, data_config.val_fraction,
                        data_config.max_vocab)
    corpus = data_config.corpus or DEFAULT_CORPUS_NAME
    print(f"Corpus {corpus}: {len(data.train_ids):,} training and {len(data.val_ids):,} validation "
          f"{data.token_level}s, vocabulary {len(data.vocabulary)}")

    cli.import_tensorflow(args.verbose)
    summary = train_text_model(
        data, model_config, optimizer_config, training_config, data_config.seq_len, args.output,
        data_config={"corpus": corpus, "val_fraction": data_config.val_fraction, "max_vocab": data_config.max_vocab},
        setting_names=cli.SETTING_FLAGS)
    unit = data.token_level
    print(f"\nValidation loss {summary['val_loss_nats_per_token']:.4f} nats/{unit} = "
          f"{summary['val_bits_per_token']:.4f} bits/{unit}, perplexity {summary['val_perplexity']:.2f}; "
          f"{summary['tokens_per_second']:,.0f} {unit}s/s in training")
    if not summary["chief"]:
        print(f"{summary['worker']} done: the chief writes the run directory and the export")
        return 0
    print(f"Run: {summary['run_dir']}   Export: {summary['export_path']}")
    show_exported_model(summary["export_path"], sampling)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
