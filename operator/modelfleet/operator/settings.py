"""The operator's own settings, from its environment (the Helm chart sets them).

* ``MODELFLEET_RUNTIME_IMAGE``: the runtime image of pools whose ``spec.image`` is
  empty (default ``modelfleet/runtime:0.1.0``).
* ``MODELFLEET_ADMIN_TOKEN_FILE``: a file holding the bearer token that new pools'
  admin APIs accept (their ``<pool>-admin-token`` Secret); without it each new pool
  gets a random token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from modelfleet.version import VERSION

DEFAULT_RUNTIME_IMAGE = f"modelfleet/runtime:{VERSION}"


class SettingsError(RuntimeError):
    """A setting names something unusable; the message says which and why."""


def runtime_image() -> str:
    return os.environ.get("MODELFLEET_RUNTIME_IMAGE", "").strip() or DEFAULT_RUNTIME_IMAGE


def admin_token() -> str:
    """The token for a new pool: the configured one, else a fresh random one."""
    path = os.environ.get("MODELFLEET_ADMIN_TOKEN_FILE", "").strip()
    if not path:
        return secrets.token_urlsafe(32)
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"MODELFLEET_ADMIN_TOKEN_FILE={path}: {exc.strerror}") from exc
    if len(token) < 16:
        raise SettingsError(
            f"MODELFLEET_ADMIN_TOKEN_FILE={path}: the token must have at least 16 characters"
        )
    return token
