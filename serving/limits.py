"""The bounds of one request: gRPC's message size (client and server) and the server's `RequestLimits`.

Numbers only, importing nothing heavy, so that the command-line parser can
show them as defaults before TensorFlow is imported; `serving.requests`
checks a request against them.
"""

from __future__ import annotations

import dataclasses

# The largest gRPC message the client and the server send or receive (gRPC's own default is 4 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for (TensorFlow Serving bounds only the message size).

    Attributes:
        max_rows: Rows (leading batch dimension) per input; 0, the default, sets no limit (TensorFlow
            Serving has none: a 300-row request is ordinary).
        max_elements: Elements in all inputs together, checked on the declared shapes before anything
            is allocated.
        max_string_bytes: Bytes of all strings together once decoded (a TensorProto repeats its last
            string to fill its shape: one long string could otherwise become gigabytes).
    """

    max_rows: int = 0
    max_elements: int = 4 * 1024 * 1024
    max_string_bytes: int = MAX_MESSAGE_BYTES


DEFAULT_LIMITS = RequestLimits()  # what a server started without --max_request_* flags allows
