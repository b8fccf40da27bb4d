"""The ``modelfleet`` command: one entry point for every image.

Subcommands import their implementation lazily, so that ``modelfleet gateway``
and ``modelfleet operator`` never import torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from modelfleet.serving.flags import add_server_flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the inference runtime from a desired-state file")
    serve.add_argument("--config", required=True, help="YAML desired-state document")
    add_server_flags(serve)

    gateway = sub.add_parser("gateway", help="run the gateway from a routes file")
    gateway.add_argument("--routes", required=True, help="YAML routes document")
    add_server_flags(gateway)

    operator = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("--namespace", action="append", default=[], help="watch this namespace")
    operator.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    operator.add_argument("--metrics-port", type=int, default=0,
                          help="serve Prometheus metrics (scale decisions, desired copies) on "
                               "this port at /metrics; 0 (the default): off")  # fmt: skip
    operator.add_argument(
        "--metrics-address",
        default="0.0.0.0",
        help="the address the metrics port listens on (default 0.0.0.0)",
    )

    examples = sub.add_parser(
        "example-models", help="write the example models and the model zoo (safetensors)"
    )
    examples.add_argument("--out", default="var/models", help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        from modelfleet.runtime.main import serve_from_args

        return int(serve_from_args(args))
    if args.command == "gateway":
        from modelfleet.gateway.main import serve_from_args as gateway_from_args

        return int(gateway_from_args(args))
    if args.command == "operator":
        from modelfleet.operator.main import run_from_args

        return int(run_from_args(args))
    if args.command == "example-models":
        from modelfleet.runtime.examples import write_examples
        from modelfleet.runtime.zoo import write_zoo

        for line in [*write_examples(args.out), *write_zoo(args.out)]:
            print(line)
        return 0
    raise AssertionError(args.command)
