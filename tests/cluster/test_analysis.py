"""Automated canary analysis on the real control plane, with the kwok pods' runtime and
gateway containers running (``fleet.py``): a good canary walks its steps to promoted
(5, 25, 50%) under a steady stream without a failed request or a reload; a canary
whose model fails on some inputs is rolled back by the operator at its first step,
with at most the step's share of the requests affected, and so is one that answers
right but slowly (p99); a quiet model holds instead of promoting, and says so
in its Analysis condition; an operator killed mid-analysis resumes the same step; a
shadow stage keeps a canary whose answers disagree away from every client.

The figures of issue 18 (time from the first canary request to promotion, requests a
failing canary answered before its rollback, at two request rates) are printed by
``test_time_to_promotion_and_requests_failed_before_rollback_at_several_rates`` (run
with ``-s``)."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.flaky_models import MESSAGE, body
from tests.cluster.fleet import Fleet, Stream, model_yaml, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = "mf-analysis", "analysis"
V2 = {"path": "mlp-v2.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
BROKEN = {"path": "empty.safetensors", "architecture": "tests.runtime.models:broken"}
FLAKY = {"path": "mlp.safetensors", "architecture": "tests.cluster.flaky_models:flaky_mlp"}
SLOW = {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:slow_mlp"}
REVERSED = {"path": "mlp-reversed.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
ANALYSIS = {"steps": [{"weight": 5, "minRequests": 20, "maxSeconds": 120},
                      {"weight": 25, "minRequests": 40, "maxSeconds": 120},
                      {"weight": 50, "minRequests": 40, "maxSeconds": 120}]}  # fmt: skip
"""Issue 18's steps. Step 1 needs about 400 requests of the stream at 5% (half a second
of the 2-thread stream here, some 750 requests/s: each step takes about one operator
pass); the later steps 40 canary requests each, so that the canary's p99 is not the
maximum of a handful of requests."""


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    shutil.copy(model_store / "mlp.safetensors", model_store / "mlp-v2.safetensors")
    reversed_weights(model_store)
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("analysis"), model_store, NS,
                       POOL) as f:  # fmt: skip
        yield f


def reversed_weights(store: Path) -> None:
    """``mlp-reversed.safetensors``: the example MLP's architecture with other weights,
    its output layer's rows in reverse order, so that every answer's arg-max differs
    from the example's (index i becomes 3 - i of 4)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(store / "mlp.safetensors"))
    for key in ("2.weight", "2.bias"):
        state[key] = state[key].flip(0).contiguous()
    save_file(state, str(store / "mlp-reversed.safetensors"))


def patch(fleet: Fleet, name: str, spec: dict[str, Any]) -> None:
    fleet.k.kubectl("patch", "inferencemodel", name, "-n", NS, "--type", "merge",
                    "-p", json.dumps({"spec": spec}))  # fmt: skip


def ready(fleet: Fleet, name: str, **spec: Any) -> None:
    fleet.apply(model_yaml(name, NS, POOL, **spec))
    wait_for(f"{name} Ready", lambda: fleet.condition(name, "Ready")["status"] == "True", 120)
    wait_for(f"{name} answering", lambda: fleet.infer(name) == 200)


def events(fleet: Fleet, name: str) -> list[tuple[str, str, str]]:
    items = fleet.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"], e["type"]) for e in items]


def analysis(fleet: Fleet, name: str) -> dict[str, Any]:
    return fleet.status(name).get("analysis") or {}


def delete(fleet: Fleet, name: str) -> None:
    fleet.k.kubectl("delete", "inferencemodel", name, "-n", NS)
    wait_for(f"{name} unloaded", lambda: not any(fleet.versions_loaded(name).values()))


