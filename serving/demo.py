"""End of `make demo`: serve the exported models, query them over gRPC, stop.

    python -m serving.demo [--model_config_file serving/models.config]

Starts `python -m serving.server` as a separate process on a free port, asks
the text model for a next-token prediction and a generated sample, and the
stock model for the next MSFT price after the last days of the packaged data,
all through `serving.client`, then stops the server with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

from serving import quiet


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def last_prices(days: int) -> tuple[np.ndarray, str]:
    """The last `days` MSFT adjusted closes of the packaged daily prices (public domain)."""
    from bokeh_sampledata.stocks import data

    msft = data[data["ticker"] == "MSFT"].sort_values("date")
    return msft["adj_close"].to_numpy(np.float32)[-days:], str(msft["date"].iloc[-1])[:10]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = quiet.ArgumentParser(prog="python -m serving.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config_file", default="serving/models.config")
    quiet.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    environment = dict(os.environ)  # as the user set it: the server quiets TensorFlow itself
    quiet.import_tensorflow(args.verbose)
    from serving.prediction_client import PredictionClient  # imports TensorFlow: only now

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--model_config_file", args.model_config_file,
                               "--port", str(port), "--enable_batching", *(["--verbose"] if args.verbose else [])],
                              stdout=subprocess.PIPE, text=True, env=environment)
    try:
        print(server.stdout.readline().rstrip())
        target = f"127.0.0.1:{port}"
        with PredictionClient(target, "text") as text:
            prompt = "The "
            tokens = ", ".join(f"{t!r} {p:.3f}" for t, p in text.next_token([prompt])[0])
            print(f"text  next token after {prompt!r}: {tokens}")
            print(f"text  generated: {prompt + text.generate(prompt, max_tokens=120, temperature=0.7, seed=1)!r}")
        with PredictionClient(target, "stock") as stock:
            window, features = stock.metadata()["serving_default"]["inputs"]["window"][1][1:]
            if features != 1:
                print(f"stock model takes {features} features; this demo sends adjusted closes only")
                return 0
            prices, last_day = last_prices(window)
            answer = stock.next_value(prices[None, :, None])
            line = f"stock next value after {last_day} (last {prices[-1]:.2f}): {answer['next_value'][0][0]:.2f}"
            if "quantiles" in answer:
                low, high = answer["quantiles"][0][0][0], answer["quantiles"][0][0][-1]
                line += f", interval [{low:.2f}, {high:.2f}]"
            print(line)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
