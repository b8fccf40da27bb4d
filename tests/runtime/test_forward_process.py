"""``executor: process``: forward passes in a child process; and ``device_cpus``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelfleet.runtime.affinity import split_cpus
from modelfleet.runtime.config import ConfigError, ModelConfig
from modelfleet.runtime.forward_process import ForwardProcess
from modelfleet.runtime.hosted import State
from modelfleet.runtime.loader import load_module
from tests.runtime.conftest import StartRuntime, infer_body, mlp_config, tiny_model

pytestmark = pytest.mark.integration


async def test_process_executor_batches_and_answers_like_the_unbatched_forward(
    start_runtime: StartRuntime, model_store: Path
) -> None:
    client, runtime = await start_runtime(
        [mlp_config(batching={"max_batch_size": 8, "max_queue_delay_ms": 5})],
        executor="process",
    )
    assert runtime.worker.process is not None and runtime.worker.process.alive()
    reference = load_module(
        ModelConfig.model_validate(mlp_config()), model_store, torch.device("cpu")
    )
    inputs = np.random.default_rng(1).standard_normal((48, 1, 16)).astype(np.float32)

    async def one(x: np.ndarray) -> list[float]:
        resp = await client.post(
            "/v2/models/mlp/infer", json=infer_body("input", x.tolist(), [1, 16])
        )
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["outputs"][0]["data"])

    answers = await asyncio.gather(*(one(x) for x in inputs))
    with torch.inference_mode():
        expected = reference(torch.from_numpy(inputs.reshape(48, 16))).numpy()
    np.testing.assert_allclose(np.array(answers), expected, rtol=1e-5, atol=1e-6)
    metrics = await (await client.get("/metrics")).text()
    batches = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('modelfleet_batch_size_count{model="mlp"')
    )
    assert batches < len(inputs), "concurrent requests should have been batched together"


async def test_a_failing_load_or_warm_up_in_the_forward_process_names_its_reason(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime(
        [
            mlp_config(),
            mlp_config(name="noarch", architecture="no.such.module:factory"),
            tiny_model("coldfail", "broken"),  # warm-up runs it: the load fails
        ],
        executor="process",
    )
    noarch = runtime.repository.failed[("noarch", "1")]
    assert noarch.state is State.FAILED and "cannot import architecture" in (noarch.reason or "")
    coldfail = runtime.repository.failed[("coldfail", "1")]
    assert "this model always fails" in (coldfail.reason or "")
    resp = await client.post("/v2/models/mlp/infer", json=infer_body("input", [0.5] * 16, [1, 16]))
    assert resp.status == 200


async def test_a_model_raising_in_the_forward_process_answers_500_naming_the_model(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime(
        [mlp_config(), tiny_model("bad", "broken", warmup={"enabled": False})],
        executor="process",
    )
    resp = await client.post("/v2/models/bad/infer", json=infer_body("x", [1.0] * 4, [1, 4]))
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert "model 'bad' version '1' failed on a batch of 1" in error
    assert "this model always fails" in error
    resp = await client.post("/v2/models/mlp/infer", json=infer_body("input", [0.5] * 16, [1, 16]))
    assert resp.status == 200


async def test_a_killed_forward_process_fails_requests_with_500_and_liveness_with_503(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([mlp_config()], executor="process")
    process = runtime.worker.process
    assert process is not None and process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    for _ in range(1000):  # on the loop, as the runtime itself notices (no second reaper thread)
        if not process.alive():
            break
        await asyncio.sleep(0.01)
    assert not process.alive()
    resp = await client.post("/v2/models/mlp/infer", json=infer_body("input", [0.5] * 16, [1, 16]))
    assert resp.status == 500
    assert "the forward process" in (await resp.json())["error"]
    live = await client.get("/v2/health/live")
    assert live.status == 503 and "killed by signal 9" in (await live.json())["reason"]
    assert (await client.get("/v2/health/ready")).status == 503


async def test_unloading_frees_the_module_in_the_forward_process(
    start_runtime: StartRuntime,
) -> None:
    _, runtime = await start_runtime([mlp_config()], executor="process")
    remote = runtime.repository.models[("mlp", "1")].module
    process = runtime.worker.process
    assert process is not None and remote is not None and not isinstance(remote, torch.nn.Module)
    assert runtime.repository.memory_in_use() > 0
    await runtime.repository.apply((), wait=True)
    assert runtime.repository.memory_in_use() == 0
    answered = threading.Event()
    seen: list[Any] = []

    def done(outputs: Any, error: Exception | None, seconds: float) -> None:
        seen.append(error)
        answered.set()

    process.submit(remote.handle, [np.zeros((1, 16), dtype=np.float32)], done)
    assert await asyncio.get_running_loop().run_in_executor(None, answered.wait, 10)
    assert f"no module {remote.handle} is loaded" in str(seen[0])


async def test_closing_the_forward_process_ends_the_child() -> None:
    process = ForwardProcess("cpu", torch_threads=1, cpus=None, loop=asyncio.get_running_loop())
    assert process.alive()
    process.detach()
    await asyncio.get_running_loop().run_in_executor(None, process.close)
    assert not process._process.is_alive()


def test_device_cpus_outside_this_process_are_refused_naming_the_cpu() -> None:
    with pytest.raises(ConfigError, match=r"device_cpus: CPU 4096 is not available"):
        split_cpus([4096])


def test_device_cpus_get_their_cpus_and_everything_else_the_rest() -> None:
    allowed = os.sched_getaffinity(0)
    first = min(allowed)
    device, others = split_cpus([first])
    assert device == {first}
    assert others == (allowed - {first} or {first})


def _allowed(pid: int, proc: str | None = None) -> set[int]:
    line = next(
        x
        for x in Path(f"{proc or f'/proc/{pid}'}/status").read_text().splitlines()
        if x.startswith("Cpus_allowed_list")
    )
    cpus: set[int] = set()
    for part in line.split(":")[1].strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def test_a_served_process_executor_pins_the_child_and_drains_on_sigterm(serve: Any) -> None:
    import tritonclient.http as triton

    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs 2 CPUs to check the split of device_cpus (found 1)")
    first = min(os.sched_getaffinity(0))
    server = serve([mlp_config()], executor="process", device_cpus=[first], torch_threads=1)
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    forward = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(forward) == 1, f"expected one forward process among the children {children}"
    child = int(forward[0])
    assert _allowed(child) == {first}
    assert first not in _allowed(server.proc.pid)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    x = np.ones((3, 16), dtype=np.float32)
    tensor = triton.InferInput("input", [3, 16], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    out = client.infer("mlp", [tensor]).as_numpy("output")
    assert out is not None and out.shape == (3, 4)
    # Forward passes on the device CPU; the child's loading thread on the others,
    # so that a load beside serving takes nothing from the device.
    tasks = [int(t) for t in os.listdir(f"/proc/{child}/task") if int(t) != child]
    elsewhere = [t for t in tasks if first not in _allowed(t, f"/proc/{child}/task/{t}")]
    assert len(elsewhere) >= 1, f"threads of the child and their CPUs: {tasks} {elsewhere}"
    assert server.stop() == 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the forward process outlived the runtime"


async def test_at_most_two_batches_are_handed_to_the_forward_process_at_once(
    start_runtime: StartRuntime,
) -> None:
    from modelfleet.runtime.forward_process import PIPELINE_DEPTH

    client, runtime = await start_runtime(
        [
            tiny_model(
                "slow",
                "slow",
                architecture_kwargs={"delay_ms": 40},
                batching={"max_batch_size": 1},
                warmup={"enabled": False},
            )
        ],
        executor="process",
    )
    process = runtime.worker.process
    assert process is not None
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(len(process._run.inflight))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    body = infer_body("x", [1.0] * 4, [1, 4])
    answers = await asyncio.gather(
        *(client.post("/v2/models/slow/infer", json=body) for _ in range(6))
    )
    watcher.cancel()
    assert [r.status for r in answers] == [200] * 6
    assert max(seen) == PIPELINE_DEPTH, f"outstanding batches seen: {sorted(set(seen))}"


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT64", "FP16", "FP64"])
async def test_every_dtype_crosses_to_the_forward_process_and_back(
    start_runtime: StartRuntime, datatype: str
) -> None:
    values = {"BOOL": [[True, False, True, False]], "UINT8": [[0, 1, 200, 255]],
              "INT64": [[-(2**62), -1, 0, 2**62]], "FP16": [[0.5, -1.5, 2.0, 1024.0]],
              "FP64": [[0.1, -1.5, 3.0, 1e300]]}[datatype]  # fmt: skip
    client, _ = await start_runtime([tiny_model("ident", "identity", datatype)], executor="process")
    resp = await client.post(
        "/v2/models/ident/infer", json=infer_body("x", values, [1, 4], datatype)
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["outputs"][0]["data"] == values[0]


async def test_a_batch_larger_than_the_childs_receive_buffer_crosses_exactly(
    start_runtime: StartRuntime,
) -> None:
    # 3 MiB of input: more than the 1 MiB the child receives into at first, twice
    # (the buffer grows once, then holds the second).
    width = 1 << 16
    model = tiny_model("wide", "identity", inputs=[{"name": "x", "datatype": "FP32",
                       "shape": [-1, width]}], outputs=[{"name": "y", "datatype": "FP32",
                       "shape": [-1, width]}], batching={"max_batch_size": 16})  # fmt: skip
    client, _ = await start_runtime([model], executor="process")
    x = np.random.default_rng(2).standard_normal((12, width)).astype(np.float32)
    for _ in range(2):
        resp = await client.post(
            "/v2/models/wide/infer", json=infer_body("x", x.tolist(), [12, width])
        )
        assert resp.status == 200, await resp.text()
        got = np.array((await resp.json())["outputs"][0]["data"], np.float32)
        np.testing.assert_array_equal(got.reshape(12, width), x)


def test_the_forward_process_keeps_its_freed_memory_between_batches(serve: Any) -> None:
    import urllib.request

    from bench.runtime_bench import model_config, request_body

    server = serve([model_config("cnn")], executor="process", torch_threads=1)
    (child,) = forward_children(server.proc.pid)
    body, headers, _ = request_body("cnn", "binary", np.random.default_rng(0), rows=16)

    def infer() -> None:
        req = urllib.request.Request(f"{server.url}/v2/models/cnn/infer", body, headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    for _ in range(3):
        infer()
    before = minor_faults(child)
    for _ in range(20):
        infer()
    per_batch = (minor_faults(child) - before) / 20
    # ~1,000 per batch of 16 images when glibc returns the activations to the kernel
    assert per_batch < 50, f"{per_batch} minor page faults per batch in the forward process"


def forward_children(pid: int) -> list[int]:
    """Child processes of ``pid`` started by multiprocessing's spawn (not its resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    out = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                out.append(child)
    return out


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[7])


