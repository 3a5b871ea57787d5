"""The command line: bad input is one clear line and exit code 2; good input trains and exports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import MAX_TOKENS_LIMIT
from pipelines import cli
from pipelines.text import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run each CLI call in an empty directory, so anything it writes is visible."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_file(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


BAD_INPUTS = [
    # (id, argv builder, expected message fragment)
    ("missing file", lambda d, ok: ["--corpus", str(d / "nope.txt")], "does not exist"),
    ("directory", lambda d, ok: ["--corpus", str(d)], "is a directory"),
    ("empty file", lambda d, ok: ["--corpus", make_file(d / "empty.txt", b"")], "is empty"),
    ("not utf-8", lambda d, ok: ["--corpus", make_file(d / "l1.txt", b"abc\xff" * 400)],
     "not UTF-8: invalid byte 0xff at byte offset 3"),
    ("shorter than a window", lambda d, ok: ["--corpus", make_file(d / "s.txt", b"hello world")],
     "corpus too short"),
    ("unknown cell", lambda d, ok: ["--corpus", ok, "--cell", "transformer"], "unknown --cell 'transformer'"),
    ("units 0", lambda d, ok: ["--corpus", ok, "--units", "0"], "--units must be a positive integer"),
    ("units not a number", lambda d, ok: ["--corpus", ok, "--units", "many"], "invalid int value: 'many'"),
    ("layers negative", lambda d, ok: ["--corpus", ok, "--layers", "-2"], "--layers must be a positive integer"),
    ("seq-len 0", lambda d, ok: ["--corpus", ok, "--seq-len", "0"], "--seq-len must be a positive integer"),
    ("temperature 0", lambda d, ok: ["--corpus", ok, "--temperature", "0"], "--temperature must be > 0"),
    ("max-tokens negative", lambda d, ok: ["--corpus", ok, "--max-tokens", "-1"], "--max-tokens must be between"),
    ("max-tokens too large", lambda d, ok: ["--corpus", ok, "--max-tokens", str(MAX_TOKENS_LIMIT + 1)],
     f"between 0 and {MAX_TOKENS_LIMIT}"),
    ("top-k negative", lambda d, ok: ["--corpus", ok, "--top-k", "-3"], "--top-k must be >= 0"),
    ("dropout 1", lambda d, ok: ["--corpus", ok, "--dropout", "1"], "--dropout must be in [0, 1)"),
    ("clipnorm 0", lambda d, ok: ["--corpus", ok, "--clipnorm", "0"], "threshold must be > 0"),
    ("two clippings", lambda d, ok: ["--corpus", ok, "--clipnorm", "1", "--clipvalue", "1"], "not allowed with"),
    ("epochs 0", lambda d, ok: ["--corpus", ok, "--epochs", "0"], "--epochs must be a positive integer"),
    ("run id with a slash", lambda d, ok: ["--corpus", ok, "--run-id", "a/b"], "--run-id must be a plain"),
    ("bidirectional", lambda d, ok: ["--corpus", ok, "--bidirectional"], "must not see the tokens"),
    ("unknown flag", lambda d, ok: ["--corpus", ok, "--colour", "red"], "unrecognized arguments: --colour"),
    ("output is a file", lambda d, ok: ["--corpus", ok, "--output", make_file(d / "f", b"x")], "is a file"),
    ("output under a file", lambda d, ok: ["--corpus", ok, "--output", make_file(d / "g", b"x") + "/m"],
     "is a file, not a directory"),
]


@pytest.mark.parametrize("argv_for, expected", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(workdir, corpus_file, capsys, argv_for, expected):
    argv = argv_for(workdir, str(corpus_file)) + ["--output", "saved_models/m", "--runs-dir", "runs"][
        0 if "--output" not in argv_for(workdir, str(corpus_file)) else 2:]
    before = sorted(p.name for p in workdir.iterdir())
    assert cli.run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not (workdir / "saved_models").exists() and not (workdir / "runs").exists()
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_unwritable_output_is_refused(workdir, corpus_file, capsys, monkeypatch):
    # Tests run as root, where nothing is unwritable: simulate what a user without rights sees.
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda path, mode: False if Path(path).resolve() == workdir else real_access(path, mode))
    assert cli.run_main(main, ["--corpus", str(corpus_file), "--output", "saved_models/m"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_real_process_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.text", "--corpus", str(tmp_path / "missing.txt")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --corpus {tmp_path / 'missing.txt'} does not exist; pass the path of a UTF-8 text file"]


def test_hello_the_classic_example(workdir, capsys):
    """Vocabulary [h, e, l, o], sequence "hello": a SimpleRNN primed with "h" generates "ello" greedily."""
    import tensorflow as tf

    corpus = make_file(workdir / "hello.txt", b"hello" * 40)
    argv = ["--corpus", corpus, "--cell", "simple_rnn", "--units", "16", "--seq-len", "4", "--epochs", "60",
            "--batch-size", "16", "--learning-rate", "0.02", "--patience", "0", "--output", "saved_models/hello",
            "--prompt", "h", "--max-tokens", "4", "--temperature", "0.01"]
    assert cli.run_main(main, argv) == 0
    out = capsys.readouterr().out
    assert "\nhello\n" in out  # the sample the CLI prints: prompt "h" + "ello"
    loaded = tf.saved_model.load(str(workdir / "saved_models" / "hello" / "1"))
    vocabulary = [v.decode() for v in loaded.signatures["metadata"](rows=tf.constant([0]))["vocabulary"].numpy()[0]]
    assert vocabulary == ["l", "e", "h", "o"]  # most frequent first, ties in code-point order
    request = dict(text=tf.constant(["h"]), max_tokens=tf.constant([4]), temperature=tf.constant([1.0]),
                   seed=tf.constant([5], tf.int64))
    assert loaded.signatures["generate_top_k"](**request, top_k=tf.constant([1]))["generated"].numpy()[0] == b"ello"
    cold = dict(request, temperature=tf.constant([1e-3]))
    assert loaded.signatures["generate"](**cold)["generated"].numpy()[0] == b"ello"


TENSORFLOW_NOTICE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d)", re.M)


@pytest.mark.parametrize("verbose", [False, True])
def test_the_first_lines_are_ours_and_tensorflows_notices_need_verbose(tmp_path, verbose):
    """TensorFlow's C++ start-up notices (CUDA probing, oneDNN) show only with --verbose (or TF_CPP_MIN_LOG_LEVEL)."""
    (tmp_path / "hello.txt").write_text("hello " * 60)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [sys.executable, "-m", "pipelines.text", "--corpus", str(tmp_path / "hello.txt"), "--cell", "gru",
            "--units", "4", "--seq-len", "4", "--epochs", "1", "--steps-per-epoch", "2", "--max-tokens", "2",
            "--output", str(tmp_path / "sm" / "hello"), "--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(argv + ["--verbose"] * verbose, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Corpus ")
    assert bool(TENSORFLOW_NOTICE.search(result.stderr)) == verbose, result.stderr
