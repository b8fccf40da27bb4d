"""The MLServer runtime class for the example models and the zoo's BERT.

MLServer's adaptive batcher merges the queued requests into one before
``predict`` sees them, so a model cannot pad them itself: with different
lengths the merged tensor is already broken (see ``mlserver_server``).
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers.servers.common import NAMES, SEQUENCES, load


class TorchModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.model_kind = extra["model"]
        self.model = load(self.model_kind, extra["model_dir"], int(extra["threads"]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.model_kind in SEQUENCES:
            return self.predict_sequences(payload)
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).numpy()
        return InferenceResponse(
            model_name=self.model_kind,
            outputs=[NumpyCodec.encode_output(NAMES[self.model_kind][1], y)],
        )

    def predict_sequences(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {item.name: item for item in payload.inputs}
        ids, mask = (
            torch.from_numpy(NumpyCodec.decode_input(inputs[n]).astype(np.int64, copy=False))
            for n in SEQUENCES[self.model_kind][0]
        )
        with torch.inference_mode():
            out = self.model(ids, mask)
        return InferenceResponse(
            model_name=self.model_kind,
            outputs=[NumpyCodec.encode_output(k, v.numpy()) for k, v in out.items()],
        )
