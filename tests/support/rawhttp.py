"""HTTP/1.1 on a raw socket, for the tests of the front doors: exact bytes in (pipelined,
trickled, kept alive) and every header of the answer out (aiohttp names itself in
``Server``; a front door's answers do not)."""

from __future__ import annotations

import json
import socket
from typing import Any


def request(body: bytes, path: str = "/v2/models/m/infer", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, buffer: bytearray) -> Answer:
    """One response from ``sock`` (``buffer``: bytes already read past the last one)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; read {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return Answer(int(lines[0].split(" ")[1]), headers, body)
