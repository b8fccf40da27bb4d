"""The part of a kubelet the cluster tests' containers mode needs beyond starting a
pod: probes that decide the pod's ``Ready`` condition, and restarts per the pod's
``restartPolicy``, both written to the pod's status in the API server.

kwok gives a scheduled pod its IP and marks it Ready once (its ``pod-ready`` stage
applies to Pending pods only); from then on this writes the pod's ``Ready`` and
``ContainersReady`` conditions and its ``containerStatuses`` as a kubelet would:

* the ``startupProbe`` (until it passes once), then the ``livenessProbe`` and the
  ``readinessProbe``, each every ``periodSeconds`` with its ``timeoutSeconds``,
  ``failureThreshold`` and ``successThreshold`` as written in the pod spec (``httpGet``
  probes; the others are refused when the pod starts);
* a liveness failure kills the container (exit 137, as the kubelet's SIGKILL);
* an exited container is restarted when ``restartPolicy`` says so (``Always``; ``OnFailure``
  after a non-zero exit), at once the first time and then after the kubelet's back-off
  (10 s doubling to 300 s), with ``restartCount`` and ``lastState.terminated`` (reason
  ``OOMKilled``, ``Error`` or ``Completed``, exit code, time) in its status.

Each tick (0.25 s) looks for the container's process in /proc; podman is asked (one
``podman container inspect``, about 55 ms of CPU) only when the process is gone, to
learn the exit code, and after a restart, to learn the new process.

Supervision is per pod (``watch``): tests that stop or kill a container to play a
crash that stays (the default mode's semantics) do not watch it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.podman_pods import Kubectl, PodContainer, container_of, container_port

BACKOFF_S = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)
"""The kubelet's restart back-off: at once after the first exit, then 10 s doubling."""
TICK_S = 0.25


def _alive(pid: int) -> bool:
    """The process runs (or is stopped) on this host: not gone, not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Probe:
    """One ``httpGet`` probe of a container, with its counters."""

    url: str
    period_s: float
    timeout_s: float
    failures_to_fail: int
    successes_to_pass: int
    next_at: float = 0.0
    failures: int = 0
    successes: int = 0

    @classmethod
    def of(cls, pod: Mapping[str, Any], container: Mapping[str, Any], kind: str) -> Probe | None:
        spec = container.get(kind)
        if not spec:
            return None
        get = spec.get("httpGet")
        if not get:
            raise AssertionError(f"pod {pod['metadata']['name']}: {kind} is not httpGet")
        port = container_port(container, get["port"])
        host = get.get("host") or pod["status"]["podIP"]
        return cls(
            url=f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}",
            period_s=float(spec.get("periodSeconds", 10)),
            timeout_s=float(spec.get("timeoutSeconds", 1)),
            failures_to_fail=int(spec.get("failureThreshold", 3)),
            successes_to_pass=int(spec.get("successThreshold", 1)),
            next_at=time.monotonic() + float(spec.get("initialDelaySeconds", 0)),
        )

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def run(self, now: float) -> bool | None:
        """Probes once; True once it passed ``successThreshold`` times in a row, False
        once it failed ``failureThreshold`` times in a row, else None (no change)."""
        self.next_at = now + self.period_s
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                ok = 200 <= int(resp.status) < 400
        except (OSError, urllib.error.HTTPError):
            ok = False
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            return True if self.successes >= self.successes_to_pass else None
        self.failures, self.successes = self.failures + 1, 0
        return False if self.failures >= self.failures_to_fail else None

    def reset(self, now: float, delay_s: float = 0.0) -> None:
        self.failures = self.successes = 0
        self.next_at = now + delay_s


@dataclass
class Watched:
    """One supervised pod: its container, probes and what its status says."""

    pod: Mapping[str, Any]
    served: PodContainer
    policy: str
    readiness: Probe | None
    liveness: Probe | None
    startup: Probe | None
    started: bool = False
    """The startup probe passed (or there is none) since the container last started."""
    ready: bool = True
    """As kwok left it: Ready once scheduled."""
    restarts: int = 0
    last: dict[str, Any] | None = None
    restart_at: float | None = None
    pid: int = 0
    """The container's main process on this host while it runs (0: ask podman): a tick
    looks at /proc, and asks podman (about 55 ms of CPU) only once the process is gone."""
    history: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, event) for the test's report: ``ready``, ``not-ready``,
    ``exited <code>``, ``restarted``, ``liveness-kill``."""

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])