def test_a_good_canary_walks_its_steps_to_promoted_without_a_failed_request_or_a_reload(
    fleet: Fleet,
) -> None:
    ready(fleet, "good", replicas=1, memoryMB=100)
    with Stream(fleet, "good") as stream:
        patch(fleet, "good", {"canary": {"version": "2", "source": V2, "replicas": 1,
                                         "analysis": ANALYSIS}})  # fmt: skip
        steps = set()

        def promoted() -> bool:
            spec = fleet.json("get", "inferencemodel", "good")["spec"]
            steps.add(analysis(fleet, "good").get("summary"))
            return bool(spec["version"] == "2" and "canary" not in spec)

        wait_for("the canary promoted by the operator", promoted, 120, interval=0.2)
        promoted_at = time.monotonic()
        loaded_at = {pod: m["loaded_at"] for pod in fleet.runtimes
                     for m in fleet.admin_state(pod)["models"]
                     if m["name"] == "good" and m["version"] == "2"}  # fmt: skip

        def converged() -> bool:
            st = fleet.status("good")
            return [v["version"] for v in st["versions"]] == ["2"]

        wait_for("version 2 alone", converged, 60)
        seen = len(stream.results)
        wait_for("answers after the promotion", lambda: len(stream.results) > seen + 50)
    first_canary = min(t for t, code, v in stream.results if v == "2")
    took = promoted_at - first_canary
    canary_n = sum(1 for t, _, v in stream.results if v == "2" and t <= promoted_at)
    rate = len([r for r in stream.results if first_canary <= r[0] <= promoted_at]) / took
    print(f"\nfirst canary request to promotion: {took:.1f} s at {rate:.0f} requests/s "
          f"({canary_n} canary requests); steps seen: {sorted(s for s in steps if s)}")  # fmt: skip
    assert stream.failures() == [], stream.failures()[:5]
    assert {v for _, _, v in stream.results} == {"1", "2"}
    assert analysis(fleet, "good")["phase"] == "Promoted"
    for pod, when in loaded_at.items():  # promotion reused the canary's copy
        (v2,) = [m for m in fleet.admin_state(pod)["models"]
                 if m["name"] == "good" and m["version"] == "2"]  # fmt: skip
        assert v2["loaded_at"] == when, "the promoted version was loaded again"
    assert "1/3 5%" in steps, steps  # step 1 lasts a pass (1 s or more): the polls see it
    reasons = [r for r, _, _ in events(fleet, "good")]
    assert reasons.count("AnalysisStep") == 3 and "AnalysisPromoted" in reasons, reasons
    assert "AnalysisFailed" not in reasons
    messages = " ".join(m for r, m, _ in events(fleet, "good") if r.startswith("Analysis"))
    assert "step 2 at weight 25%" in messages and "step 3 at weight 50%" in messages, messages
    assert "(step 3 of 3 at weight 50%, the last)" in messages, messages
    table = fleet.k.kubectl("get", "inferencemodels", "-n", NS).stdout
    assert "STEP" in table and "Promoted" in table, table
    delete(fleet, "good")


class Mixed(Stream):
    """A ``Stream`` whose requests' first input value is negative or positive at random,
    half and half (each thread's draws seeded): ``inputs`` holds (when, HTTP status,
    the answering version or the error, negative) for each request."""

    def __init__(self, fleet: Fleet, name: str, threads: int = 2) -> None:
        super().__init__(fleet, name, threads)
        self.inputs: list[tuple[float, int, str, bool]] = []
        self.seeds = itertools.count(18)

    def _run(self) -> None:
        draws = random.Random(next(self.seeds))
        while not self.stop.is_set():
            negative = draws.random() < 0.5
            try:
                status, answer = self.fleet.call(self.name, body=body(-0.5 if negative else 0.5))
            except OSError as exc:
                status, answer = 0, repr(exc)
            now = time.monotonic()
            self.results.append((now, status, answer))
            self.inputs.append((now, status, answer, negative))


SPREAD_SLACK = 3
"""Requests by which a version's count may stray from its weight's share over any run
of the gateway's requests (its low-discrepancy ``Spread``, gateway split.py: "within a
few requests of its share")."""


