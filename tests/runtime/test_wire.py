"""The run pipe's frames (``wire``): arrays cross between the processes exactly."""

from __future__ import annotations

import numpy as np
import pytest

from modelfleet.runtime.protocol import NP_DTYPES
from modelfleet.runtime.wire import (
    ALIGN,
    decode_answer,
    decode_batch,
    deserialize_bytes,
    encode_answer,
    encode_batch,
    encode_failure,
    serialize_bytes,
)


@pytest.mark.parametrize("datatype", sorted(set(NP_DTYPES) - {"BYTES"}))
def test_every_oip_dtype_and_shape_crosses_a_batch_frame_exactly(datatype: str) -> None:
    rng = np.random.default_rng(0)
    dtype = NP_DTYPES[datatype]
    arrays = [
        (rng.standard_normal((3, 5)) * 100).astype(dtype),
        np.arange(7).astype(dtype).reshape(7, 1, 1),
        np.zeros((0, 4), dtype),
        np.array(1, dtype),  # 0-d
        (rng.standard_normal((4, 6)) * 100).astype(dtype)[:, ::2],  # not contiguous
    ]
    handle, got = decode_batch(encode_batch(2**40 + 3, arrays))
    assert handle == 2**40 + 3
    assert len(got) == len(arrays)
    for sent, received in zip(arrays, got, strict=True):
        assert received.dtype == sent.dtype and received.shape == sent.shape
        np.testing.assert_array_equal(received, sent)
        assert received.ctypes.data % 16 == 0 or received.size == 0


def test_arrays_start_at_multiples_of_the_alignment_within_the_frame() -> None:
    arrays = [np.ones((3,), np.uint8), np.ones((2, 2), np.float64), np.ones((5,), np.int16)]
    frame = bytearray(encode_batch(1, arrays))
    _, got = decode_batch(frame)
    base = np.frombuffer(frame, np.uint8).ctypes.data
    assert [(a.ctypes.data - base) % ALIGN for a in got] == [0, 0, 0]
    assert all(a.flags.writeable for a in got), "views of a bytearray are writable (torch)"


def test_answers_carry_outputs_or_a_failure_and_the_forward_seconds() -> None:
    outputs = [np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.array([True, False])]
    got, failure, seconds = decode_answer(encode_answer(outputs, 0.125))
    assert failure is None and seconds == 0.125 and got is not None
    for sent, received in zip(outputs, got, strict=True):
        np.testing.assert_array_equal(received, sent)
    assert decode_answer(encode_failure(True, "shape mismatch: 'y'", 0.5)) == (
        None, (True, "shape mismatch: 'y'"), 0.5,
    )  # fmt: skip


def test_a_frame_with_bytes_left_over_is_refused() -> None:
    frame = encode_batch(1, [np.ones(4, np.float32)]) + b"\0" * 8
    with pytest.raises(ValueError, match="held"):
        decode_batch(frame)


def test_bytes_tensors_cross_between_numeric_ones_exactly() -> None:
    text = np.array([[b"hello world"], [b""], ["caf\u00e9".encode()], [bytes(range(256))]], object)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), text, np.ones((2, 2), np.int64)]
    handle, got = decode_batch(encode_batch(7, arrays))
    assert handle == 7 and got[1].dtype == object and got[1].shape == (4, 1)
    assert got[1].tolist() == text.tolist()
    np.testing.assert_array_equal(got[0], arrays[0])
    np.testing.assert_array_equal(got[2], arrays[2])
    outputs, _, _ = decode_answer(encode_answer([text[:2]], 0.0))
    assert outputs is not None and outputs[0].tolist() == [[b"hello world"], [b""]]


def test_bytes_serialisation_is_tritons_and_refuses_truncated_data() -> None:
    raw = serialize_bytes(np.array([b"ab", "c"], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    flat, used = deserialize_bytes(raw, 2)
    assert flat.tolist() == [b"ab", b"c"] and used == len(raw)
    with pytest.raises(ValueError, match="claims 2 bytes"):
        deserialize_bytes(raw[:5], 1)
    with pytest.raises(ValueError, match="ends after 2 of 3"):
        deserialize_bytes(raw, 3)
