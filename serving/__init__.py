"""Serving: TensorFlow Serving configs, the embedded server and the gRPC client. Reads SavedModels only."""

import importlib
import os
import sys
import tempfile


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) kept off the terminal.

    TensorFlow 2.21 logs those lines before absl logging is initialised, so
    TF_CPP_MIN_LOG_LEVEL does not silence them: without this a command-line
    error would arrive after four lines of noise. Set TF_CPP_MIN_LOG_LEVEL=0
    to see them. An import that fails prints what TensorFlow wrote, then raises.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, captured = os.dup(2), tempfile.TemporaryFile()
    try:
        os.dup2(captured.fileno(), 2)
        importlib.import_module("tensorflow")
    except BaseException:
        os.dup2(saved, 2)
        captured.seek(0)
        sys.stderr.write(captured.read().decode("utf-8", "replace"))  # what TensorFlow said before failing
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.close()


_import_tensorflow_quietly()
