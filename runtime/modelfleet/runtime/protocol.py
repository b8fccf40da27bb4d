"""Open Inference Protocol (KServe V2) tensors: JSON and Triton's binary extension.

Decoding turns an infer request body into numpy arrays checked against the
model's declared inputs; every refusal is a ``BadRequest`` that names the
input, what was sent and what is expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelfleet.api.request_parameters import HEADER_LENGTH
from modelfleet.runtime.config import TensorSpec
from modelfleet.runtime.wire import deserialize_bytes, serialize_bytes
from modelfleet.serving.errors import BadRequest

NP_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""OIP datatype -> numpy dtype; BYTES tensors are object arrays of ``bytes``."""
OIP_DATATYPES = {dtype: name for name, dtype in NP_DTYPES.items()}

Array = npt.NDArray[Any]


@dataclass(slots=True)
class InferRequest:
    """A decoded, validated request: arrays in the model's declared input order."""

    id: str | None
    arrays: list[Array]
    rows: int
    priority: int = 0
    timeout_us: int | None = None
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False


def _shape_ok(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(
        e == -1 or s == e for s, e in zip(shape, expected, strict=True)
    )


def int_param(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Separates the JSON header from the binary tensor data (Triton's extension)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def decode_request(
    body: bytes, specs: Sequence[TensorSpec], *, header_length: str | None = None
) -> InferRequest:
    """Parses and validates an infer request against the declared inputs."""
    head, binary = split_body(body, header_length)
    doc = _parse_head(head)
    params = _request_parameters(doc)
    by_name = inputs_by_name(doc["inputs"], specs)
    arrays = decode_inputs(by_name, specs, binary)
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"))
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        arrays=arrays,
        rows=len(arrays[0]),  # the batch dimension, the same in every input
        priority=int_param(params, "priority") or 0,
        timeout_us=int_param(params, "timeout"),
        outputs=outputs,
        binary_outputs=binary_outputs,
        binary_default=bool(params.get("binary_data_output", False)),
    )


def _parse_head(head: bytes) -> dict[str, Any]:
    """The JSON head, refused unless it is an object with a non-empty 'inputs' list."""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if b"NaN" in head or b"Infinity" in head:
            hint = " (NaN and Infinity are not JSON numbers)"
        raise BadRequest(f"request body is not valid JSON{hint}: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    return doc


def _request_parameters(doc: dict[str, Any]) -> dict[str, Any]:
    """The request's 'parameters' (empty when absent); refused unless an object."""
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object")
    return params


def inputs_by_name(raw_inputs: list[Any], specs: Sequence[TensorSpec]) -> dict[str, dict[str, Any]]:
    """The inputs by name; refuses an unnamed, repeated or undeclared one."""
    by_name: dict[str, dict[str, Any]] = {}
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each input must be an object with a string 'name'")
        if item["name"] in by_name:
            raise BadRequest(f"input '{item['name']}' is given twice")
        by_name[item["name"]] = item
    expected = {s.name for s in specs}
    unknown = sorted(set(by_name) - expected)
    if unknown:
        raise BadRequest(
            f"unknown input {', '.join(repr(u) for u in unknown)}; "
            f"the model expects {', '.join(repr(s.name) for s in specs)}"
        )
    return by_name


def decode_inputs(
    by_name: Mapping[str, dict[str, Any]], specs: Sequence[TensorSpec], binary: memoryview
) -> list[Array]:
    """The arrays in declared order, each taking its binary data after the previous
    one's; refuses a missing input, disagreeing or empty batch dimensions, and binary
    data no input claims."""
    offset = 0
    arrays: list[Array] = []
    rows: int | None = None
    for spec in specs:
        item = by_name.get(spec.name)
        if item is None:
            raise BadRequest(f"input '{spec.name}' is missing")
        array, used = _decode_tensor(item, spec, binary[offset:])
        offset += used
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise BadRequest(
                f"input '{spec.name}' has {array.shape[0]} rows but "
                f"input '{specs[0].name}' has {rows}: the batch dimension must agree"
            )
        arrays.append(array)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by inputs")
    assert rows is not None
    if rows == 0:
        raise BadRequest(f"input '{specs[0].name}' is empty: the batch dimension is 0")
    return arrays


def _decode_tensor(item: dict[str, Any], spec: TensorSpec, binary: memoryview) -> tuple[Array, int]:
    name = spec.name
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        raise BadRequest(
            f"input '{name}' has datatype {datatype!r}, the model expects {spec.datatype}"
        )
    shape = item.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequest(f"input '{name}' needs 'shape' as a list of non-negative integers")
    if not _shape_ok(shape, spec.shape):
        raise BadRequest(f"input '{name}' has shape {shape}, the model expects {list(spec.shape)}")
    dtype = NP_DTYPES[datatype]
    count = math.prod(shape)
    params = item.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
    if datatype == "BYTES":
        return _decode_bytes(item, name, shape, count, binary_size, binary)
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != count * dtype.itemsize:
            raise BadRequest(
                f"input '{name}': binary_data_size {binary_size!r} does not match shape {shape} "
                f"of {datatype} ({count * dtype.itemsize} bytes)"
            )
        if binary_size > len(binary):
            raise BadRequest(f"input '{name}': the body is missing binary data")
        array = np.frombuffer(binary[:binary_size], dtype=dtype).reshape(shape).copy()
        return _check_finite(array, name), binary_size
    data = item.get("data")
    if data is None:
        raise BadRequest(f"input '{name}' has no 'data'")
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input '{name}': data is not a valid {datatype} tensor: {exc}") from None
    if array.size != count:
        raise BadRequest(f"input '{name}' has {array.size} values but shape {shape} needs {count}")
    if datatype == "BOOL" and not _all_bools(data):
        raise BadRequest(f"input '{name}' is BOOL: data must be true/false")
    return _check_finite(array.reshape(shape), name), 0


def _decode_bytes(
    item: dict[str, Any], name: str, shape: list[int], count: int, size: Any, binary: memoryview
) -> tuple[Array, int]:
    """A BYTES tensor: strings in JSON, or Triton's binary form (each element a
    4-byte little-endian length and its bytes)."""
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
        if size > len(binary):
            raise BadRequest(f"input '{name}': the body is missing binary data")
        try:
            flat, used = deserialize_bytes(binary[:size], count)
        except ValueError as exc:
            raise BadRequest(f"input '{name}' (BYTES, shape {shape}): {exc}") from None
        if used != size:
            raise BadRequest(
                f"input '{name}': binary_data_size is {size} but its {count} BYTES elements "
                f"take {used}"
            )
        return flat.reshape(shape), size
    data = item.get("data")
    if data is None:
        raise BadRequest(f"input '{name}' has no 'data'")
    values = list(_flatten(data))
    if not all(isinstance(v, str) for v in values):
        raise BadRequest(f"input '{name}' is BYTES: data must be strings")
    if len(values) != count:
        raise BadRequest(f"input '{name}' has {len(values)} values but shape {shape} needs {count}")
    flat = np.empty(count, dtype=object)
    flat[:] = [v.encode() for v in values]
    return flat.reshape(shape), 0


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for x in data:
            yield from _flatten(x)
    else:
        yield data


def _all_bools(data: Any) -> bool:
    if isinstance(data, list):
        return all(_all_bools(x) for x in data)
    return isinstance(data, bool)


def _check_finite(array: Array, name: str) -> Array:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input '{name}' contains NaN or Infinity")
    return array


def _requested_outputs(raw: Any) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, set()
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output must be an object with a string 'name'")
        names.append(item["name"])
        params = item.get("parameters") or {}
        if isinstance(params, dict) and params.get("binary_data"):
            binary.add(item["name"])
    return names, binary


def check_outputs(wanted: list[str] | None, specs: Sequence[TensorSpec]) -> list[str] | None:
    """The requested output names (None: all), refused when one is unknown."""
    if wanted is not None:
        known = {s.name for s in specs}
        missing = [w for w in wanted if w not in known]
        if missing:
            raise BadRequest(
                f"unknown output {', '.join(repr(m) for m in missing)}; "
                f"the model has {', '.join(repr(s.name) for s in specs)}"
            )
    return wanted


def encode_response(
    *,
    model: str,
    version: str,
    request: InferRequest,
    specs: Sequence[TensorSpec],
    arrays: Sequence[Array],
) -> tuple[bytes, dict[str, str]]:
    """Builds the OIP response body (JSON, or JSON + binary tensors when asked)."""
    wanted = check_outputs(request.outputs, specs)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, array in zip(specs, arrays, strict=True):
        if wanted is not None and spec.name not in wanted:
            continue
        entry: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": list(array.shape),
        }
        binary = spec.name in request.binary_outputs or (request.binary_default and wanted is None)
        if binary:
            raw = (
                serialize_bytes(array)
                if spec.datatype == "BYTES"
                else np.ascontiguousarray(array, dtype=NP_DTYPES[spec.datatype]).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif spec.datatype == "BYTES":  # JSON carries strings (binary output keeps bytes exact)
            entry["data"] = [_text(v) for v in array.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    # orjson writes numpy arrays natively; non-finite floats become null.
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", errors="replace")


def tensor_metadata(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
