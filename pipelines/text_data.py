"""Text data for next-token models: read a corpus, build ids, cut windows.

The corpus is split contiguously (the last `val_fraction` of the tokens is
validation, never shuffled into training), the vocabulary is built from the
training span only, and each span is cut into windows of `seq_len + 1`
tokens: the first `seq_len` are the input, the last `seq_len` the targets
(the same window shifted by one), as in char-rnn.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional

import numpy as np

from model.config import UsageError
from model.vocabulary import OOV_ID, build_vocabulary, encode, tokenize
from pipelines.cli import existing_file

DEFAULT_CORPUS_NAME = "pydoc_data.topics"


def default_corpus() -> str:
    """CPython's own reference documentation (~465k characters), on every machine.

    `pydoc_data.topics` ships with the standard library and holds the text of
    the Python language reference that `help()` shows: no download needed.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_corpus(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file.

    Raises:
        UsageError: Missing file, a directory, unreadable, empty, or not UTF-8
            (the message names the byte offset of the first bad byte).
    """
    path = existing_file(path, "--corpus", "the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--corpus {path} cannot be read ({error.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"--corpus {path} is not UTF-8: invalid byte 0x{raw[error.start]:02x} at byte "
                         f"offset {error.start}; convert it, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise UsageError(f"--corpus {path} is empty; pass a file with some text in it")
    return text


@dataclasses.dataclass
class TextData:
    """A tokenised corpus split for training.

    Attributes:
        vocabulary: Tokens with ids 2..., most frequent first.
        token_level: `"char"` or `"word"`.
        train_ids: int32 ids of the training span.
        val_ids: int32 ids of the validation span (the end of the corpus).
        unigram_counts: Count of each vocabulary token in the training span.
    """

    vocabulary: list[str]
    token_level: str
    train_ids: np.ndarray
    val_ids: np.ndarray
    unigram_counts: list[int]

    @property
    def oov_share_val(self) -> float:
        """Share of validation tokens unseen in training."""
        return float(np.mean(self.val_ids == OOV_ID)) if len(self.val_ids) else 0.0


def prepare_text(text: str, token_level: str = "char", seq_len: int = 100,
                 val_fraction: float = 0.1, max_vocab: Optional[int] = None) -> TextData:
    """Tokenise, split contiguously and encode a corpus.

    Args:
        text: The corpus.
        token_level: `"char"` (default) or `"word"` (whitespace-separated).
        seq_len: Window length; both spans must hold at least one window.
        val_fraction: Share of tokens, at the end, kept for validation.
        max_vocab: Keep only the most frequent tokens; others become OOV.

    Returns:
        A `TextData`.

    Raises:
        UsageError: If the corpus is too short for the windows. (The settings' own
            ranges are checked by `model.config.TextDataConfig.validate`.)
    """
    tokens = tokenize(text, token_level)
    n_val = int(round(len(tokens) * val_fraction))
    train_tokens, val_tokens = tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]
    needed = seq_len + 1
    if len(train_tokens) < needed + 1 or len(val_tokens) < needed:
        minimum = int(np.ceil(max((needed + 1) / (1 - val_fraction), needed / val_fraction)))
        unit = "characters" if token_level == "char" else "words"
        raise UsageError(f"corpus too short: {len(tokens)} {unit}, but --seq-len {seq_len} with "
                         f"--val-fraction {val_fraction} needs at least {minimum}; "
                         "use a longer corpus or a smaller --seq-len")
    vocabulary = build_vocabulary(train_tokens, max_vocab)
    counts = collections.Counter(train_tokens)
    return TextData(
        vocabulary=vocabulary,
        token_level=token_level,
        train_ids=encode(train_tokens, vocabulary),
        val_ids=encode(val_tokens, vocabulary),
        unigram_counts=[counts[token] for token in vocabulary],
    )


def window_count(ids: np.ndarray, seq_len: int) -> int:
    """Number of (input, target) windows of `seq_len` tokens cut from `ids`."""
    return max(0, (len(ids) - 1) // seq_len)


def largest_offset(ids: np.ndarray, seq_len: int) -> int:
    """How far the training windows' grid may move: below seq_len, and never past the last full window."""
    return max(0, min(seq_len - 1, len(ids) - seq_len - 1))


def training_batch_size(ids: np.ndarray, seq_len: int, batch_size: int) -> int:
    """The batch size of the training windows: shrunk so that every pass, at any offset, fills one batch."""
    return max(1, min(batch_size, window_count(ids[largest_offset(ids, seq_len):], seq_len)))


def batches_per_pass(ids: np.ndarray, seq_len: int, batch_size: int) -> int:
    """Full training batches in one pass over `ids` (at offset 0): the pipeline's default epoch."""
    return max(1, window_count(ids, seq_len) // training_batch_size(ids, seq_len, batch_size))


def make_dataset(ids: np.ndarray, seq_len: int, batch_size: int, shuffle: bool, seed: int = 0):
    """Windows of `seq_len` inputs and their next-token targets, batched.

    Windows start every `seq_len` tokens, so every token is a target once per
    pass. For training, the windows' boundaries move every pass (the first
    window starts at a random offset in [0, seq_len)), so the model does not
    see the same 100 characters in the same frame each time and every token is
    predicted from a different amount of context; the windows are reshuffled
    and batched with a fixed batch size (`training_batch_size`). Each
    iteration of the dataset is one such pass; the pipeline repeats it.

    Args:
        ids: int32 token ids.
        seq_len: Window length.
        batch_size: Windows per batch.
        shuffle: Random offset, reshuffling and dropping a partial last batch
            (training); otherwise windows from the first token, in order, all
            kept (evaluation).
        seed: Seed of the offsets and the shuffling.

    Returns:
        A `tf.data.Dataset` of `(inputs [b, seq_len], targets [b, seq_len])`.
    """
    import tensorflow as tf

    tokens = tf.constant(ids, tf.int32)

    def windows_from(offset):  # consecutive windows of seq_len + 1 that overlap by one token
        return tf.data.Dataset.from_tensor_slices(tf.signal.frame(tokens[offset:], seq_len + 1, seq_len))

    count = window_count(ids, seq_len)
    if shuffle:
        offsets = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        moves = largest_offset(ids, seq_len) + 1
        windows = offsets.flat_map(lambda r: windows_from(tf.cast(r % moves, tf.int32)))
        windows = windows.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        batches = windows.batch(training_batch_size(ids, seq_len, batch_size), drop_remainder=True)
    else:
        batches = windows_from(0).batch(min(batch_size, count))
    return batches.map(lambda w: (w[:, :-1], w[:, 1:]),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