def _nice(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19 of proc(5): nice


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_the_forward_pass_runs_below_the_event_loop_by_forward_nice(
    serve: Any, executor: str
) -> None:
    """``forward_nice`` (off by default; here 10): the thread or process that runs forward passes
    has that much lower a CPU priority than the event loop, so that on a shared CPU
    the loop reads and refuses a surge first; 0 leaves them equal."""
    for nice in (10, None):
        extra = {} if nice is None else {"forward_nice": nice}
        server = serve([mlp_config()], executor=executor, torch_threads=1, **extra)
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v2/models/mlp/infer",
            data=json.dumps(infer_body("input", [0.5] * 16, [1, 16])).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # a forward pass has run
            assert answer.status == 200
        pid = server.proc.pid
        assert _nice(pid, pid) == 0, "the event loop keeps the process's priority"
        if executor == "thread":
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
            nices = [_nice(pid, t) for t in tasks]
        else:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            child = next(int(c) for c in children
                         if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())  # fmt: skip
            nices = [_nice(child, child)]
        if nice == 10:
            assert 10 in nices, f"no forward thread at nice 10: {nices}"
        else:
            assert set(nices) == {0}, nices
        assert server.stop() == 0


async def test_the_forward_process_keeps_its_models_out_of_the_collectors_full_walks(
    start_runtime: StartRuntime,
) -> None:
    """The child holds torch and the modules: a full collection there walked them all
    and stopped every forward pass for it (76 ms at 2x CNN overload). It freezes them
    once a model is loaded, gives them back after an unload (the dropped module's
    cycles may then be freed), and freezes again after the batch that follows a full
    collection. The probe model answers the child's frozen count."""
    client, runtime = await start_runtime(
        [tiny_model("probe", "freeze_probe"), tiny_model("other", "identity")],
        executor="process",
    )

    async def frozen(collect: bool = False) -> float:
        x = [1.0 if collect else 0.0] * 4
        resp = await client.post("/v2/models/probe/infer", json=infer_body("x", x, [1, 4]))
        assert resp.status == 200, await resp.text()
        return float((await resp.json())["outputs"][0]["data"][0])

    assert await frozen() > 1000  # torch's and the modules' objects, in the child
    await runtime.repository.unload_name("other")
    assert await frozen() == 0, "still frozen after an unload: its cycles could not be freed"
    assert await frozen(collect=True) == 0  # the full collection runs in this batch ...
    assert await frozen() > 1000  # ... and the child froze again after it