def test_a_canary_failing_on_some_inputs_is_rolled_back_at_its_first_step(
    fleet: Fleet,
) -> None:
    """The canary (``flaky_models.flaky_mlp``: the example MLP, failing on a negative
    first input value) fails about half its requests, the stream's inputs being half
    negative: rolled back at step 1 (5%), on its error rate against the stable version,
    with at most the step-1 share of the requests affected.

    The bound: from the canary's first request to its last, the gateway sends it the
    step-1 weight of the requests; the operator's pass that sees the step's 20 requests,
    judges them and pushes weight 0 adds requests at that same weight, so it adds
    nothing to the share. Allowed on top, in requests: the spread's slack
    (``SPREAD_SLACK``) and one request in flight a client thread at each end of the
    window (the results are stamped when answered). ``batching.maxBatchSize: 1``: a
    forward pass holds one request, so a negative input fails no other request."""
    ready(fleet, "bad", replicas=1, memoryMB=100, warmup={"enabled": False},
          batching={"maxBatchSize": 1})  # fmt: skip
    with Mixed(fleet, "bad") as stream:
        patch(fleet, "bad", {"canary": {"version": "2", "source": FLAKY, "replicas": 1,
                                        "analysis": ANALYSIS}})  # fmt: skip
        done = wait_for("rolled back", lambda: (a := analysis(fleet, "bad")).get("phase")
                        == "RolledBack" and a, 120, interval=0.2)  # fmt: skip
        rolled_back_at = time.monotonic()
        time.sleep(0.5)  # requests sent to the canary before the gateway took the routes
        settled = time.monotonic()
        time.sleep(3)
    failed = stream.failures()
    at_canary = [t for t, status, answer, _ in stream.inputs if status != 200 or answer == "2"]
    first, last = min(at_canary), max(at_canary)
    window = [r for r in stream.results if first <= r[0] <= last]
    weight = ANALYSIS["steps"][0]["weight"]
    slack = SPREAD_SLACK + 2 * len(stream.threads)
    bound = weight / 100 + slack / len(window)
    share = len(failed) / len(window)
    judged = done["canaryWindow"]
    print(f"\nthe canary failing on negative inputs answered {len(at_canary)} requests, "
          f"{len(failed)} failed, before the rollback at step 1 ({weight}%): {100 * share:.1f}% "
          f"of the {len(window)} requests from its first to its last (bound "
          f"{100 * bound:.1f}%) in {last - first:.1f} s, RolledBack seen "
          f"{rolled_back_at - last:.1f} s after its last; {len(at_canary) - judged['requests']} "
          f"canary requests after the judged window; {done['reason']}")  # fmt: skip
    assert done["step"] == 1 and done["weight"] == 0
    rate = re.match(r"AnalysisFailed: errorRate (\d+\.\d)% vs 0\.0% ", done["reason"])
    assert rate is not None and 0 < float(rate[1]) < 100, done["reason"]
    assert judged["requests"] >= 20 and 0 < judged["errors"] < judged["requests"], judged
    # only negative inputs failed, all at the canary; the stable version answered them
    assert failed and all(negative and MESSAGE in answer
                          for _, status, answer, negative in stream.inputs if status != 200)  # fmt: skip
    answered = {(version, negative) for _, status, version, negative in stream.inputs
                if status == 200}  # fmt: skip
    assert answered == {("1", True), ("1", False), ("2", False)}, answered
    late = [t for t in at_canary if t >= settled]
    assert late == [], "the canary got requests after the rollback"
    assert share <= bound, (
        f"{len(failed)} of {len(window)} requests failed ({100 * share:.1f}%): more than "
        f"the step-1 share, {weight}%, plus {slack} requests ({SPREAD_SLACK} of the "
        f"spread's slack, one in flight a client thread at each end)")  # fmt: skip
    versions = {v["version"]: v for v in fleet.status("bad")["versions"]}
    assert versions["2"]["weight"] == 0 and versions["1"]["weight"] == 100
    warnings = [(r, m) for r, m, kind in events(fleet, "bad")
                if kind == "Warning" and r.startswith("Analysis")]  # fmt: skip
    assert [r for r, _ in warnings] == ["AnalysisFailed"], warnings
    # it stays rolled back: the canary gets nothing while its spec is unchanged
    time.sleep(3)
    assert analysis(fleet, "bad")["phase"] == "RolledBack"
    assert all(fleet.call("bad", body=body(-0.5))[0] == 200 for _ in range(50))
    delete(fleet, "bad")


