"""What the kubelet reports of a runtime pod's container: how often it was
restarted and why it last ended. The operator shows it in the pool's status and
sends a Warning event when the count grows, so a crashing runtime (killed for
memory, a failing liveness probe, an error at start) is visible where the pool is,
not only in ``kubectl describe pod``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RUNTIME_CONTAINER = "runtime"


@dataclass(frozen=True)
class Restarts:
    """A pod's runtime container: restarts so far and its last termination."""

    count: int = 0
    reason: str | None = None
    """The last termination's reason as the kubelet gives it (``OOMKilled``,
    ``Error``, ``Completed``), or None when it never ended."""
    exit_code: int | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, pod_status: Mapping[str, Any], container: str = RUNTIME_CONTAINER) -> Restarts:
        """From a pod's ``status``: its ``container`` entry of ``containerStatuses``
        (the first entry when none has that name; nothing when there is none)."""
        statuses = [s for s in pod_status.get("containerStatuses") or [] if isinstance(s, dict)]
        entry = next((s for s in statuses if s.get("name") == container), None)
        if entry is None and statuses:
            entry = statuses[0]
        if entry is None:
            return cls()
        ended = (entry.get("lastState") or {}).get("terminated") or {}
        code = ended.get("exitCode")
        return cls(
            count=int(entry.get("restartCount") or 0),
            reason=ended.get("reason") or (None if not ended else "Unknown"),
            exit_code=int(code) if isinstance(code, int) else None,
            finished_at=ended.get("finishedAt"),
        )

    def as_index(self) -> dict[str, Any]:
        """The compact form the pod index keeps (the pod watch's value)."""
        return {"restarts": self.count, "reason": self.reason, "exitCode": self.exit_code,
                "finishedAt": self.finished_at}  # fmt: skip

    @classmethod
    def from_index(cls, data: Mapping[str, Any] | None) -> Restarts:
        if not data:
            return cls()
        return cls(int(data.get("restarts") or 0), data.get("reason"), data.get("exitCode"),
                   data.get("finishedAt"))  # fmt: skip

    def status(self) -> dict[str, Any]:
        """The fields of the pool status's pod entry: ``restarts`` always, and
        ``lastTermination`` once the container has ended at least once."""
        out: dict[str, Any] = {"restarts": self.count}
        if self.reason is not None:
            last: dict[str, Any] = {"reason": self.reason}
            if self.exit_code is not None:
                last["exitCode"] = self.exit_code
            if self.finished_at is not None:
                last["finishedAt"] = self.finished_at
            out["lastTermination"] = last
        return out

    def describe(self) -> str:
        why = self.reason or "reason unknown"
        if self.exit_code is not None:
            why += f", exit code {self.exit_code}"
        return why


def restart_messages(
    previous_pods: Iterable[Mapping[str, Any]], now: Mapping[str, Restarts]
) -> list[str]:
    """One message per pod whose runtime restarted since the previous status
    (``status.pods`` as last written). A pod that status did not list is not
    reported (its count shows in the new status): a restarted operator compares with
    the status it finds, so it reports no restart twice."""
    before = {str(p.get("name")): int(p.get("restarts") or 0) for p in previous_pods}
    out = []
    for name, seen in sorted(now.items()):
        if name in before and seen.count > before[name]:
            times = seen.count - before[name]
            out.append(
                f"pod {name}: its runtime container restarted"
                + (f" {times} times" if times > 1 else "")
                + f" ({seen.count} in all); it last ended: {seen.describe()}"
                + (f" at {seen.finished_at}" if seen.finished_at else "")
            )
    return out
