"""Export a trained next-token model as a self-contained SavedModel.

The SavedModel takes raw strings: tokenisation, the vocabulary, the recurrent
state and the whole sampling loop live inside the graph, so another app needs
nothing but TensorFlow. Signatures (every input has a leading batch dimension,
as TensorFlow Serving's batching requires):

    serving_default  text [b] string
                     -> probabilities [b, V]   next-token distribution over
                                               the vocabulary (metadata order)
                        top_k_tokens [b, k], top_k_probabilities [b, k]
    generate         text [b] string, max_tokens [b] int32,
                     temperature [b] float32, seed [b] int64
                     -> generated [b] string   the continuation only
    generate_top_k   the same plus top_k [b] int32 (0 = no restriction)
    metadata         rows [b] int32 (any values)
                     -> model_kind [b], cell [b], token_level [b] string,
                        seq_len [b] int32, vocabulary [b, V] string
                        (the same facts in each of the b rows)

Every input and output has a leading batch dimension, as TensorFlow
Serving's batching requires of every signature it runs (at least one input;
outputs split back by rows): that is why `metadata` takes an input at all.

Generation steps the recurrent *cells* one token at a time and carries their
state, so n new tokens cost n steps (no window is ever re-fed); a prompt is
read a layer at a time, each layer's input projection in one product over
all its steps (`recurrent_step.read_sequences`). Using the
cells also keeps cuDNN out of the graph: a model trained on a GPU exports
only ops that a CPU-only TensorFlow Serving can run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from model import export, recurrent_step, sampling
from model.config import MAX_TOKENS_LIMIT
from model.vocabulary import FIRST_TOKEN_ID, OOV_TOKEN, make_lookup


def recurrent_layers(model: keras.Model) -> list[keras.layers.RNN]:
    """The model's recurrent layers, bottom to top."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]


@dataclasses.dataclass
class _Weights:
    """The network's weights, read once per request (not once per step)."""

    embedding: tf.Tensor
    layers: list[recurrent_step.LayerWeights]
    output_kernel: tf.Tensor
    output_bias: tf.Tensor


