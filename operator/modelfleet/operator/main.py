"""``modelfleet operator``: run the kopf operator."""

from __future__ import annotations

import argparse
import asyncio

import kopf


def run_from_args(args: argparse.Namespace) -> int:
    from modelfleet.operator import handlers  # noqa: F401  (registers the handlers)

    namespaces: list[str] = list(args.namespace)
    clusterwide = bool(args.all_namespaces or not namespaces)
    asyncio.run(kopf.operator(clusterwide=clusterwide, namespaces=namespaces, standalone=True))
    return 0
