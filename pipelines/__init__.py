"""Pipelines: read data, then build, train, evaluate and export with `model/`."""

import os

# The pipelines are command-line programs: keep TensorFlow's C++ start-up
# chatter (oneDNN, CUDA probing) off the terminal unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
