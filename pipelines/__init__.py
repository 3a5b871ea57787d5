"""Pipelines: read data, then build, train, evaluate and export with `model/`."""