def test_a_shadow_gets_mirrored_requests_compared_in_status_and_answers_no_client(
    fleet: Fleet,
) -> None:
    """spec.shadow (the operator's part): placed with weight 0, in the routes' shadow
    once ready, the gateways' comparisons in status.shadow; removing it unloads it."""
    ready(fleet, "mirror", replicas=1, memoryMB=100)
    shadow = {"version": "3", "source": V2, "percent": 50}
    with Stream(fleet, "mirror") as stream:
        patch(fleet, "mirror", {"shadow": shadow})
        compared = wait_for("shadow comparisons in the status", lambda: (
            s := fleet.status("mirror").get("shadow") or {}).get("compared", 0) >= 50 and s, 90)  # fmt: skip
    print(f"\nstatus.shadow: {compared}")
    assert stream.failures() == [] and {v for _, _, v in stream.results} == {"1"}
    assert compared["version"] == "3" and compared["failed"] == 0
    # the same weights answer the same (up to float noise of other batch sizes)
    assert compared["agreement"] == 1 and compared["worstAbsDiff"] < 1e-4
    roles = {v["version"]: (v["role"], v["weight"]) for v in fleet.status("mirror")["versions"]}
    assert roles == {"1": ("stable", 100), "3": ("shadow", 0)}
    patch(fleet, "mirror", {"shadow": None})
    wait_for("the shadow unloaded", lambda: set().union(*fleet.versions_loaded("mirror").values())
             == {"1"}, 60)  # fmt: skip
    assert "shadow" not in fleet.status("mirror")
    delete(fleet, "mirror")


def analysis_condition(fleet: Fleet, name: str) -> dict[str, Any]:
    return next(c for c in fleet.status(name).get("conditions", []) if c["type"] == "Analysis")


def spec_of(fleet: Fleet, name: str) -> dict[str, Any]:
    return fleet.json("get", "inferencemodel", name)["spec"]  # type: ignore[no-any-return]


def canary_counters(fleet: Fleet, name: str, version: str) -> int:
    """Requests (answered or failed) the runtimes counted for a version, summed."""
    return sum(m["served"] + m["errors"] for pod in fleet.runtimes
               for m in fleet.admin_state(pod)["models"]
               if m["name"] == name and m["version"] == version)  # fmt: skip


def test_a_canary_three_times_slower_fails_on_its_p99_and_is_rolled_back(fleet: Fleet) -> None:
    """The same weights, answering right, but each forward pass 15 ms slower (the
    stable version's p99 in the runtime is about 5 ms here, the canary's 3x that or
    more): rolled back on p99 alone, at the default maxP99Ratio 1.5, at either step (the
    stable p99 over the last minute has its spikes too). 600 MB a copy in a pool of
    1000 MB pods puts the canary on the other pod: on the stable's pod its forward
    passes would hold the stable's up too (one device scheduler a pod), and the ratio
    would stay near 1 at 20%."""
    ready(fleet, "slow", replicas=1, memoryMB=600)
    steps = {"steps": [{"weight": 20, "minRequests": 30, "maxSeconds": 120},
                       {"weight": 50, "minRequests": 30, "maxSeconds": 120}]}  # fmt: skip
    with Stream(fleet, "slow") as stream:
        patch(fleet, "slow", {"canary": {"version": "2", "source": SLOW, "replicas": 1,
                                         "analysis": steps}})  # fmt: skip
        done = wait_for("rolled back on its p99", lambda: (a := analysis(fleet, "slow")).get(
            "phase") == "RolledBack" and a, 120, interval=0.2)  # fmt: skip
        time.sleep(0.5)  # requests sent to the canary before the gateway took the routes
        settled = time.monotonic()
        time.sleep(3)
    canary, stable = done["canaryWindow"], done["stableWindow"]
    ratio = canary["p99LatencyMs"] / stable["p99LatencyMs"]
    placed = {v["version"]: v["pods"] for v in fleet.status("slow")["versions"]}
    print(f"\nslow canary rolled back: p99 {canary['p99LatencyMs']:.1f} ms vs "
          f"{stable['p99LatencyMs']:.1f} ms ({ratio:.1f}x) over {canary['requests']} canary "
          f"requests; {done['reason']}")  # fmt: skip
    assert done["reason"].startswith("AnalysisFailed: p99 "), done["reason"]
    assert "more than 1.5x" in done["reason"] and ratio > 1.5
    assert (done["weight"], canary["errors"]) == (0, 0) and done["step"] in (1, 2)
    assert not set(placed["1"]) & set(placed["2"]), placed
    assert stream.failures() == [], stream.failures()[:5]  # slow, never wrong
    assert [v for t, _, v in stream.results if t >= settled and v == "2"] == []
    assert {v for _, _, v in stream.results} == {"1", "2"}  # it did answer, slowly
    condition = analysis_condition(fleet, "slow")
    assert (condition["status"], condition["reason"]) == ("False", "AnalysisFailed")
    assert condition["message"].startswith("p99 ")
    warnings = [r for r, _, kind in events(fleet, "slow") if kind == "Warning"]
    assert warnings.count("AnalysisFailed") == 1, warnings
    delete(fleet, "slow")