class Kubelet:
    """Supervises watched pods' containers from one thread until ``stop``."""

    def __init__(self, kubectl: Kubectl) -> None:
        self.kubectl = kubectl
        self.watched: dict[str, Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        """Status writes the API server refused (a test can assert there are none)."""

    def watch(self, pod: Mapping[str, Any], served: PodContainer) -> Watched:
        container = container_of(pod, served.run.name.rsplit(".", 1)[-1])
        seen = Watched(
            pod=pod, served=served,
            policy=str(pod["spec"].get("restartPolicy", "Always")),
            readiness=Probe.of(pod, container, "readinessProbe"),
            liveness=Probe.of(pod, container, "livenessProbe"),
            startup=Probe.of(pod, container, "startupProbe"),
        )  # fmt: skip
        seen.started = seen.startup is None
        with self._lock:
            self.watched[seen.name] = seen
        self._write(seen, running_since=_now())
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
            self._thread.start()
        return seen

    def stop(self) -> None:
        """Stops supervising (before the test stops the containers: none is restarted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                pods = list(self.watched.values())
            for seen in pods:
                try:
                    self._tick(seen, time.monotonic())
                except (subprocess.SubprocessError, OSError, ValueError) as exc:
                    self.errors.append(f"{seen.name}: {exc}")

    def _tick(self, seen: Watched, now: float) -> None:
        if not (seen.restart_at is None and _alive(seen.pid)):
            status, code, oom, finished, pid = self._inspect(seen)
            seen.pid = pid if status == "running" else 0
            if status in ("exited", "stopped"):
                self._exited(seen, now, code, oom, finished)
                return
            if status != "running":
                return
        if not seen.started:
            assert seen.startup is not None
            if seen.startup.due(now) and seen.startup.run(now):
                seen.started = True
                for probe in (seen.liveness, seen.readiness):
                    if probe is not None:
                        probe.reset(now)
            return
        if seen.liveness is not None and seen.liveness.due(now) and seen.liveness.run(now) is False:
            seen.history.append((now, "liveness-kill"))
            subprocess.run(["podman", "kill", "--signal", "KILL", seen.served.run.name],
                           capture_output=True, timeout=60)  # fmt: skip
            return
        if seen.readiness is not None and seen.readiness.due(now):
            verdict = seen.readiness.run(now)
            if verdict is not None and verdict != seen.ready:
                seen.ready = verdict
                seen.history.append((now, "ready" if verdict else "not-ready"))
                self._write(seen, running_since=None)

    def _exited(self, seen: Watched, now: float, code: int, oom: bool, finished: str) -> None:
        if seen.restart_at is None:  # first seen exited: record it, decide the restart
            reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
            seen.last = {"terminated": {"exitCode": code, "reason": reason,
                                        "finishedAt": finished or _now()}}  # fmt: skip
            seen.history.append((now, f"exited {code}"))
            seen.ready = False
            restart = seen.policy == "Always" or (seen.policy == "OnFailure" and code != 0)
            delay = BACKOFF_S[min(seen.restarts, len(BACKOFF_S) - 1)]
            seen.restart_at = now + delay if restart else float("inf")
            self._write(seen, waiting="CrashLoopBackOff" if delay else "ContainerCreating")
        if now < seen.restart_at:
            return
        done = subprocess.run(["podman", "start", seen.served.run.name],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            self.errors.append(f"{seen.name}: podman start: {done.stderr.strip()[-500:]}")
            seen.restart_at = now + 10.0
            return
        seen.restarts += 1
        seen.restart_at = None
        seen.started = seen.startup is None
        for probe in (seen.startup, seen.liveness, seen.readiness):
            if probe is not None:
                probe.reset(now)
        seen.history.append((now, "restarted"))
        self._write(seen, running_since=_now())

    def _inspect(self, seen: Watched) -> tuple[str, int, bool, str, int]:
        """The container's status, exit code, OOM flag, finish time and main process."""
        fmt = ("{{.State.Status}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|{{.State.FinishedAt}}"
               "|{{.State.Pid}}")  # fmt: skip
        done = subprocess.run(["podman", "container", "inspect", "--format", fmt, seen.served.run.name],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        status, code, oom, finished, pid = [*done.stdout.strip().split("|"), "", "", "", "", ""][:5]
        stamp = ""
        if finished and not finished.startswith("0001"):
            # podman: 2026-12-03 02:51:00.123456789 +0000 UTC
            stamp = finished[:19].replace(" ", "T") + "Z"
        return status or "missing", int(code or -1), oom == "true", stamp, int(pid or 0)

    def _write(
        self, seen: Watched, *, running_since: str | None = None, waiting: str | None = None
    ) -> None:
        """The pod's Ready conditions and its container's status, as a strategic merge
        patch of the status subresource (conditions merge by type)."""
        container = container_of(seen.pod, seen.served.run.name.rsplit(".", 1)[-1])
        now = _now()
        flag = "True" if seen.ready else "False"
        entry: dict[str, Any] = {"name": container["name"], "image": container["image"],
                                 "imageID": "", "ready": seen.ready,
                                 "restartCount": seen.restarts,
                                 "started": waiting is None}  # fmt: skip
        if waiting is not None:
            entry["state"] = {"waiting": {"reason": waiting}}
        else:
            entry["state"] = {"running": {"startedAt": running_since or self._started_at(seen)}}
        if seen.last is not None:
            entry["lastState"] = seen.last
        patch = {"status": {
            "conditions": [{"type": t, "status": flag, "lastTransitionTime": now}
                           for t in ("Ready", "ContainersReady")],
            "containerStatuses": [entry],
        }}  # fmt: skip
        namespace = seen.pod["metadata"].get("namespace", "default")
        done = self.kubectl("patch", "pod", seen.name, "-n", namespace, "--subresource=status",
                            "--type=strategic", "-p", json.dumps(patch), check=False)  # fmt: skip
        if done.returncode != 0:
            self.errors.append(f"{seen.name}: status patch refused: {done.stderr.strip()[-500:]}")

    def _started_at(self, seen: Watched) -> str:
        fmt = "{{.State.StartedAt}}"
        done = subprocess.run(["podman", "container", "inspect", "--format", fmt, seen.served.run.name],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        text = done.stdout.strip()
        return text[:19].replace(" ", "T") + "Z" if text else _now()
