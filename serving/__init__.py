"""Serving: TensorFlow Serving configs, the embedded server and the gRPC client. Reads SavedModels only."""

import importlib
import os
import sys


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) kept off the terminal.

    TensorFlow 2.21 logs those lines before absl logging is initialised, so
    TF_CPP_MIN_LOG_LEVEL does not silence them: without this a command-line
    error would arrive after four lines of noise. Set TF_CPP_MIN_LOG_LEVEL=0
    to see them. An import that fails still raises, with stderr restored.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()
