"""Real runtime and gateway processes on loopback, for integration tests.

* :func:`free_port` -- a port nobody listens on right now.
* :class:`RuntimeProcess` -- ``python -m modelfleet serve --config FILE``.
* :class:`GatewayProcess` -- ``python -m modelfleet gateway --routes FILE``.
* :func:`example_models_dir` -- ``python -m modelfleet example-models`` once per folder.

Each process writes its document as YAML under the test's temporary folder, logs
to ``<name>.log`` beside it, and is ready when ``GET /v2/health/ready`` answers 200
(at most 60 s; if it dies or hangs, the error quotes the end of its log). ``stop()``
sends SIGTERM, waits, then kills; both classes are context managers too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
"""The environment of the processes tests start: the project comes from the clone's
.venv (installed editable); the repository root is on the path for the test
architectures (``tests.runtime.models:...``) and scripts under tests/."""
READY_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def example_models_dir(out: Path) -> Path:
    """Writes the example models (``mlp.safetensors``, ``cnn.safetensors``) into ``out``
    with the CLI, once: an existing ``out/mlp.safetensors`` is kept. Returns ``out``.
    Use it from a session-scoped fixture."""
    if not (out / "mlp.safetensors").exists():
        subprocess.run(
            [sys.executable, "-m", "modelfleet", "example-models", "--out", str(out)],
            env=ENV, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return out


class Process:
    """``python -m modelfleet <command> <flag> FILE``, ready when ``/v2/health/ready`` says so."""

    def __init__(
        self, tmp: Path, command: str, flag: str, document: dict[str, Any], host: str
    ) -> None:
        self.host = host
        self.port = int(document["server"]["port"])
        self.url = f"http://{host}:{self.port}"
        admin = document["server"].get("admin_port")
        self.admin_url = f"http://{host}:{admin}" if admin else None
        """The admin API's base URL (it only listens when a token file is configured)."""
        grpc_port = document["server"].get("grpc_port")
        self.grpc_address = f"{host}:{grpc_port}" if grpc_port else None
        """``host:port`` of the OIP gRPC API (when ``grpc_port`` is in the document)."""
        self.document = document
        name = f"{command}-{host}-{self.port}"
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(document))
        self.log = tmp / f"{name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfleet", command, flag, str(self.path)],
                env=ENV, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"not ready after {READY_TIMEOUT_S:.0f} s"
                )
                self.stop()
                raise AssertionError(f"{name} {why}; its log ends:\n{self.log_tail()}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL at once: the process vanishes as a crashed pod would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RuntimeProcess(Process):
    """A runtime hosting ``models`` (RuntimeDocument ``models`` entries) from ``store``;
    ``server`` overrides the server settings (``port`` defaults to a free one)."""

    def __init__(self, tmp: Path, models: list[dict[str, Any]], store: Path,
                 host: str = "127.0.0.1", **server: Any) -> None:  # fmt: skip
        document = {
            "server": {"host": host, "port": free_port(host), "model_store": str(store), **server},
            "models": models,
        }
        super().__init__(tmp, "serve", "--config", document, host)


class GatewayProcess(Process):
    """A gateway with routes ``models`` (model name -> route); ``server`` overrides the
    server settings (``port`` defaults to a free one)."""

    def __init__(
        self, tmp: Path, models: dict[str, Any], host: str = "127.0.0.1", **server: Any
    ) -> None:
        document = {"server": {"host": host, "port": free_port(host), **server}, "models": models}
        super().__init__(tmp, "gateway", "--routes", document, host)
