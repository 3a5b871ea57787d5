"""Reading corpora, vocabularies, the contiguous split and the windows."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import UsageError
from model.vocabulary import FIRST_TOKEN_ID, OOV_ID, OOV_TOKEN, build_vocabulary, encode, make_lookup
from pipelines.text_data import (
    batches_per_pass,
    default_corpus,
    make_dataset,
    prepare_text,
    read_corpus,
    training_batch_size,
)


def test_read_corpus_reads_utf8(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("héllo wörld ✓\n", encoding="utf-8")
    assert read_corpus(path) == "héllo wörld ✓\n"


@pytest.mark.parametrize("setup, expected", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(b"   \n\n"), "is empty"),
])
def test_read_corpus_refuses_bad_files(tmp_path, setup, expected):
    path = tmp_path / "corpus.txt"
    setup(path)
    with pytest.raises(UsageError, match=expected):
        read_corpus(path)


def test_non_utf8_error_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait")  # Latin-1 é at offset 3
    with pytest.raises(UsageError, match=r"0xe9 at byte offset 3") as error:
        read_corpus(path)
    assert "\n" not in str(error.value)


def test_default_corpus_is_the_python_reference_text():
    text = default_corpus()
    assert len(text) > 400_000
    assert "lambda" in text and "yield" in text


def test_split_is_contiguous_and_vocabulary_comes_from_training_only():
    text = "ab" * 450 + "abz" * 33 + "a"  # 1000 characters; 'z' occurs only in the last 100
    data = prepare_text(text, "char", seq_len=10, val_fraction=0.1)
    assert len(data.train_ids) == 900 and len(data.val_ids) == 100
    assert "z" not in data.vocabulary  # nothing from validation reaches the vocabulary
    assert data.vocabulary == ["a", "b"]
    index = {token: i + FIRST_TOKEN_ID for i, token in enumerate(data.vocabulary)}
    expected_val = [index.get(ch, OOV_ID) for ch in text[900:]]
    np.testing.assert_array_equal(data.val_ids, expected_val)  # the end of the text, in order
    assert data.oov_share_val == pytest.approx(expected_val.count(OOV_ID) / 100)
    assert data.unigram_counts == [450, 450]


def test_word_level_tokens_and_max_vocab():
    data = prepare_text("a a a b b c " * 30, "word", seq_len=5, val_fraction=0.2, max_vocab=2)
    assert data.vocabulary == ["a", "b"]
    assert OOV_ID in data.train_ids  # 'c' is out of the two-word vocabulary


def test_word_tokens_are_cut_exactly_where_tensorflow_cuts_them():
    import tensorflow as tf

    from model.vocabulary import tokenize

    text = "a\u00a0b  c\u2003d\x1ce\tf\ng "
    in_graph = [t.decode("utf-8") for t in tf.strings.split([text]).to_list()[0]]
    assert tokenize(text, "word") == in_graph == ["a\u00a0b", "c\u2003d\x1ce", "f", "g"]


def test_encode_agrees_with_the_in_model_string_lookup():
    vocabulary = build_vocabulary(list("hello world"))
    tokens = list("hello, wörld")
    lookup = make_lookup(vocabulary)
    np.testing.assert_array_equal(encode(tokens, vocabulary), np.asarray(lookup(tokens)))
    assert OOV_TOKEN not in build_vocabulary(["a", OOV_TOKEN])


def test_prepare_text_refuses_a_corpus_too_short_for_the_windows():
    # The settings' own ranges (seq_len > 0, ...) are TextDataConfig's: tests/test_model.py.
    with pytest.raises(UsageError, match="corpus too short"):
        prepare_text("hello world " * 20, seq_len=100)


def test_windows_are_inputs_and_targets_shifted_by_one():
    ids = np.arange(2, 103, dtype=np.int32)  # 101 tokens -> 10 windows of 10
    batches = list(make_dataset(ids, seq_len=10, batch_size=4, shuffle=False))
    inputs = np.concatenate([x.numpy() for x, _ in batches])
    targets = np.concatenate([y.numpy() for _, y in batches])
    assert inputs.shape == (10, 10)
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(inputs[:, 0], np.arange(2, 102, 10))  # every token a target once


def test_training_windows_move_and_are_reshuffled_each_epoch_in_full_batches():
    ids = np.arange(2, 403, dtype=np.int32)  # 401 tokens: 40 windows of 10 (39 when shifted)
    dataset = make_dataset(ids, seq_len=10, batch_size=8, shuffle=True, seed=1)
    epochs = [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(6)]
    starts = []
    for batches in epochs:
        assert all(len(x) == 8 for x, _ in batches)
        for x, y in batches:
            np.testing.assert_array_equal(y, x + 1)
        epoch_starts = sorted(np.concatenate([x for x, _ in batches])[:, 0].tolist())
        # Every window of an epoch lies on one grid, shifted by that epoch's offset
        # (the partial last batch is dropped, so a few grid points may be missing).
        offsets = {(start - 2) % 10 for start in epoch_starts}
        assert len(offsets) == 1 and len(set(epoch_starts)) == len(epoch_starts) == 8 * len(batches)
        starts.append(offsets.pop())
    assert len(set(starts)) > 1  # the boundaries moved between epochs
    orders = [np.concatenate([x for x, _ in batches])[:, 0].tolist() for batches in epochs[:2]]
    assert orders[0] != orders[1]  # and the windows were reshuffled


def test_every_training_pass_fills_a_batch_even_on_a_tiny_corpus():
    ids = np.arange(2, 27, dtype=np.int32)  # 25 tokens: 2 windows of 10 at offset 0, 1 at offset 9
    assert training_batch_size(ids, 10, 8) == 1 and batches_per_pass(ids, 10, 8) == 2
    dataset = make_dataset(ids, seq_len=10, batch_size=8, shuffle=True, seed=3)
    passes = [[x.numpy() for x, _ in dataset] for _ in range(30)]
    assert all(passes) and {len(p) for p in passes} <= {1, 2}
    assert len({int(p[0][0, 0]) for p in passes}) > 2  # the grid still moves


def test_the_repeated_training_dataset_moves_its_grid_every_pass():
    ids = np.arange(2, 403, dtype=np.int32)  # 401 tokens: 40 windows of 10 at offset 0, 39 at others
    stream = make_dataset(ids, seq_len=10, batch_size=8, shuffle=True, seed=1).repeat()
    batches = [x.numpy() for x, _ in stream.take(40)]  # about 8 passes of 4 or 5 batches
    grids = [{(int(start) - 2) % 10 for start in x[:, 0]} for x in batches]
    assert all(len(grid) == 1 for grid in grids)  # a batch never mixes two passes...
    offsets = [grid.pop() for grid in grids]
    assert len(set(offsets)) > 2  # ...and the grid moves from pass to pass
