"""The forward process itself (``executor: process``): the child's side of its pipes.

Forward passes run on its main thread, one batch after the other as they come
through the run pipe; loads, warm-ups and unloads (``control``) on a second
thread, so that they do not stop the forward passes of the models already
serving. A third thread serves the express pipe: the serving process sends a
batch there when it outranks the batch in progress, which it then runs beside
instead of after. torch is imported only once the child has set its CPUs and its
allocator (before torch allocates anything).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from modelfleet.runtime.affinity import lower_this_thread, pin_this_thread
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.control import Done, Failed, Load, Loaded, Reply, Unload, Warm
from modelfleet.runtime.errors import ModelLoadError, out_of_memory_error
from modelfleet.runtime.malloc import retain_freed_memory
from modelfleet.runtime.pipe import FrameReceiver, send_frame
from modelfleet.runtime.wire import answer_parts, decode_batch, encode_failure
from modelfleet.serving import heap
from modelfleet.serving.errors import ServingError

SPIN_S = 0.002
"""With ``device_cpus`` (the child has CPUs of its own) it polls its pipe this long
after each batch before it blocks: a sleeping CPU takes tens to hundreds of
microseconds to wake on a virtual machine, longer than the next request takes
to arrive under load. Without ``device_cpus`` it never spins (the CPU is shared)."""


def child_main(
    run: socket.socket,
    control: Connection,
    device_name: str,
    torch_threads: int | None,
    cpus: set[int] | None,
    retain_mb: int = 0,
    nice: int = 0,
    express: socket.socket | None = None,
) -> None:
    """Entry point of the forward process: forward passes on the main thread,
    loads and unloads on a second one, express batches on a third."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    retain_freed_memory(retain_mb)  # before torch allocates anything
    modules: dict[int, tuple[Any, ModelConfig]] = {}
    lock = threading.Lock()
    if express is not None:  # started before the nice below: it keeps the loop's priority
        threading.Thread(
            target=_serve_express, args=(express, device_name, modules, lock), daemon=True
        ).start()
    lower_this_thread(nice)  # before torch starts threads: they inherit it
    others: set[int] | None = None
    if cpus:
        others = os.sched_getaffinity(0) - cpus or None
        os.sched_setaffinity(0, cpus)
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = torch.device(device_name)
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
        try:
            send_frame(run, _run_batch(frame, device, modules, lock))
        except (EOFError, OSError):
            return
        heap.refreeze()


def _run_batch(frame: Any, device: Any, modules: dict[int, Any], lock: threading.Lock) -> list[Any]:
    """One batch frame's forward pass: the answer's parts (a failure's, if it failed)."""
    import torch

    from modelfleet.runtime.forward import forward

    started = time.perf_counter()
    try:
        handle, arrays = decode_batch(frame)
        with lock:
            entry = modules.get(handle)
        if entry is None:
            raise LookupError(f"no module {handle} is loaded in the forward process")
        module, config = entry
        try:
            outputs = forward(module, arrays, config.outputs, device)
        except torch.cuda.OutOfMemoryError as exc:  # that batch fails (503), nothing else
            torch.cuda.empty_cache()
            rows = len(arrays[0]) if arrays else 0
            raise out_of_memory_error(config.key, rows) from exc
        return answer_parts(outputs, time.perf_counter() - started)
    except Exception as exc:
        served = isinstance(exc, ServingError)
        return [encode_failure(served, _describe(exc), time.perf_counter() - started)]


def _serve_express(
    express: socket.socket, device_name: str, modules: dict[int, Any], lock: threading.Lock
) -> None:
    """The express thread: each batch of the express pipe, beside the main thread's.
    It runs at the event loop's CPU priority, not ``forward_nice`` below it: its batches
    are of a higher class than the one running, and at nice 10 it got a ninth of the
    CPU while the loop was busy refusing a surge, so the high class waited anyway. Its
    first frame comes after a load, so torch is imported (by the main thread) by then."""
    receiver = FrameReceiver(express)  # a buffer of its own: the main thread's is in use
    device: Any = None
    while True:
        try:
            frame = receiver.receive()
            if device is None:
                import torch

                device = torch.device(device_name)
            send_frame(express, _run_batch(frame, device, modules, lock))
        except (EOFError, OSError):
            return


def _serve_control(
    control: Connection,
    device: Any,
    modules: dict[int, Any],
    lock: threading.Lock,
    cpus: set[int] | None,
) -> None:
    """The control thread: answers each request of the serving process in turn."""
    import torch

    from modelfleet.runtime.forward import forward
    from modelfleet.runtime.loader import load_module, module_bytes

    if cpus:
        pin_this_thread(cpus)
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            os._exit(0)  # the serving process is gone: nothing left to serve
        reply: Reply
        try:
            match message:
                case Load(handle=handle, config=raw, store=store):
                    config = ModelConfig.model_validate(raw)
                    cuda = device.type == "cuda"
                    before = torch.cuda.memory_allocated(device) if cuda else 0
                    module = load_module(config, store, device)
                    used = torch.cuda.memory_allocated(device) - before if cuda else 0
                    with lock:
                        modules[handle] = (module, config)
                    heap.settle()  # torch and the module out of the full collections' walk
                    reply = Loaded(max(int(used), module_bytes(module)))
                case Warm(handle=handle, arrays=arrays):
                    with lock:
                        module, config = modules[handle]
                    forward(module, arrays, config.outputs, device)
                    reply = Done()
                case Unload(handle=handle):
                    with lock:
                        modules.pop(handle, None)
                    heap.release()  # its cycles may be freed; the main thread refreezes
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    reply = Done()
                case _:
                    reply = Failed(f"unknown control message: {message!r:.100}")
        except Exception as exc:
            reply = Failed(_describe(exc))
        try:
            control.send(reply)
        except (EOFError, OSError):
            os._exit(0)


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return message
    return str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
