"""``modelfleet operator``: run the kopf operator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf

log = logging.getLogger("modelfleet.operator")


def run_from_args(args: argparse.Namespace) -> int:
    """Watch the given namespaces (or all of them); 0 on a clean stop, 1 on a crash."""
    from modelfleet.operator import handlers  # registers the handlers
    from modelfleet.operator.settings import SettingsError, admin_token, runtime_image

    try:
        admin_token()  # a configured token file must be readable from the start
    except SettingsError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("default runtime image: %s", runtime_image())
    port = int(getattr(args, "metrics_port", 0) or 0)
    if port:
        from modelfleet.operator import metrics

        address = str(getattr(args, "metrics_address", "0.0.0.0"))
        try:
            metrics.serve(port, address)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", address, port, exc)
            return 2
        log.info("metrics at http://%s:%d/metrics", address, port)

    namespaces: list[str] = list(getattr(args, "namespace", None) or [])
    clusterwide = bool(getattr(args, "all_namespaces", False) or not namespaces)
    log.info("operator watching %s", "every namespace" if clusterwide else ", ".join(namespaces))
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=clusterwide,
                namespaces=[] if clusterwide else namespaces,
                standalone=True,
                memo=handlers.Fleet(),
            )
        )
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("operator stopped on an error")
        return 1
    return 0
