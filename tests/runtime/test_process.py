"""The runtime as a real process: tritonclient as the client, SIGTERM drain."""

from __future__ import annotations

import re
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.runtime.conftest import mlp_config, tiny_model
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_tritonclient_http_works_unchanged(serve: Any) -> None:
    import tritonclient.http as triton

    server = serve([mlp_config()])
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"][0]["name"] == "input"
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    answers = []
    for binary in (False, True):  # JSON tensors, then Triton's binary extension
        tensor = triton.InferInput("input", [2, 16], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("mlp", [tensor], outputs=[wanted], priority=1, timeout=5_000_000)
        out = result.as_numpy("output")
        assert out is not None and out.shape == (2, 4) and out.dtype == np.float32
        answers.append(out)
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(triton.InferenceServerException, match="unknown model"):
        client.infer("nope", [tensor])


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(serve: Any) -> None:
    slow = tiny_model(
        "slow", "slow", architecture_kwargs={"delay_ms": 1500},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, warmup={"enabled": False},
    )  # fmt: skip
    server = serve([slow], drain_grace_s=10)
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    results: dict[str, Any] = {}

    def in_flight() -> None:
        req = urllib.request.Request(f"{server.url}/v2/models/slow/infer", data=body)
        with urllib.request.urlopen(req, timeout=20) as resp:
            results["status"] = resp.status
            results["body"] = resp.read()

    def admitted() -> bool:  # batches of one, no delay: admitted means running
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return re.search(
            r'modelfleet_admitted_total\{model="slow",priority="\d+",version="1"\} 1\.0', text
        )

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_for("the request running on the device", admitted, interval=0.05)
    server.proc.send_signal(signal.SIGTERM)
    wait_for("the drain under way", lambda: "draining" in server.log.read_text(), interval=0.02)
    for path, method in (("/v2/health/ready", "GET"), ("/v2/models/slow/infer", "POST")):
        req = urllib.request.Request(
            f"{server.url}{path}", data=body if method == "POST" else None, method=method
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 503, path
    thread.join(timeout=20)
    assert results.get("status") == 200, results
    assert server.proc.wait(timeout=15) == 0
    assert "drained" in server.log.read_text()