class TextModelSignatures:
    """The serving signatures of a next-token model.

    A plain object, not a `tf.Module`: what is saved is only the functions and
    the variables and table they use (see `export.save_signatures`).

    Args:
        model: A trained model from `model.builders.build_next_token_model`.
        vocabulary: The vocabulary (ids 2...), in id order.
        token_level: `"char"` or `"word"`.
        unigram_counts: Training counts of each vocabulary token; their
            distribution answers an empty prompt, which has no state yet.
        metadata: Facts about the model, returned by the `metadata` signature.
        top_k: Width of `serving_default`'s top-k outputs.
    """

    def __init__(self, model: keras.Model, vocabulary: Sequence[str], token_level: str,
                 unigram_counts: Sequence[int], metadata: dict[str, Any], top_k: int = 5):
        # The layers are read one by one, never the Keras model's call(): tracing it
        # on a GPU would bake cuDNN ops into the export.
        self.lookup = make_lookup(vocabulary)
        self._embedding = model.get_layer("embedding")
        self._recurrent = recurrent_layers(model)
        for layer in self._recurrent:
            recurrent_step.check_supported(layer)
        self._output = model.get_layer("logits")
        # Indexed by token id: padding and OOV first, never produced (their logits are -inf).
        self._id_to_token = tf.constant(["", OOV_TOKEN, *vocabulary], dtype=tf.string)
        self._never_predicted = tf.constant([-np.inf] * FIRST_TOKEN_ID + [0.0] * len(vocabulary), tf.float32)
        self._separator = "" if token_level == "char" else " "
        self._top_k = min(top_k, len(vocabulary))
        counts = np.asarray(unigram_counts, dtype=np.float64) + 1.0  # Laplace smoothing
        self._unigram_logits = tf.constant(
            np.concatenate([[-np.inf] * FIRST_TOKEN_ID, np.log(counts / counts.sum())]), dtype=tf.float32)
        self._metadata = {key: tf.constant(value) for key, value in {
            "model_kind": metadata["model_kind"], "cell": metadata["cell"],
            "token_level": token_level, "seq_len": np.int32(metadata["seq_len"]),
            "vocabulary": list(vocabulary)}.items()}

    # -- the network, one step at a time -------------------------------------------

    def _read_weights(self) -> _Weights:
        return _Weights(
            embedding=tf.convert_to_tensor(self._embedding.embeddings),
            layers=[recurrent_step.read_weights(layer) for layer in self._recurrent],
            output_kernel=tf.convert_to_tensor(self._output.kernel),
            output_bias=tf.convert_to_tensor(self._output.bias) + self._never_predicted)

    def _step(self, weights: _Weights, token_ids: tf.Tensor, states: tuple[tf.Tensor, ...]):
        """Feed one token id per row; return next-token logits (over all ids) and new states."""
        x = tf.gather(weights.embedding, token_ids)
        h, states = recurrent_step.stack_step(weights.layers, x, states)
        return self._logits(weights, h), states

    def _logits(self, weights: _Weights, h: tf.Tensor) -> tf.Tensor:
        """Next-token logits (over all ids) from the top layer's output."""
        return tf.matmul(h, weights.output_kernel) + weights.output_bias

    def _encode(self, weights: _Weights, text: tf.Tensor):
        """Run the prompts through the network; return last logits, states and prompt lengths."""
        # Invalid bytes would otherwise be decoded silently as U+FFFD: refuse them instead.
        transcoded = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        valid = tf.reduce_all(tf.equal(transcoded, text))
        # Assert's data is only this message: echoing the bad bytes would make the error itself undecodable.
        with tf.control_dependencies([tf.debugging.Assert(valid, [
                "text must be valid UTF-8; decode the bytes with their own encoding and send UTF-8"])]):
            text = tf.identity(text)
        if self._separator:
            tokens = tf.strings.split(text)
        else:
            tokens = tf.strings.unicode_split(text, "UTF-8")
        ids = tf.cast(self.lookup(tokens), tf.int32)  # unknown tokens -> OOV id
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        padded = ids.to_tensor(0)  # right-padded
        states = recurrent_step.read_sequences(weights.layers, tf.gather(weights.embedding, padded), lengths)
        top_h = states[-weights.layers[-1].state_count]  # the top layer's h at each row's last token
        # An empty prompt has no state yet: the unigram distribution answers it.
        logits = tf.where((lengths > 0)[:, None], self._logits(weights, top_h), self._unigram_logits)
        return logits, states, lengths

    def _check_batch(self, text, *others):
        checks = [tf.debugging.assert_equal(
            tf.shape(other)[0], tf.shape(text)[0],
            message=f"{name} must have one value per prompt in text (same batch size)")
            for name, other in others]
        return checks

    def _generate(self, text, max_tokens, temperature, seed, top_k=None):
        named = [("max_tokens", max_tokens), ("temperature", temperature), ("seed", seed)]
        if top_k is not None:
            named.append(("top_k", top_k))
        checks = self._check_batch(text, *named) + [
            tf.debugging.assert_non_negative(max_tokens, message="max_tokens must be >= 0"),
            tf.debugging.assert_less_equal(
                max_tokens, MAX_TOKENS_LIMIT, message=f"max_tokens must be <= {MAX_TOKENS_LIMIT}"),
            tf.debugging.assert_positive(
                temperature, message="temperature must be > 0 (use a small value such as 0.01 for greedy)"),
        ]
        if top_k is not None:
            checks.append(tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 = all tokens)"))
        with tf.control_dependencies(checks):
            weights = self._read_weights()
            logits, states, lengths = self._encode(weights, text)
        steps = tf.reduce_max(tf.concat([max_tokens, [0]], axis=0))
        # Row i's random numbers depend on seed[i] only; laid out [steps, b, 1] for the loop.
        uniform = tf.transpose(sampling.uniform_noise(seed, steps))[:, :, None]
        inverse_temperature = 1.0 / temperature[:, None]
        # One slot more than needed, padded below, so stacking works when steps == 0.
        sampled = tf.TensorArray(tf.int32, size=steps + 1)
        for step in tf.range(steps):
            ids = sampling.sample_next(logits, inverse_temperature, uniform[step], top_k)
            sampled = sampled.write(step, ids)
            logits, states = self._step(weights, ids, states)
        sampled = sampled.write(steps, tf.zeros_like(lengths))
        tokens = tf.gather(self._id_to_token, tf.transpose(sampled.stack())[:, :steps])  # [b, steps]
        keep = tf.sequence_mask(max_tokens, steps)  # each row stops at its own max_tokens
        generated = tf.strings.reduce_join(tf.ragged.boolean_mask(tokens, keep), axis=1,
                                           separator=self._separator)
        if self._separator:  # words: a space between the prompt and the continuation
            needs_space = (lengths > 0) & (max_tokens > 0)
            generated = tf.where(needs_space, tf.strings.join([" ", generated]), generated)
        return {"generated": generated}

    # -- signatures ---------------------------------------------------------------

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def next_token(self, text):
        logits, _, _ = self._encode(self._read_weights(), text)
        probabilities = tf.nn.softmax(logits)[:, FIRST_TOKEN_ID:]  # padding and OOV have 0
        top = tf.math.top_k(probabilities, k=self._top_k)
        return {
            "probabilities": probabilities,
            "top_k_tokens": tf.gather(self._id_to_token[FIRST_TOKEN_ID:], top.indices),
            "top_k_probabilities": top.values,
        }

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None], tf.int32, name="max_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int64, name="seed"),
    ])
    def generate(self, text, max_tokens, temperature, seed):
        return self._generate(text, max_tokens, temperature, seed)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None], tf.int32, name="max_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int64, name="seed"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
    ])
    def generate_top_k(self, text, max_tokens, temperature, seed, top_k):
        return self._generate(text, max_tokens, temperature, seed, top_k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="rows")])
    def metadata(self, rows):
        return export.facts_per_row(self._metadata, tf.shape(rows)[0])

    def signatures(self) -> dict[str, Any]:
        return {"serving_default": self.next_token, "generate": self.generate,
                "generate_top_k": self.generate_top_k, "metadata": self.metadata}


