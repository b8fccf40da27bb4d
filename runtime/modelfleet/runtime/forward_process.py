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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from modelfleet.runtime.affinity import pin_this_thread
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.errors import ModelLoadError, ServingError
from modelfleet.runtime.malloc import retain_freed_memory
from modelfleet.runtime.pipe import FrameReceiver, LoopPipe, send_frame
from modelfleet.runtime.protocol import Array
from modelfleet.runtime.wire import (
    answer_parts,
    batch_parts,
    decode_answer,
    decode_batch,
    encode_failure,
)

log = logging.getLogger("modelfleet.runtime")


class RemoteError(Exception):
    """An exception the module raised in the forward process (its text, re-raised here)."""


class ForwardProcessDied(ServingError):
    """The child process that runs the forward passes is gone (a crash, an OOM kill)."""

    status = 500


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A module loaded in the forward process: the handle a batch names."""

    handle: int
    key: tuple[str, str]
    memory_bytes: int
    process: ForwardProcess

    def warm(self, arrays: Sequence[Array]) -> None:
        """One warm-up forward pass (blocks: call it from an executor)."""
        self.process.warm(self.handle, arrays)


Done = Callable[[list[Array] | None, Exception | None, float], None]
"""Called with (outputs, error, forward seconds) when a submitted batch is done."""

PIPELINE_DEPTH = 2
"""Batches handed to the child and not yet answered: while it runs one, the
next waits in the pipe, so the child never waits for this process's GIL."""


SPIN_S = 0.002
"""With ``device_cpus`` (the child has CPUs of its own) it polls its pipe this long
after each batch before it blocks: a sleeping CPU takes tens to hundreds of
microseconds to wake on a virtual machine, longer than the next request takes
to arrive under load. Without ``device_cpus`` it never spins (the CPU is shared)."""


class ForwardProcess:
    """The serving process's side of the child.

    ``submit`` (on the event loop) sends a batch without waiting; the event
    loop reads the answers as they arrive (the pipe is one of its readers, so
    an answer wakes it directly) and calls each batch's ``done`` in order.
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
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._run_sock, run_child = socket.socketpair()
        self._control, control_child = ctx.Pipe()
        self._control_lock = threading.Lock()
        self._handles = itertools.count(1)
        self._process = ctx.Process(
            target=child_main,
            args=(run_child, control_child, device, torch_threads, cpus, retain_mb),
            name="modelfleet-forward",
            daemon=True,
        )
        self._process.start()
        run_child.close()
        control_child.close()
        self.died: str | None = None
        """Why the child is gone, once it is."""
        self._closing_for_good = False
        self._detached = False
        self._inflight: deque[Done] = deque()
        self._inflight_lock = threading.Lock()
        self._loop = loop
        self._run = LoopPipe(self._run_sock, loop, self._on_answer, self._on_pipe_closed)
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

    def _control_call(self, message: tuple[Any, ...]) -> Any:
        with self._control_lock:
            try:
                self._control.send(message)
                status, payload = self._control.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise self._mark_dead() from exc
        if status == "error":
            raise ModelLoadError(payload)
        return payload

    def load(self, config: ModelConfig, store: str) -> RemoteModel:
        """Loads (and, with ``optimize``, traces) the module in the child;
        raises ``ModelLoadError`` with the child's message."""
        handle = next(self._handles)
        try:
            measured = self._control_call(("load", handle, config.model_dump(mode="json"), store))
        except ForwardProcessDied as exc:
            raise ModelLoadError(exc.message) from exc
        return RemoteModel(handle, config.key, int(measured), self)

    def unload(self, handle: int) -> None:
        """Frees a module in the child (and the CUDA cache there); a dead child holds nothing."""
        if self.died is None:
            try:
                self._control_call(("unload", handle))
            except ForwardProcessDied:
                pass

    def warm(self, handle: int, arrays: Sequence[Array]) -> None:
        """A warm-up forward pass in the child; raises ``ModelLoadError`` on failure."""
        self._control_call(("warm", handle, list(arrays)))

    def has_room(self) -> bool:
        """Whether another batch may be submitted now (a dead child takes any: it fails them)."""
        return self.died is not None or len(self._inflight) < PIPELINE_DEPTH

    def submit(self, handle: int, arrays: Sequence[Array], done: Done) -> None:
        """Sends one batch to the child; ``done`` is called on the event loop."""
        if self.died is not None:
            done(None, ForwardProcessDied(self.died), 0.0)
            return
        with self._inflight_lock:
            self._inflight.append(done)
        try:  # never blocks: what the socket does not take now, the event loop writes later
            self._run.send(batch_parts(handle, arrays))
        except OSError as exc:  # the child is gone (or we closed)
            self._fail_inflight(self._mark_dead(), exc)

    def _on_answer(self, frame: bytearray) -> None:
        """On the event loop: one answer from the child, for the oldest batch."""
        from modelfleet.runtime.device import ModelFailure

        outputs, failure, seconds = decode_answer(frame)
        with self._inflight_lock:
            done = self._inflight.popleft()
        if failure is None:
            done(outputs, None, seconds)
        else:
            served, message = failure
            done(None, ModelFailure(message) if served else RemoteError(message), seconds)

    def _on_pipe_closed(self, exc: BaseException) -> None:
        self._detached = True
        if not self._closing_for_good:
            self._fail_inflight(self._mark_dead(), exc)

    def _fail_inflight(self, error: ForwardProcessDied, cause: BaseException) -> None:
        with self._inflight_lock:
            waiting = list(self._inflight)
            self._inflight.clear()
        if waiting:
            log.error("%s: %d batch(es) lost (%s)", error.message, len(waiting), cause)
        for done in waiting:
            done(None, error, 0.0)

    def detach(self) -> None:
        """Stops reading answers (on the event loop; before ``close``)."""
        if not self._detached:
            self._detached = True
            self._run.detach()

    def close(self, timeout: float = 5.0) -> None:
        """Closes the pipes (the child exits on EOF) and waits; kills it if it lingers.
        Call ``detach`` on the event loop first."""
        self._closing_for_good = True
        self._run.close()
        self._control.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)


