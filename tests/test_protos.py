"""The committed gRPC messages are what ``make protos`` generates from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "modelfleet/api/inference.proto"


def test_generated_messages_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'runtime'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", str(ROOT / "runtime" / PROTO)],
        check=True,
    )  # fmt: skip
    for suffix in ("_pb2.py", "_pb2.pyi"):
        generated = (tmp_path / PROTO.replace(".proto", suffix)).read_text()
        committed = (ROOT / "runtime" / PROTO.replace(".proto", suffix)).read_text()
        assert committed == generated, (
            f"{PROTO.replace('.proto', suffix)} is stale: run `make protos`"
        )


def test_the_wire_matches_the_protocol_tritonclient_speaks() -> None:
    """Field numbers and types equal those of tritonclient's own ``inference.*``
    messages (the protocol), message by message."""
    from tritonclient.grpc import service_pb2 as theirs

    from modelfleet.api import inference_pb2 as ours

    for name, descriptor in ours.DESCRIPTOR.message_types_by_name.items():
        if name == "ModelInferRequestHead":  # ours alone: a prefix of ModelInferRequest
            descriptor, other = (
                descriptor,
                theirs.DESCRIPTOR.message_types_by_name["ModelInferRequest"],
            )
        else:
            other = theirs.DESCRIPTOR.message_types_by_name[name]
        _same_fields(descriptor, other)


def _same_fields(ours: object, theirs: object) -> None:
    for field in ours.fields:  # type: ignore[attr-defined]
        other = theirs.fields_by_name[field.name]  # type: ignore[attr-defined]
        assert (field.number, field.type, field.is_repeated) == (
            other.number, other.type, other.is_repeated,
        ), f"{ours.full_name}.{field.name}"  # type: ignore[attr-defined]  # fmt: skip
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            _same_fields(field.message_type, other.message_type)
