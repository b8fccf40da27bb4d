"""The forward pass in a process of its own (``server.executor: process``).

With ``executor: thread`` (the default) forward passes run on the device
thread of the serving process and share its GIL with the event loop: while
the event loop holds the GIL (parsing, encoding, socket writes), the device
thread waits for it between two forward passes, and the forward pass loses
that time. With ``executor: process`` the modules live in a child process
that does nothing but load them and run forward passes on its own GIL; the
event loop of the serving process picks the batches (scheduler, priorities,
deadlines: ``loop_dispatcher``) and ships each one over a pipe.

Costs: each batch's inputs and outputs cross a socket pair as raw array
frames (``wire``, no pickle; ``pipe``: frames of any size, written by the
event loop as the socket drains), and torch is imported in two processes. The child ignores SIGINT and SIGTERM: the serving process
drains first and then closes it; it exits by itself when the parent's pipes
close (the parent died).

This module is the serving process's side; the child's is ``forward_child``,
and their control messages (load, warm, unload) are ``control``'s types.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.control import Failed, Load, Loaded, Reply, Request, Unload, Warm
from modelfleet.runtime.errors import (
    ForwardProcessDied,
    ModelLoadError,
    remote_failure,
)
from modelfleet.runtime.forward_child import child_main
from modelfleet.runtime.pipe import LoopPipe
from modelfleet.runtime.protocol import Array
from modelfleet.runtime.wire import batch_parts, decode_answer

log = logging.getLogger("modelfleet.runtime")


class RemoteError(Exception):
    """An exception the module raised in the forward process (its text, re-raised here)."""


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A module loaded in the forward process: the handle a batch names."""

    handle: int
    key: tuple[str, str]
    memory_bytes: int
    process: ForwardProcess


Done = Callable[[list[Array] | None, Exception | None, float], None]
"""Called with (outputs, error, forward seconds) when a submitted batch is done."""

PIPELINE_DEPTH = 2
"""Batches handed to the child and not yet answered: while it runs one, the
next waits in the pipe, so the child never waits for this process's GIL."""