# -- the child ------------------------------------------------------------------------


def child_main(
    run: socket.socket,
    control: Connection,
    device_name: str,
    torch_threads: int | None,
    cpus: set[int] | None,
    retain_mb: int = 0,
) -> None:
    """Entry point of the forward process: forward passes on the main thread,
    loads and unloads on a second one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    retain_freed_memory(retain_mb)  # before torch allocates anything
    others: set[int] | None = None
    if cpus:
        others = os.sched_getaffinity(0) - cpus or None
        os.sched_setaffinity(0, cpus)
    import torch

    from modelfleet.runtime.device import forward

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = torch.device(device_name)
    modules: dict[int, tuple[torch.nn.Module, ModelConfig]] = {}
    lock = threading.Lock()
    threading.Thread(  # loads and warm-ups off the device's CPUs: serving goes on there
        target=_serve_control, args=(control, device, modules, lock, others), daemon=True
    ).start()
    spin_s = SPIN_S if cpus else 0.0
    poller = select.poll()
    poller.register(run.fileno(), select.POLLIN)
    receiver = FrameReceiver(run)  # batches arrive into its buffer: writable views
    while True:
        try:
            if spin_s:  # a CPU of its own: poll a while before sleeping (no wake-up cost)
                until = time.perf_counter() + spin_s
                while not poller.poll(0) and time.perf_counter() < until:
                    pass
            frame = receiver.receive()
        except (EOFError, OSError):
            return
        started = time.perf_counter()
        try:
            handle, arrays = decode_batch(frame)
            with lock:
                entry = modules.get(handle)
            if entry is None:
                raise LookupError(f"no module {handle} is loaded in the forward process")
            module, config = entry
            outputs = forward(module, arrays, config.outputs, device)
            reply = answer_parts(outputs, time.perf_counter() - started)
        except Exception as exc:
            served = isinstance(exc, ServingError)
            reply = [encode_failure(served, _describe(exc), time.perf_counter() - started)]
        try:
            send_frame(run, reply)
        except (EOFError, OSError):
            return


def _serve_control(
    control: Connection,
    device: Any,
    modules: dict[int, Any],
    lock: threading.Lock,
    cpus: set[int] | None,
) -> None:
    import torch

    from modelfleet.runtime.device import forward
    from modelfleet.runtime.loader import load_module, module_bytes

    if cpus:
        pin_this_thread(cpus)
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            os._exit(0)  # the serving process is gone: nothing left to serve
        try:
            if message[0] == "load":
                _, handle, raw, store = message
                config = ModelConfig.model_validate(raw)
                cuda = device.type == "cuda"
                before = torch.cuda.memory_allocated(device) if cuda else 0
                module = load_module(config, store, device)
                used = torch.cuda.memory_allocated(device) - before if cuda else 0
                with lock:
                    modules[handle] = (module, config)
                reply: tuple[str, Any] = ("ok", max(int(used), module_bytes(module)))
            elif message[0] == "warm":
                _, handle, arrays = message
                with lock:
                    module, config = modules[handle]
                forward(module, arrays, config.outputs, device)
                reply = ("ok", None)
            else:
                with lock:
                    modules.pop(message[1], None)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                reply = ("ok", 0)
        except Exception as exc:
            reply = ("error", _describe(exc))
        try:
            control.send(reply)
        except (EOFError, OSError):
            os._exit(0)


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return message
    return str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
