"""Reading the routes document (its models are ``modelfleet.api.routes``): errors
that name the field, from a dict or a file."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from modelfleet.api.routes import GatewayServer, ModelRoute, RoutesDocument, VersionRoute

__all__ = ["GatewayServer", "ModelRoute", "RoutesDocument", "RoutesError", "VersionRoute",
           "load_routes", "parse_routes"]  # fmt: skip


class RoutesError(Exception):
    """The routes document is unreadable or invalid; the message says where."""


def parse_routes(data: object) -> RoutesDocument:
    try:
        return RoutesDocument.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RoutesError(where) from exc


def load_routes(path: str | Path) -> RoutesDocument:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoutesError(f"cannot read {path}: {exc}") from exc
    return parse_routes(data or {})
