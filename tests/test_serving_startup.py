"""The serving commands start quietly: their first lines of stderr are their own, TensorFlow's only with --verbose.

Real subprocesses, started without TF_CPP_MIN_LOG_LEVEL (the suite sets it for
itself), as a user starts them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_version, start_server

ROOT = Path(__file__).resolve().parents[1]
# What TensorFlow's C++ start-up writes: the notice before absl logging starts, and its log lines
# ("I0000 00:00:... cudart_stub.cc:31] ...", "W0000 ...", "E0000 ..."), e.g. cudart_stub and cpu_feature_guard.
TENSORFLOW_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cudart_stub|cpu_feature_guard")


def user_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def tensorflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if TENSORFLOW_LINE.search(line)]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=user_environment(), capture_output=True, text=True,
                          timeout=120)


def test_importing_serving_or_its_commands_imports_no_tensorflow():
    result = run("-c", "import sys, serving, serving.server, serving.client, serving.demo; "
                       "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_missing_config_file_is_one_line_of_ours_and_exit_2(tmp_path):
    result = run("-m", "serving.server", "--model_config_file", str(tmp_path / "missing.config"), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'missing.config'}: cannot read (No such file or directory)"]


@pytest.mark.parametrize("command", ["serving.server", "serving.client", "serving.demo"])
def test_a_bad_flag_is_one_line_before_tensorflow(command):
    result = run("-m", command, "--no_such_flag")
    assert result.returncode == 2 and not tensorflow_lines(result.stderr), result.stderr
    [line] = result.stderr.splitlines()  # no usage block: one line that says what and where to look
    assert line.startswith(f"python -m {command}: error: ") and line.endswith("(see --help)"), line
    assert "--no_such_flag" in line or "required: command" in line, line  # the client wants its command first


@pytest.mark.parametrize("command", ["serving.server", "serving.client", "serving.demo"])
def test_every_command_has_a_verbose_flag(command):
    result = run("-m", command, "--help")
    assert result.returncode == 0 and "--verbose" in result.stdout and "TF_CPP_MIN_LOG_LEVEL" in result.stdout


@pytest.fixture(scope="module")
def one_model_config(exported_lstm, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    copy_version(exported_lstm[1], root / "models" / "text", 1)
    config = root / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{root / "models" / "text"}" '
                      'model_platform: "tensorflow" } }')
    return config


def serve_and_stop(config: Path, tmp_path: Path, *flags: str) -> str:
    """Start the server, wait until it serves, stop it; its stderr."""
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        process, _ = start_server(config, *flags, stderr=stderr, env=user_environment())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        stderr.seek(0)
        return stderr.read()


def test_a_server_that_starts_and_stops_writes_no_tensorflow_line(one_model_config, tmp_path):
    stderr = serve_and_stop(one_model_config, tmp_path)
    assert "model text version 1 loaded" in stderr  # its own log lines still come
    assert not tensorflow_lines(stderr), stderr


def test_with_verbose_tensorflow_start_up_notices_are_shown(one_model_config, tmp_path):
    stderr = serve_and_stop(one_model_config, tmp_path, "--verbose")
    assert tensorflow_lines(stderr), stderr  # on this CPU-only machine at least cudart_stub's notice
