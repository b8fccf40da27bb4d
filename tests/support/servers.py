"""Real runtime and gateway processes on loopback, for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtime"), str(ROOT / "operator")]),
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Process:
    """``python -m modelfleet <command> <flag> FILE``, ready when ``/v2/health/ready`` says so."""

    def __init__(
        self, tmp: Path, command: str, flag: str, document: dict[str, Any], host: str
    ) -> None:
        self.host = host
        self.port = int(document["server"]["port"])
        self.url = f"http://{host}:{self.port}"
        name = f"{command}-{host}-{self.port}"
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet", command, flag, str(path)],
            env=ENV, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"{name} did not become ready:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class RuntimeProcess(Process):
    def __init__(self, tmp: Path, models: list[dict[str, Any]], store: Path,
                 host: str = "127.0.0.1", **server: Any) -> None:  # fmt: skip
        document = {
            "server": {"host": host, "port": free_port(host), "model_store": str(store), **server},
            "models": models,
        }
        super().__init__(tmp, "serve", "--config", document, host)


class GatewayProcess(Process):
    def __init__(
        self, tmp: Path, models: dict[str, Any], host: str = "127.0.0.1", **server: Any
    ) -> None:
        document = {"server": {"host": host, "port": free_port(host), **server}, "models": models}
        super().__init__(tmp, "gateway", "--routes", document, host)
        self.admin_url = f"http://{host}:{server['admin_port']}" if "admin_port" in server else None
