"""The Open Inference Protocol over gRPC: a ``ModelInferRequest`` becomes the same
checked :class:`InferRequest` a REST body becomes, and outputs become a
``ModelInferResponse``.

A request's tensors come either typed (``contents.fp32_contents`` and so on) or
raw (``raw_input_contents``, one entry per input, little-endian, BYTES elements
each a 4-byte length and its bytes). Both are turned into the REST decoder's
input items, so every refusal names the input with the words REST uses.
Answers always carry raw outputs, as Triton's do.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from modelfleet.api import inference_pb2 as pb
from modelfleet.runtime.config import TensorSpec
from modelfleet.runtime.protocol import (
    NP_DTYPES,
    Array,
    InferRequest,
    check_outputs,
    decode_inputs,
    inputs_by_name,
    int_param,
)
from modelfleet.runtime.wire import serialize_bytes
from modelfleet.serving.errors import BadRequest

CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed-contents field of each datatype (FP16 has none: it travels raw)."""


def parse_request(body: bytes) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise BadRequest(f"the request is not a valid ModelInferRequest: {exc}") from None
    return message


def parameter_values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameters map as plain values (whichever of the oneof is set)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = None if which is None else getattr(parameter, which)
    return values


def peek_parameters(message: pb.ModelInferRequest) -> tuple[int | None, int | None]:
    """The ``priority`` and ``timeout`` (µs) parameters when they are valid integers
    (``decode_request`` refuses invalid ones with a message)."""
    found: list[int | None] = []
    for key in ("priority", "timeout"):
        value = None
        if key in message.parameters:
            parameter = message.parameters[key]
            which = parameter.WhichOneof("parameter_choice")
            if which in ("int64_param", "uint64_param"):
                value = getattr(parameter, which)
        found.append(value if value is not None and value >= 0 else None)
    return found[0], found[1]


def decode_request(message: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> InferRequest:
    """Validates the request against the declared inputs, as REST's decoder does."""
    tensors = message.inputs
    raw = message.raw_input_contents
    if not tensors:
        raise BadRequest("request needs a non-empty 'inputs' list")
    if raw and len(raw) != len(tensors):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs: give raw "
            "contents for every input, in the order of 'inputs', or for none"
        )
    items: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    for index, tensor in enumerate(tensors):
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        blob = raw[index] if raw else _typed(tensor, item)
        if blob is not None:
            _check_raw_size(tensor, blob)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs[tensor.name] = blob
        items.append(item)
    by_name = inputs_by_name(items, specs)
    binary = b"".join(blobs.get(spec.name, b"") for spec in specs)
    arrays = decode_inputs(by_name, specs, memoryview(binary))
    params = parameter_values(message.parameters)
    return InferRequest(
        id=message.id or None,
        arrays=arrays,
        rows=len(arrays[0]),
        priority=int_param(params, "priority") or 0,
        timeout_us=int_param(params, "timeout"),
        outputs=[o.name for o in message.outputs] or None,
    )


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, item: dict[str, Any]) -> bytes | None:
    """Puts the typed contents into ``item['data']``; BYTES come back as a raw blob."""
    name, datatype = tensor.name, tensor.datatype
    given = [field.name for field, _ in tensor.contents.ListFields()]
    expected = CONTENTS.get(datatype)
    if not given:
        raise BadRequest(
            f"input '{name}' has no contents and the request has no raw_input_contents"
        )
    if datatype == "FP16":
        raise BadRequest(
            f"input '{name}' is FP16, which has no typed contents in the protocol: "
            "send it in raw_input_contents"
        )
    if expected is None:  # an unknown datatype: the decoder names it
        return None
    wrong = [g for g in given if g != expected]
    if wrong:
        raise BadRequest(
            f"input '{name}' is {datatype}: its values belong in contents.{expected}, "
            f"not contents.{wrong[0]}"
        )
    values = getattr(tensor.contents, expected)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    item["data"] = list(values)
    return None


def _check_raw_size(tensor: pb.ModelInferRequest.InferInputTensor, blob: bytes) -> None:
    """A fixed-size input's raw contents must fill its shape exactly (BYTES elements
    carry their own lengths, which the decoder checks)."""
    dtype = NP_DTYPES.get(tensor.datatype)
    if dtype is None or tensor.datatype == "BYTES" or any(d < 0 for d in tensor.shape):
        return
    need = int(np.prod(tensor.shape)) * dtype.itemsize
    if len(blob) != need:
        raise BadRequest(
            f"input '{tensor.name}': raw_input_contents has {len(blob)} bytes but shape "
            f"{list(tensor.shape)} of {tensor.datatype} needs {need}"
        )


def encode_response(
    *,
    model: str,
    version: str,
    request: InferRequest,
    specs: Sequence[TensorSpec],
    arrays: Sequence[Array],
) -> pb.ModelInferResponse:
    """The answer with raw outputs (the requested ones, or all)."""
    wanted = check_outputs(request.outputs, specs)
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id or "")
    for spec, array in zip(specs, arrays, strict=True):
        if wanted is not None and spec.name not in wanted:
            continue
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if spec.datatype == "BYTES":
            response.raw_output_contents.append(serialize_bytes(array))
        else:
            data = np.ascontiguousarray(array, dtype=NP_DTYPES[spec.datatype])
            response.raw_output_contents.append(data.tobytes())
    return response
