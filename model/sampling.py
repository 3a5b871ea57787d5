"""Sampling the next token inside a TensorFlow graph, reproducibly per request.

A served model sees requests merged into one batch by TensorFlow Serving's
batching, so a row's sample must not depend on which other rows share its
batch. TensorFlow's stateless samplers take one seed per call, not per row;
so the randomness here comes from a small counter-based generator: a 32-bit
integer hash of (row seed, step). Every row gets its own stream, the same
request always gets the same text, and all the random numbers of a request
are made up front in a few vectorised integer ops that any TensorFlow Serving
build can run.

Each step then draws by inverting the cumulative distribution: the token is
the first whose cumulative probability exceeds the row's uniform number. That
costs a softmax, a cumsum and a search per step, which keeps generation fast.
"""

from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters apart.


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """`lowbias32`, a 32-bit integer hash with good avalanche (C. Wellons)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def uniform_noise(seed: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
    """Uniform numbers in (0, 1) that depend only on (row seed, step).

    Args:
        seed: int64 `[batch]`, one seed per row.
        steps: int32 scalar, how many numbers each row needs.

    Returns:
        float32 `[batch, steps]`.
    """
    seed = tf.cast(seed, tf.int64)
    mask32 = tf.constant(0xFFFFFFFF, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(seed, mask32), tf.uint32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed, tf.constant(32, tf.int64)), mask32),
                   tf.uint32)
    row_key = _mix32(tf.bitwise.bitwise_xor(_mix32(low), high))
    counters = tf.cast(tf.range(steps), tf.uint32) * tf.constant(_GOLDEN, tf.uint32)
    bits = _mix32(_mix32(row_key[:, None] + counters[None, :]))
    bits = tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32))  # keep 24 bits: exact in float32
    return (tf.cast(bits, tf.float32) + 0.5) * (1.0 / (1 << 24))


def restrict_to_top_k(logits: tf.Tensor, top_k: tf.Tensor) -> tf.Tensor:
    """Set every logit below the row's k-th largest to -inf.

    Args:
        logits: float32 `[batch, vocab]`.
        top_k: int32 `[batch]`; 0 (or anything >= vocab) keeps every token.

    Returns:
        float32 `[batch, vocab]`.
    """
    vocab_size = tf.shape(logits)[1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab_size), vocab_size)
    descending = tf.sort(logits, axis=1, direction="DESCENDING")
    kth_largest = tf.gather(descending, k - 1, axis=1, batch_dims=1)
    return tf.where(logits < kth_largest[:, None], tf.constant(float("-inf")), logits)


def sample_next(logits: tf.Tensor, inverse_temperature: tf.Tensor, uniform: tf.Tensor,
                top_k: tf.Tensor | None = None) -> tf.Tensor:
    """Draw one token per row from softmax(logits / temperature).

    This runs once per generated token, so its inputs come shaped for it and
    every op counts.

    Args:
        logits: float32 `[batch, vocab]`, with a static vocabulary size.
        inverse_temperature: float32 `[batch, 1]`, 1 / temperature; a large
            value (temperature near 0) is greedy decoding.
        uniform: float32 `[batch, 1]` in (0, 1), this step's column of `uniform_noise`.
        top_k: Optional int32 `[batch]`: sample among the k most likely only.

    Returns:
        int32 `[batch]` token indices into `logits`' last axis.
    """
    scaled = logits * inverse_temperature
    if top_k is not None:
        scaled = restrict_to_top_k(scaled, top_k)
    cumulative = tf.math.cumsum(tf.nn.softmax(scaled), axis=1)
    chosen = tf.reshape(tf.searchsorted(cumulative, uniform, side="right", out_type=tf.int32), [-1])
    # Rounding can leave the total a hair below a uniform close to 1: stay in range.
    return tf.minimum(chosen, logits.shape[1] - 1)