def export_text_model(model: keras.Model, base_dir: str | Path, vocabulary: Sequence[str],
                      token_level: str, unigram_counts: Sequence[int], seq_len: int,
                      extra_metadata: dict[str, Any] | None = None, top_k: int = 5) -> Path:
    """Export a trained next-token model as the next version under `base_dir`.

    Args:
        model: The trained Keras model.
        base_dir: `saved_models/<name>`; the model is served under `<name>`.
        vocabulary: Vocabulary in id order (ids 2...).
        token_level: `"char"` or `"word"`.
        unigram_counts: Training count of each vocabulary token.
        seq_len: Training window length (recorded in the metadata).
        extra_metadata: More facts for `assets/metadata.json` (e.g. the run id).
        top_k: Width of `serving_default`'s top-k outputs.

    Returns:
        The version directory written, e.g. `saved_models/<name>/3`.
    """
    layers = recurrent_layers(model)
    metadata = {
        "model_kind": "next_token",
        "cell": recurrent_step.CELL_KINDS[type(layers[0])],
        "layers": len(layers),
        "units": int(layers[0].units),
        "token_level": token_level,
        "seq_len": int(seq_len),
        "oov_token": OOV_TOKEN,
        "vocabulary": list(vocabulary),
        "max_tokens_limit": MAX_TOKENS_LIMIT,
        "signatures": {
            "serving_default": "text -> probabilities, top_k_tokens, top_k_probabilities",
            "generate": "text, max_tokens, temperature, seed -> generated",
            "generate_top_k": "text, max_tokens, temperature, seed, top_k -> generated",
            "metadata": "rows [b] -> model_kind, cell, token_level, seq_len, vocabulary (one row each)",
        },
        **(extra_metadata or {}),
    }
    module = TextModelSignatures(model, vocabulary, token_level, unigram_counts, metadata, top_k)
    name = Path(base_dir).name

    def write(directory: Path) -> None:
        export.save_signatures(directory, module.signatures(), resources=[module.lookup.lookup_table])
        export.write_metadata(directory, metadata)
        prompt = np.array([" ".join(vocabulary[:3]) if token_level == "word" else "".join(vocabulary[:3])])
        export.write_warmup_requests(directory, name, [
            ("serving_default", {"text": prompt}),
            ("generate", {"text": prompt, "max_tokens": np.array([8], np.int32),
                          "temperature": np.array([1.0], np.float32), "seed": np.array([0], np.int64)}),
            ("generate_top_k", {"text": prompt, "max_tokens": np.array([8], np.int32),
                                "temperature": np.array([1.0], np.float32), "seed": np.array([0], np.int64),
                                "top_k": np.array([3], np.int32)}),
            ("metadata", {"rows": np.array([0], np.int32)}),
        ])

    return export.export_new_version(base_dir, write)

