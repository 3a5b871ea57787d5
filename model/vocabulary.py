"""Token ids of the text models, defined once for training and for export.

    id 0      padding (never a real token; pads ragged prompts on the right)
    id 1      out of vocabulary (`OOV_TOKEN`): unknown characters or words
    id 2...   the vocabulary, in the order it was built

The exported model maps strings to ids with a Keras `StringLookup` built from
the same list, so training ids and serving ids cannot drift apart.
"""

from __future__ import annotations

import collections
import re
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # keras is imported lazily: the CLIs validate input before loading TensorFlow
    import keras

OOV_ID = 1
FIRST_TOKEN_ID = 2
OOV_TOKEN = "[UNK]"


ASCII_WHITESPACE = re.compile(r"[ \t\n\v\f\r]+")


def tokenize(text: str, token_level: str) -> list[str]:
    """Split text into tokens exactly as the exported model does in-graph.

    Characters are Unicode code points (`tf.strings.unicode_split`); words are
    runs between ASCII whitespace, as `tf.strings.split` cuts them (Python's
    `str.split()` would also cut at no-break and other Unicode spaces).
    """
    if token_level == "char":
        return list(text)
    return [token for token in ASCII_WHITESPACE.split(text) if token]


def build_vocabulary(tokens: Iterable[str], max_size: Optional[int] = None) -> list[str]:
    """Distinct tokens, most frequent first (ties in code-point order).

    Args:
        tokens: The training tokens.
        max_size: Keep only this many; the rest become out-of-vocabulary.

    Returns:
        The vocabulary, without the OOV token (which always has id 1).
    """
    counts = collections.Counter(tokens)
    counts.pop(OOV_TOKEN, None)
    ordered = sorted(counts, key=lambda token: (-counts[token], token))
    return ordered[:max_size] if max_size else ordered


def encode(tokens: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """Token strings to int32 ids (unknown tokens to `OOV_ID`)."""
    index = {token: i + FIRST_TOKEN_ID for i, token in enumerate(vocabulary)}
    return np.fromiter((index.get(t, OOV_ID) for t in tokens), dtype=np.int32, count=len(tokens))


def id_space_size(vocabulary: Sequence[str]) -> int:
    """Number of ids the model's embedding and logits cover (padding and OOV included)."""
    return len(vocabulary) + FIRST_TOKEN_ID


def make_lookup(vocabulary: Sequence[str]) -> "keras.layers.StringLookup":
    """The in-model string -> id layer, consistent with `encode`."""
    import keras

    return keras.layers.StringLookup(vocabulary=list(vocabulary), mask_token="",
                                     num_oov_indices=1, oov_token=OOV_TOKEN)