def test_a_quiet_model_does_not_promote_before_its_minimum_and_shows_it_holding(
    fleet: Fleet,
) -> None:
    """About 12 requests a minute, half of them to the canary: the step waits for its
    200 canary requests (Analysis condition AnalysisWaiting), holds after its 20 s
    (AnalysisHolding, a Warning event) and goes on holding, never promoting."""
    ready(fleet, "quiet", replicas=1, memoryMB=100)
    steps = {"steps": [{"weight": 50, "minRequests": 200, "maxSeconds": 20}]}
    with Stream(fleet, "quiet", threads=1, pause=5.0) as stream:
        patch(fleet, "quiet", {"canary": {"version": "2", "source": V2, "replicas": 1,
                                          "analysis": steps}})  # fmt: skip
        waiting = wait_for("the Analysis condition waiting", lambda: (
            c := analysis_condition(fleet, "quiet"))["reason"] == "AnalysisWaiting" and c, 60)  # fmt: skip
        holding = wait_for("the Analysis condition holding", lambda: (
            c := analysis_condition(fleet, "quiet"))["reason"] == "AnalysisHolding" and c, 90)  # fmt: skip
        time.sleep(15)  # it goes on holding: no promotion without the requests
        later = analysis(fleet, "quiet")
        table = fleet.k.kubectl("get", "inferencemodels", "quiet", "-n", NS).stdout
    minutes = (stream.results[-1][0] - stream.results[0][0]) / 60
    print(f"\nquiet model: {len(stream.results) / minutes:.0f} requests a minute; "
          f"conditions seen: {waiting['message']!r}, then {holding['message']!r}")  # fmt: skip
    assert re.fullmatch(r"\d+ of 200 canary requests", waiting["message"]), waiting
    counted = re.match(r"(\d+) of 200 canary requests after (\d+) s", holding["message"])
    assert counted is not None, holding
    assert int(counted[1]) < 200 and int(counted[2]) >= 20
    assert "not promoting without evidence" in holding["message"]
    assert holding["status"] == "Unknown"
    spec = spec_of(fleet, "quiet")
    assert spec["version"] == "1" and spec["canary"]["version"] == "2", spec
    assert (later["phase"], later["weight"], later["summary"]) == ("Holding", 50, "1/1 50% holding")
    assert later["canaryWindow"]["requests"] < 200
    assert "holding" in table, table
    reasons = [(r, kind) for r, _, kind in events(fleet, "quiet")]
    assert reasons.count(("AnalysisHolding", "Warning")) == 1, reasons
    assert ("AnalysisPromoted", "Normal") not in reasons
    assert stream.failures() == [] and {v for _, _, v in stream.results} <= {"1", "2"}
    delete(fleet, "quiet")


def counting(fleet: Fleet, name: str, step: int) -> dict[str, Any]:
    """The analysis once ``step`` counts canary requests; until then an AssertionError
    that shows it and where the versions' pods are (a timeout then says which)."""
    a = analysis(fleet, name)
    versions = fleet.status(name).get("versions")
    assert a.get("step") == step and a.get("canaryWindow", {}).get("requests", 0) > 0, (
        a, versions)  # fmt: skip
    return a


