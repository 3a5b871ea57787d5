"""TensorFlow imported quietly by the serving commands, once, after their flags are parsed.

TensorFlow 2.21 writes C++ start-up notices while it is imported ("All log
messages before absl::InitializeLog() is called are written to STDERR",
"cudart_stub.cc ... Could not find cuda drivers"), before absl logging is
initialised: TF_CPP_MIN_LOG_LEVEL does not filter them, so only fd 2 pointed
elsewhere during the import keeps them off the terminal. After the import,
TF_CPP_MIN_LOG_LEVEL=3 silences the rest (at 2, cuInit's error still shows).
Nothing here runs at import time: a module that imports `serving` gets no
redirection and no TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) with exit status 2, as the pipelines answer."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """The `--verbose` flag every serving command takes."""
    parser.add_argument("--verbose", action="store_true",
                        help=f"show TensorFlow's C++ start-up notices (the usual {LOG_LEVEL}=0 works too)")


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow, its start-up notices kept off stderr unless asked for.

    A level the user set in TF_CPP_MIN_LOG_LEVEL is kept; otherwise it becomes
    3. The notices written during the import are captured, and shown only if
    the import fails. With `verbose`, or TF_CPP_MIN_LOG_LEVEL=0, TensorFlow is
    imported as it is, every notice shown.

    Args:
        verbose: Show TensorFlow's C++ start-up notices (`--verbose`).

    Raises:
        Whatever importing TensorFlow raises, after what TensorFlow wrote before failing.
    """
    if "tensorflow" in sys.modules:  # imported already (a test calling `main`): too late to quiet, nothing to do
        return
    if not verbose:
        os.environ.setdefault(LOG_LEVEL, "3")
    if verbose or os.environ[LOG_LEVEL] == "0":
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()  # what Python wrote before stays on the terminal
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))  # what TensorFlow said before failing
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
