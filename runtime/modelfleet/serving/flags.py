"""The command line's server flags, the same for ``modelfleet serve`` and
``modelfleet gateway``: they override the document's ``server`` section."""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import BaseModel

ServerT = TypeVar("ServerT", bound=BaseModel)

SERVER_FLAGS = ("host", "port", "admin_port", "grpc_port", "admin_token_file")
"""The ``server`` fields a flag can override (``--admin-port`` sets ``admin_port``)."""


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--admin-port``, ``--grpc-port`` and ``--admin-token-file``."""
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    parser.add_argument("--admin-port", type=int, help="override server.admin_port")
    parser.add_argument("--grpc-port", type=int, help="override server.grpc_port (OIP gRPC API)")
    parser.add_argument("--admin-token-file", help="override server.admin_token_file")


def with_flags(server: ServerT, args: object) -> ServerT:
    """The server settings with the command line's ``--host``/``--port``/... applied."""
    overrides = {k: getattr(args, k) for k in SERVER_FLAGS if getattr(args, k, None) is not None}
    if not overrides:
        return server
    return server.model_validate({**server.model_dump(), **overrides})