def test_the_operator_killed_mid_analysis_resumes_the_same_step_without_counting_twice(
    fleet: Fleet,
) -> None:
    """Killed (SIGKILL) at step 2 while traffic goes on; the new process reads the step,
    its start time and both versions' counters at its start from status.analysis: the
    same step, the same window (nothing counted twice, nothing lost), then promotes."""
    ready(fleet, "resume", replicas=1, memoryMB=100)
    steps = {"steps": [{"weight": 20, "minRequests": 40, "maxSeconds": 300},
                       {"weight": 50, "minRequests": 600, "maxSeconds": 300}]}  # fmt: skip
    keys = ("step", "steps", "stage", "stepStartTime", "canaryStart", "stableStart")
    with Stream(fleet, "resume", pause=0.04) as stream:
        patch(fleet, "resume", {"canary": {"version": "2", "source": V2, "replicas": 1,
                                           "analysis": steps}})  # fmt: skip
        before = wait_for("step 2 counting", lambda: counting(fleet, "resume", 2), 180, 0.2)
        fleet.stop_operator()
        time.sleep(5)  # the traffic goes on: the gateway keeps its routes
        at_restart = canary_counters(fleet, "resume", "2")
        fleet.start_operator()
        after = wait_for("the new operator's first judgement", lambda: (
            a := analysis(fleet, "resume"))["canaryWindow"]["requests"]
            >= at_restart - before["canaryStart"]["total"] and a, 60, interval=0.2)  # fmt: skip
        now = canary_counters(fleet, "resume", "2")
        done = wait_for("promoted after the restart", lambda: (
            a := analysis(fleet, "resume")).get("phase") == "Promoted" and a, 120, interval=0.5)  # fmt: skip
    window = after["canaryWindow"]["requests"]
    print(f"\nbefore the kill: step {before['step']} with {before['canaryWindow']['requests']} "
          f"canary requests; after the restart: step {after['step']} with {window} (the "
          f"canary's counters: {at_restart} at the restart, {now} just after); "
          f"{done['reason']}")  # fmt: skip
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}, (before, after)
    # the window is the counters now less those at the step's start: not counted from 0
    assert window <= now - before["canaryStart"]["total"]
    assert done["reason"].endswith("(step 2 of 2 at weight 50%, the last)"), done["reason"]
    reasons = [r for r, _, _ in events(fleet, "resume")]
    assert reasons.count("AnalysisStep") == 2 and reasons.count("AnalysisPromoted") == 1, reasons
    assert stream.failures() == [], stream.failures()[:5]
    delete(fleet, "resume")


def test_a_canary_whose_answers_disagree_fails_its_shadow_stage_and_answers_no_client(
    fleet: Fleet,
) -> None:
    """canary.analysis.shadow with other weights of the same architecture: the canary is
    only mirrored to (role shadow, weight 0), status.shadow shows the low agreement,
    the analysis fails before step 1 and every client answer came from version 1."""
    ready(fleet, "differ", replicas=1, memoryMB=100)
    spec = {"shadow": {"minRequests": 30, "minAgreement": 0.9, "percent": 100},
            "steps": [{"weight": 20, "minRequests": 20, "maxSeconds": 120}]}  # fmt: skip
    with Stream(fleet, "differ") as stream:
        patch(fleet, "differ", {"canary": {"version": "2", "source": REVERSED, "replicas": 1,
                                           "analysis": spec}})  # fmt: skip
        roles = wait_for("the canary mirrored to as a shadow", lambda: (
            r := {v["version"]: (v["role"], v["weight"]) for v in fleet.status("differ")["versions"]}
        ) == {"1": ("stable", 100), "2": ("shadow", 0)} and r, 120, interval=0.2)  # fmt: skip
        done = wait_for("rolled back at the shadow stage", lambda: (
            a := analysis(fleet, "differ")).get("phase") == "RolledBack" and a, 120, interval=0.2)  # fmt: skip
        time.sleep(3)
        shadow = fleet.status("differ")["shadow"]
    print(f"\nstatus.shadow: {shadow}; {done['reason']}; {len(stream.results)} client "
          f"requests, all from version {sorted({v for _, _, v in stream.results})}")  # fmt: skip
    assert roles["2"] == ("shadow", 0)
    assert shadow["version"] == "2" and shadow["compared"] >= 30 and shadow["agreement"] < 0.9
    assert (done["stage"], done["step"], done["weight"]) == ("Shadow", 0, 0)
    assert done["reason"].startswith("AnalysisFailed: shadow agreement 0.0%"), done["reason"]
    assert done["shadowWindow"]["compared"] >= 30
    assert stream.failures() == [] and {v for _, _, v in stream.results} == {"1"}
    condition = analysis_condition(fleet, "differ")
    assert (condition["status"], condition["reason"]) == ("False", "AnalysisFailed")
    reasons = [(r, kind) for r, _, kind in events(fleet, "differ")]
    assert ("AnalysisShadow", "Normal") in reasons and ("AnalysisFailed", "Warning") in reasons
    assert not any(r == "AnalysisStep" for r, _ in reasons), reasons
    versions = {v["version"]: (v["role"], v["weight"]) for v in fleet.status("differ")["versions"]}
    assert versions == {"1": ("stable", 100), "2": ("canary", 0)}
    delete(fleet, "differ")


