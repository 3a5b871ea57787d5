"""Serving: TensorFlow Serving configs, the embedded server and the gRPC client. Reads SavedModels only.

Importing this package imports nothing else: TensorFlow is imported by the
modules that need it, and quietly by the commands' `main` (`serving.quiet`).
"""
