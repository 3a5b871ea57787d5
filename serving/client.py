"""A Python client for TensorFlow Serving's gRPC API: next token, generation, next value.

    python -m serving.client --target localhost:8500 next-token --model text "The "
    python -m serving.client --target localhost:8500 generate --model text --max-tokens 200 "The "
    python -m serving.client --target localhost:8500 next-value --model stock 24.1,24.3,...
    python -m serving.client --target localhost:8500 status --model text

This module is the command line (also metadata and status). The client
itself is `serving.prediction_client.PredictionClient`, which `main` imports
(and TensorFlow with it) only once the flags are parsed and TensorFlow's
start-up notices are quieted (`serving.quiet`).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from serving import quiet


def parse_values(text: str) -> np.ndarray:
    """A window typed on the command line: "24.1,24.3,..." (oldest first).

    Raises:
        ValueError: Naming the item that is not a number.
    """
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"values must be comma-separated numbers, got {item.strip()!r}") from None
    return np.array(values, np.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = quiet.ArgumentParser(prog="python -m serving.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="localhost:8500",
                        help="host:port, or several comma-separated replicas (round-robin)")
    parser.add_argument("--timeout", type=float, default=10.0)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("next-token", "generate", "next-value", "metadata", "status"):
        command = commands.add_parser(name)
        command.add_argument("--model", required=True)
        command.add_argument("--version", type=int, default=None)
        command.add_argument("--label", default=None)
        if name in ("next-token", "generate"):
            command.add_argument("prompt")
        if name == "generate":
            command.add_argument("--max-tokens", type=int, default=200)
            command.add_argument("--temperature", type=float, default=0.8)
            command.add_argument("--seed", type=int, default=0)
        if name == "next-value":
            command.add_argument("values", help="the window's values, oldest first, comma-separated")
    quiet.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    quiet.import_tensorflow(args.verbose)
    from serving.prediction_client import PredictionClient, ServingCallError  # imports TensorFlow: only now

    try:
        with PredictionClient(args.target, args.model, args.version, args.label, args.timeout) as client:
            if args.command == "next-token":
                for token, probability in client.next_token([args.prompt])[0]:
                    print(f"{token!r}\t{probability:.4f}")
            elif args.command == "generate":
                print(args.prompt + client.generate(args.prompt, args.max_tokens, args.temperature, args.seed))
            elif args.command == "next-value":
                values = parse_values(args.values)
                for key, value in client.next_value(values[None, :, None]).items():
                    print(f"{key}: {np.round(value[0], 4).tolist()}")
            elif args.command == "metadata":
                for signature, info in client.metadata().items():
                    print(f"{signature}: inputs {info['inputs']} -> outputs {info['outputs']}")
            else:
                for row in client.status():
                    print(f"version {row['version']}: {row['state']} {row['error']}".rstrip())
    except ServingCallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
