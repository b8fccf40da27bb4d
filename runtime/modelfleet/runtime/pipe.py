"""The run pipe to the forward process: length-prefixed frames over a socket pair.

The serving process's end is non-blocking and driven by its event loop:
``LoopPipe.send`` writes what the socket takes at once and keeps the rest,
which the loop writes as the socket drains (a frame of any size, never a
partial one on the wire, never blocking the loop); answers are read as they
arrive, a large one straight into its own buffer. The forward process's end
is a plain blocking socket (``send_frame`` / ``FrameReceiver``): it does
nothing else while it waits.

A frame is its length (u64, little-endian) and its bytes. Back-pressure is
the caller's: the serving process hands at most two batches to the child.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

LENGTH = struct.Struct("<Q")
SCRATCH = 1 << 16
"""Bytes read at once while no frame of known length is being filled."""


def _views(parts: Sequence[Any]) -> list[memoryview]:
    views = [memoryview(p).cast("B") for p in parts]
    return [v for v in views if len(v)]


def _advance(views: deque[memoryview], sent: int) -> None:
    """Drops ``sent`` bytes from the front of ``views``."""
    while sent:
        head = views[0]
        if sent >= len(head):
            sent -= len(head)
            views.popleft()
        else:
            views[0] = head[sent:]
            sent = 0


class LoopPipe:
    """The serving process's end: ``send`` frames, ``on_frame(bytearray)`` for each
    frame received, ``on_closed(exc)`` once when the other end is gone."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytearray], None],
        on_closed: Callable[[BaseException], None],
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._out: deque[memoryview] = deque()
        self._writing = False
        self._closed = False
        self._head = bytearray(LENGTH.size)
        self._head_filled = 0
        self._scratch = bytearray(SCRATCH)
        self._body: bytearray | None = None
        self._filled = 0
        loop.add_reader(self._fd, self._on_readable)

    @property
    def pending_bytes(self) -> int:
        """Bytes handed to ``send`` that the socket has not taken yet."""
        return sum(len(v) for v in self._out)

    def send(self, parts: Sequence[Any]) -> None:
        """Queues one frame (its parts are kept, not copied, until written)."""
        if self._closed:
            raise BrokenPipeError("the run pipe is closed")
        views = _views(parts)
        self._out.append(memoryview(LENGTH.pack(sum(len(v) for v in views))))
        self._out.extend(views)
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                sent = self._sock.sendmsg(list(self._out)[:64])
                _advance(self._out, sent)
        except BlockingIOError:
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._flush)
            return
        except OSError as exc:
            self._close(exc)
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        sock = self._sock
        try:
            while True:
                if self._body is not None:  # a frame of known length: straight into it
                    n = sock.recv_into(memoryview(self._body)[self._filled :])
                    if n == 0:
                        raise EOFError("the forward process closed the run pipe")
                    self._filled += n
                    if self._filled == len(self._body):
                        body, self._body = self._body, None
                        self._on_frame(body)
                    continue
                n = sock.recv_into(self._scratch)
                if n == 0:
                    raise EOFError("the forward process closed the run pipe")
                self._parse(memoryview(self._scratch)[:n])
        except BlockingIOError:
            return
        except (OSError, EOFError) as exc:
            self._close(exc)

    def _parse(self, data: memoryview) -> None:
        """Splits bytes read into the scratch buffer into frames (and the start of one)."""
        while data:
            if self._body is None:
                take = min(LENGTH.size - self._head_filled, len(data))
                self._head[self._head_filled : self._head_filled + take] = data[:take]
                self._head_filled += take
                data = data[take:]
                if self._head_filled < LENGTH.size:
                    return
                self._head_filled = 0
                self._body, self._filled = bytearray(LENGTH.unpack(self._head)[0]), 0
            take = min(len(self._body) - self._filled, len(data))
            self._body[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self._on_frame(body)

    def _close(self, exc: BaseException) -> None:
        if not self._closed:
            self.detach()
            self._on_closed(exc)

    def detach(self) -> None:
        """Stops reading and writing (on the event loop)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
            self._out.clear()

    def close(self) -> None:
        self._sock.close()


def send_frame(sock: socket.socket, parts: Sequence[Any]) -> None:
    """Writes one frame on a blocking socket (the forward process's end)."""
    views = deque(_views(parts))
    views.appendleft(memoryview(LENGTH.pack(sum(len(v) for v in views))))
    while views:
        _advance(views, sock.sendmsg(list(views)[:64]))


class FrameReceiver:
    """Receives frames on a blocking socket into one reused, growing buffer."""

    def __init__(self, sock: socket.socket, size: int = 1 << 20) -> None:
        self._sock = sock
        self._buffer = bytearray(size)
        self._head = bytearray(LENGTH.size)

    def _fill(self, view: memoryview) -> None:
        while view:
            n = self._sock.recv_into(view)
            if n == 0:
                raise EOFError("the run pipe is closed")
            view = view[n:]

    def receive(self) -> memoryview:
        """The next frame: a view of the buffer, valid until the next call."""
        self._fill(memoryview(self._head))
        (size,) = LENGTH.unpack(self._head)
        if size > len(self._buffer):
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        self._fill(view)
        return view
