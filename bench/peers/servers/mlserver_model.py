"""The MLServer runtime class for the example models."""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers.servers.common import NAMES, load


class TorchModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.model_kind = extra["model"]
        self.model = load(self.model_kind, extra["model_dir"], int(extra["threads"]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).numpy()
        return InferenceResponse(
            model_name=self.model_kind,
            outputs=[NumpyCodec.encode_output(NAMES[self.model_kind][1], y)],
        )