def test_a_canary_that_agrees_passes_its_shadow_stage_before_any_client_sees_it(
    fleet: Fleet,
) -> None:
    """The same weights under another version: the shadow stage passes on agreement,
    then the steps run and the canary is promoted; no client got a canary answer while
    the status still showed the shadow stage."""
    ready(fleet, "agree", replicas=1, memoryMB=100)
    # The canary's last-minute p99 includes the shadow stage's mirrors (100%, at low
    # priority): on this busy 2-CPU host it went past the default 5 ms tolerance (10.5
    # ms) in one clean-clone CI run, and in one of eight runs alone, rolling back an
    # identical canary. Latency is not what this test judges (the slow canary test
    # does, at the defaults).
    spec = {"shadow": {"minRequests": 1500, "minAgreement": 0.9, "percent": 100},
            "steps": [{"weight": 50, "minRequests": 30, "maxSeconds": 120}],
            "p99ToleranceMs": 25}  # fmt: skip
    shadowing: list[float] = []

    def over() -> dict[str, Any] | None:
        a = analysis(fleet, "agree")
        if a.get("stage") == "Shadow" and a.get("phase") == "Running":
            shadowing.append(time.monotonic())
        return a if a.get("phase") in ("Promoted", "RolledBack") else None

    with Stream(fleet, "agree") as stream:
        patch(fleet, "agree", {"canary": {"version": "2", "source": V2, "replicas": 1,
                                          "analysis": spec}})  # fmt: skip
        done = wait_for("promoted after the shadow stage", over, 120, interval=0.2)
    assert done["phase"] == "Promoted", done
    first_canary = min(t for t, _, v in stream.results if v == "2")
    print(f"\nshadow stage seen for {shadowing[-1] - shadowing[0]:.1f} s; first canary "
          f"answer {first_canary - shadowing[-1]:+.1f} s after the last look at it; "
          f"shadowWindow {done['shadowWindow']}")  # fmt: skip
    assert shadowing and shadowing[-1] - shadowing[0] > 2.0, "the shadow stage was not seen"
    # A pass writes its status after pushing its routes: allow the pass that ends the stage.
    assert first_canary > shadowing[-1] - 1.0, (first_canary - shadowing[0], shadowing[-1])
    assert done["shadowWindow"]["compared"] >= 1500 and done["shadowWindow"]["agreement"] == 1
    assert stream.failures() == [], stream.failures()[:5]
    reasons = [r for r, _, _ in events(fleet, "agree")]
    assert reasons[:1] != [] and reasons.count("AnalysisShadow") == 1
    assert reasons.count("AnalysisStep") == 1 and "AnalysisPromoted" in reasons, reasons
    delete(fleet, "agree")


class Paced(Stream):
    """A stream of about ``rate`` requests a second in all (each thread keeps its own
    schedule, and does not catch up on what it missed); ``rate`` None: as fast as the
    threads go."""

    def __init__(self, fleet: Fleet, name: str, rate: float | None, threads: int) -> None:
        super().__init__(fleet, name, threads)
        self.interval = threads / rate if rate else 0.0

    def _run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            try:
                status, body = self.fleet.call(self.name)
            except OSError as exc:
                status, body = 0, repr(exc)
            self.results.append((time.monotonic(), status, body))
            due = max(due + self.interval, time.monotonic() - self.interval)
            if self.interval:
                self.stop.wait(max(0.0, due - time.monotonic()))


RATES = {"50": (50.0, 4), "500": (500.0, 8), "max": (None, 8)}
"""Request rate (None: as fast as the threads go) and client threads."""
KEPT = {"50": (0.8, 1.1)}
"""The rates this 2-CPU host keeps, with the band (fractions of the target) the achieved
rate must fall in: 4 threads calling every 80 ms each answer in a few ms here. 500 a
second is not asserted: 8 Python client threads, the gateway and the runtimes share the
2 CPUs, and the test prints what it achieved instead."""
MEASURED = {"steps": [{"weight": 20, "minRequests": 100, "maxSeconds": 300},
                      {"weight": 50, "minRequests": 100, "maxSeconds": 300}],
            "p99ToleranceMs": 25}  # fmt: skip
"""Latency is not what these cases judge (the slow canary test does, at the defaults):
at the fastest rate the two pods' p99 is this busy 2-CPU host's noise, and one
clean-clone CI run rolled back an identical canary on it (23.9 ms, past the default 5
ms of tolerance and 1.5x the stable one's)."""


