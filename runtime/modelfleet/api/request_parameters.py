"""Triton's ``priority`` and ``timeout`` request parameters, found in the raw body of an
Open Inference Protocol REST request without decoding it.

The runtime's admission and the gateway's both decide before any tensor is parsed:
clients write ``parameters`` before the tensors or after them (``tritonclient.http``
puts them after the inputs, so behind the data of a JSON tensor), and with Triton's
binary extension only the JSON head (``Inference-Header-Content-Length`` bytes) holds
them. The runtime reads them properly once it decodes the request.
"""

from __future__ import annotations

import re

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Triton's binary tensor extension: the length of the JSON head before the tensors."""
PEEK_BYTES = 4096
"""How far from each end of the JSON head the request parameters are looked for."""
_PARAMETER = re.compile(rb'"(priority|timeout)"\s*:\s*(\d+)')


def peek_parameters(body: bytes, header_length: str | None) -> tuple[int | None, int | None]:
    """The request's ``priority`` and ``timeout`` (None where absent), from the first and
    the last ``PEEK_BYTES`` of its JSON head; ``header_length`` is the request's
    ``Inference-Header-Content-Length`` header, if any."""
    end = len(body)
    if header_length is not None and header_length.isdigit():
        end = min(end, int(header_length))
    found: dict[bytes, int] = {}
    spans = [(0, min(end, PEEK_BYTES))]
    if end > PEEK_BYTES:
        spans.append((max(PEEK_BYTES, end - PEEK_BYTES), end))
    for lo, hi in spans:
        for match in _PARAMETER.finditer(body, lo, hi):
            found.setdefault(match.group(1), int(match.group(2)))
    return found.get(b"priority"), found.get(b"timeout")
