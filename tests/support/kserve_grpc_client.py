"""KServe's own gRPC client against an OIP gRPC address, as a script.

Run in its own process (``python -m tests.support.kserve_grpc_client HOST:PORT``):
kserve and tritonclient both register the protocol's messages as ``inference.*``
in protobuf's default pool, so the two clients cannot share a process (nor a
pytest run). Prints one JSON line with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(target: str) -> dict[str, object]:
    client = InferenceGRPCClient(url=target, timeout=10)
    try:
        seen: dict[str, object] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("mlp"),
        }
        x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
        answers = {}
        for binary in (True, False):  # raw_input_contents, then typed fp32_contents
            tensor = InferInput(name="input", shape=[2, 16], datatype="FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k-1")
            response = await client.infer(request)
            out = response.outputs[0]
            answers["raw" if binary else "typed"] = {
                "id": response.id, "name": out.name, "shape": list(out.shape),
                "data": np.asarray(out.as_numpy(), dtype=np.float32).reshape(-1).tolist(),
            }  # fmt: skip
        seen["answers"] = answers
        try:
            await client.infer(InferRequest(model_name="nope", infer_inputs=[tensor]))
            seen["unknown"] = "answered"
        except Exception as exc:  # kserve wraps the grpc error
            seen["unknown"] = f"{type(exc).__name__}: {exc}"
        return seen
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