@pytest.mark.parametrize("rate", list(RATES))
def test_time_to_promotion_and_requests_failed_before_rollback_at_several_rates(
    fleet: Fleet, rate: str
) -> None:
    """Issue 18's figures: the same two steps (20% then 50%, 100 canary requests each)
    at about 50 and 500 requests/s, and as fast as 8 client threads go here; each case
    prints its target and achieved rate, and a row of the figures' table (run with -s).
    The achieved rate is asserted where the host can keep the target (``KEPT``)."""
    target, threads = RATES[rate]
    name = f"rate-{rate}"
    ready(fleet, name, replicas=1, memoryMB=100)
    with Paced(fleet, name, target, threads) as stream:
        patch(fleet, name, {"canary": {"version": "2", "source": V2, "replicas": 1,
                                       "analysis": MEASURED}})  # fmt: skip
        verdict = wait_for("promoted", lambda: (a := analysis(fleet, name)).get("phase")
                           in ("Promoted", "RolledBack") and a, 180, interval=0.1)  # fmt: skip
        promoted_at = time.monotonic()
        time.sleep(1)
    assert verdict["phase"] == "Promoted", verdict
    first = min(t for t, _, v in stream.results if v == "2")
    took = promoted_at - first
    sent = [r for r in stream.results if first <= r[0] <= promoted_at]
    good_rate = len(sent) / took
    assert stream.failures() == [], stream.failures()[:5]
    delete(fleet, name)

    bad = f"bad-{rate}"
    ready(fleet, bad, replicas=1, memoryMB=100, warmup={"enabled": False})
    with Paced(fleet, bad, target, threads) as stream:
        patch(fleet, bad, {"canary": {"version": "2", "source": BROKEN, "replicas": 1,
                                      "analysis": MEASURED}})  # fmt: skip
        done = wait_for("rolled back", lambda: (a := analysis(fleet, bad)).get("phase")
                        == "RolledBack" and a, 180, interval=0.1)  # fmt: skip
        rolled_back_at = time.monotonic()
        time.sleep(3)
    failed = stream.failures()
    first_failure = min(t for t, _, _ in failed)
    during = [r for r in stream.results if first_failure <= r[0] <= rolled_back_at]
    bad_rate = len(during) / (rolled_back_at - first_failure)
    wanted = f"{target:.0f}" if target else f"none (as fast as {threads} threads go)"
    print(f"\n[{rate}] first canary request to promotion: {took:.1f} s at {good_rate:.0f} "
          f"requests/s ({len(sent)} requests); the failing canary answered {len(failed)} "
          f"requests (all failed) before its rollback, in "
          f"{rolled_back_at - first_failure:.1f} s at {bad_rate:.0f} requests/s; "
          f"window at the verdict: {done['canaryWindow']}\n"
          f"[{rate}] target {wanted}, achieved {good_rate:.0f} requests/s to the promotion "
          f"and {bad_rate:.0f} requests/s to the rollback\n"
          f"| {rate} | {wanted} | {good_rate:.0f} | {took:.1f} s | {len(sent)} | {bad_rate:.0f} "
          f"| {len(failed)} | {rolled_back_at - first_failure:.1f} s |")  # fmt: skip
    assert done["reason"].startswith("AnalysisFailed: errorRate 100.0%"), done["reason"]
    assert len(failed) >= 100  # the step's minRequests, judged on requests
    assert [r for r in failed if r[0] > rolled_back_at + 0.5] == []
    delete(fleet, bad)
    if rate in KEPT and target:
        low, high = (f * target for f in KEPT[rate])
        assert low <= good_rate <= high and low <= bad_rate <= high, (
            f"target {target:.0f} requests/s, achieved {good_rate:.0f} to the promotion and "
            f"{bad_rate:.0f} to the rollback: outside {low:.0f}-{high:.0f}")  # fmt: skip


def test_the_api_server_refuses_a_shadow_stage_next_to_spec_shadow(fleet: Fleet) -> None:
    manifest = model_yaml("both", NS, POOL, shadow={"version": "3", "source": V2},
                          canary={"version": "2", "source": V2, "analysis": {
                              "shadow": {"minRequests": 10}, "steps": [{"weight": 10}]}})  # fmt: skip
    refused = fleet.k.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert refused.returncode != 0
    assert "canary.analysis.shadow must not be combined with spec.shadow" in refused.stderr