class _Lane:
    """One run pipe to the child and the batches sent on it: the child answers them
    in order, on the same pipe."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_closed: Callable[[BaseException], None],
    ) -> None:
        self.inflight: deque[Done] = deque()
        self._lock = threading.Lock()
        self.pipe = LoopPipe(sock, loop, self._on_answer, on_closed)

    def send(self, handle: int, arrays: Sequence[Array], done: Done) -> None:
        """Never blocks: what the socket does not take now, the event loop writes later
        (``OSError`` when the child is gone)."""
        with self._lock:
            self.inflight.append(done)
        self.pipe.send(batch_parts(handle, arrays))

    def _on_answer(self, frame: bytearray) -> None:
        """On the event loop: one answer from the child, for the oldest batch."""
        outputs, failure, seconds = decode_answer(frame)
        with self._lock:
            done = self.inflight.popleft()
        if failure is None:
            done(outputs, None, seconds)
        else:
            served, message = failure
            done(None, remote_failure(message) if served else RemoteError(message), seconds)

    def take_all(self) -> list[Done]:
        with self._lock:
            waiting = list(self.inflight)
            self.inflight.clear()
        return waiting


class ForwardProcess:
    """The serving process's side of the child.

    ``submit`` (on the event loop) sends a batch without waiting; the event
    loop reads the answers as they arrive (the pipe is one of its readers, so
    an answer wakes it directly) and calls each batch's ``done`` in order.
    ``submit(..., express=True)`` sends one on a second pipe, which a second
    thread of the child serves beside the batch in progress (the express lane:
    one batch at a time).
    ``load``/``unload``/``warm`` block (call them from an executor); the child
    does them on a thread of its own, so they do not stop the forward passes
    of the models already serving.
    """

    def __init__(
        self,
        device: str,
        *,
        torch_threads: int | None,
        cpus: set[int] | None,
        loop: asyncio.AbstractEventLoop,
        retain_mb: int = 0,
        nice: int = 0,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        run_sock, run_child = socket.socketpair()
        express_sock, express_child = socket.socketpair()
        self._control, control_child = ctx.Pipe()
        self._control_lock = threading.Lock()
        self._handles = itertools.count(1)
        self._process = ctx.Process(
            target=child_main,
            args=(
                run_child,
                control_child,
                device,
                torch_threads,
                cpus,
                retain_mb,
                nice,
                express_child,
            ),
            name="modelfleet-forward",
            daemon=True,
        )
        self._process.start()
        run_child.close()
        express_child.close()
        control_child.close()
        self.died: str | None = None
        """Why the child is gone, once it is."""
        self._closing_for_good = False
        self._detached = False
        self._loop = loop
        self._run = _Lane(run_sock, loop, self._on_pipe_closed)
        self._express = _Lane(express_sock, loop, self._on_pipe_closed)
        log.info("forward process started (pid %d)", self._process.pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        if self.died is None and not self._process.is_alive():
            self._mark_dead()
        return self.died is None

    def _mark_dead(self) -> ForwardProcessDied:
        if self.died is None:
            self._process.join(timeout=0.5)
            code = self._process.exitcode
            how = (
                "exit status unknown" if code is None
                else f"killed by signal {-code}" if code < 0
                else f"exit {code}"
            )  # fmt: skip
            self.died = f"the forward process (pid {self._process.pid}) is gone ({how})"
            log.error("%s: every model in it is unavailable", self.died)
        return ForwardProcessDied(self.died)

    def _control_call(self, message: Request) -> Reply:
        """Sends one control request and waits for its reply; raises ``ModelLoadError``
        with the child's reason when it failed."""
        with self._control_lock:
            try:
                self._control.send(message)
                reply = self._control.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise self._mark_dead() from exc
        if isinstance(reply, Failed):
            raise ModelLoadError(reply.message)
        if not isinstance(reply, Reply):
            raise ModelLoadError(f"the forward process answered {type(message).__name__} "
                                 f"with {reply!r:.100}")  # fmt: skip
        return reply

    def load(self, config: ModelConfig, store: str) -> RemoteModel:
        """Loads (and, with ``optimize``, traces) the module in the child;
        raises ``ModelLoadError`` with the child's message."""
        handle = next(self._handles)
        try:
            reply = self._control_call(Load(handle, config.model_dump(mode="json"), store))
        except ForwardProcessDied as exc:
            raise ModelLoadError(exc.message) from exc
        if not isinstance(reply, Loaded):
            raise ModelLoadError(f"the forward process answered Load with {reply!r}")
        return RemoteModel(handle, config.key, reply.memory_bytes, self)

    def unload(self, handle: int) -> None:
        """Frees a module in the child (and the CUDA cache there); a dead child holds nothing."""
        if self.died is None:
            try:
                self._control_call(Unload(handle))
            except ForwardProcessDied:
                pass

    def warm(self, handle: int, arrays: Sequence[Array]) -> None:
        """A warm-up forward pass in the child; raises ``ModelLoadError`` on failure."""
        self._control_call(Warm(handle, list(arrays)))

    def has_room(self) -> bool:
        """Whether another batch may be submitted now (a dead child takes any: it fails them)."""
        return self.died is not None or len(self._run.inflight) < PIPELINE_DEPTH

    def busy(self) -> bool:
        """Whether a batch is in the child now (one running, perhaps one waiting)."""
        return self.died is None and len(self._run.inflight) > 0

    def express_free(self) -> bool:
        """Whether the express lane can take a batch now (none of its own in the child)."""
        return self.died is None and not self._express.inflight

    def submit(
        self, handle: int, arrays: Sequence[Array], done: Done, *, express: bool = False
    ) -> None:
        """Sends one batch to the child (``express``: on the express lane, run beside
        the batch in progress); ``done`` is called on the event loop."""
        if self.died is not None:
            done(None, ForwardProcessDied(self.died), 0.0)
            return
        try:
            (self._express if express else self._run).send(handle, arrays, done)
        except OSError as exc:  # the child is gone (or we closed)
            self._fail_inflight(self._mark_dead(), exc)

    def _on_pipe_closed(self, exc: BaseException) -> None:
        self._detached = True
        if not self._closing_for_good:
            self._fail_inflight(self._mark_dead(), exc)

    def _fail_inflight(self, error: ForwardProcessDied, cause: BaseException) -> None:
        waiting = self._run.take_all() + self._express.take_all()
        if waiting:
            log.error("%s: %d batch(es) lost (%s)", error.message, len(waiting), cause)
        for done in waiting:
            done(None, error, 0.0)

    def detach(self) -> None:
        """Stops reading answers (on the event loop; before ``close``)."""
        if not self._detached:
            self._detached = True
            self._run.pipe.detach()
            self._express.pipe.detach()

    def close(self, timeout: float = 5.0) -> None:
        """Closes the pipes (the child exits on EOF) and waits; kills it if it lingers.
        Call ``detach`` on the event loop first."""
        self._closing_for_good = True
        self._run.pipe.close()
        self._express.pipe.close()
        self._control.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
