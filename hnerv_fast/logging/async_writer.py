"""TensorBoard writer on a background thread, fed with device tensors.

The training loop never waits for the host: `add_scalars` stacks its tensors into one vector (one
kernel), starts an asynchronous copy into pinned host memory, records a CUDA event and enqueues it.
The writer thread waits on the event, converts to floats and writes whatever has piled up in one go.
On CPU the tensors are cloned (the caller may update accumulators in place) and handled the same way.
A value may also be a callable: it runs on the writer thread once the record's tensors have arrived, for
values the host can only read after the device got there (e.g. the elapsed time between two CUDA events).

Nothing queued is lost: `close()` drains the queue and flushes; it runs on `with` exit (normal exit,
exceptions, Ctrl-C) and at interpreter exit.
"""
from __future__ import annotations

import atexit
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

_STOP = object()


@dataclass
class _Record:
    kind: str  # scalars | histogram | image | text | layout | mirror | flush
    step: int
    tags: tuple[str, ...] = ()
    payload: Any = None
    event: Any = None
    callback: Callable[[dict[str, float]], None] | None = None
    extra: dict = field(default_factory=dict)


Scalar = torch.Tensor | float | Callable[[], float]


def _split_scalars(values: Mapping[str, Scalar]):
    """(tensor tags, their values stacked into one 1-D float32 tensor or None, {tag: python float},
    {tag: callable}).

    Tensors are stacked on their device (one copy instead of many); plain numbers stay on the host,
    so they never cost a host->device copy (a synchronising one on GPU); callables wait for the writer."""
    tensors = {t: v for t, v in values.items() if isinstance(v, torch.Tensor)}
    deferred = {t: v for t, v in values.items() if callable(v)}
    plain = {t: float(v) for t, v in values.items() if t not in tensors and t not in deferred}
    stacked = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]) if tensors else None
    return tuple(tensors), stacked, plain, deferred


def _to_host(tensor: torch.Tensor):
    """Start a device->host copy without blocking; returns (host tensor, event or None)."""
    tensor = tensor.detach()
    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(tensor.device))  # the copy's stream, whatever the current device
        return host, event
    return tensor.clone(), None


class AsyncSummaryWriter:
    """Background-thread wrapper around `torch.utils.tensorboard.SummaryWriter`.

    `latest` holds the last written value of every scalar tag (host floats, for progress bars).
    `mirrors` receive every scalar batch as `mirror.log(dict, step)` on the writer thread (e.g. W&B).
    """

    def __init__(self, logdir: str, mirrors: list | None = None, max_batch: int = 256):
        self.logdir = str(logdir)
        # Opened by the first record (on the writer thread): a run that fails on bad input while its tasks
        # are built, before anything was logged, leaves no empty event file behind.
        self._writer = None
        self._mirrors = list(mirrors or [])
        self._queue: queue.Queue = queue.Queue()
        self._max_batch = max_batch
        self._error: BaseException | None = None
        self._closed = False
        self.latest: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="tensorboard-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ------------------------------------------------------------------ producer side (hot loop)
    def add_scalars(
        self,
        step: int,
        values: Mapping[str, Scalar],
        callback: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        """Queue scalar tags for `step`: device tensors, numbers, or callables returning a number (called
        on the writer thread after the tensors arrived). `callback(values_as_floats)` runs on the writer thread."""
        self._check_open()
        if not values:
            return
        tensor_tags, stacked, plain, deferred = _split_scalars(values)
        host, event = _to_host(stacked) if stacked is not None else (None, None)
        self._queue.put(_Record("scalars", step, tuple(values), (tensor_tags, host, plain, deferred), event, callback))

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self._check_open()
        host, event = _to_host(values.float().flatten())
        self._queue.put(_Record("histogram", step, (tag,), host, event))

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image [3, H, W] in [0, 1]."""
        self._check_open()
        host, event = _to_host(image.float().clamp(0, 1))
        self._queue.put(_Record("image", step, (tag,), host, event))

    def add_text(self, tag: str, text: str, step: int) -> None:
        if threading.current_thread() is self._thread:  # from a callback: write in place (also while closing)
            self._sink().add_text(tag, text, step)
            return
        self._check_open()
        self._queue.put(_Record("text", step, (tag,), text))

    def add_custom_scalars(self, layout: dict) -> None:
        self._check_open()
        self._queue.put(_Record("layout", 0, (), layout))

    def add_mirror(self, mirror) -> None:
        """Also send every later scalar batch to `mirror.log(dict, step)` (e.g. W&B), in queue order."""
        self._check_open()
        self._queue.put(_Record("mirror", 0, (), mirror))

    def flush(self) -> None:
        """Block until everything queued so far is written to disk."""
        done = threading.Event()
        self._queue.put(_Record("flush", 0, payload=done))
        while not done.wait(0.05):
            if not self._thread.is_alive():
                break
        self._check()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        atexit.unregister(self.close)
        self._check()

    def __enter__(self) -> "AsyncSummaryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception:
            if exc is None:  # do not hide the original exception behind a logging error
                raise

    def _check_open(self) -> None:
        if self._closed:  # a record put now would never be written
            raise RuntimeError("AsyncSummaryWriter used after close()")
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"TensorBoard writer thread failed: {error!r}") from error

    # ------------------------------------------------------------------------- writer thread
    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for record in batch:
                if record is _STOP:
                    stop = True
                    continue
                try:
                    self._write(record)
                except BaseException as exc:  # surfaced to the producer on its next call
                    self._error = exc

    def _write(self, r: _Record) -> None:
        if r.event is not None:
            r.event.synchronize()
        if r.kind == "flush":
            if self._writer is not None:
                self._writer.flush()
            r.payload.set()
            return
        if r.kind == "mirror":
            self._mirrors.append(r.payload)
            return
        w = self._sink()
        if r.kind == "scalars":
            tensor_tags, host, plain, deferred = r.payload
            known = dict(zip(tensor_tags, host.tolist())) if host is not None else {}
            known.update(plain)
            known.update({tag: float(fn()) for tag, fn in deferred.items()})
            floats = {tag: known[tag] for tag in r.tags}  # in the caller's order
            for tag, value in floats.items():
                w.add_scalar(tag, value, r.step)
            self.latest.update(floats)
            for mirror in self._mirrors:
                mirror.log(floats, step=r.step)
            if r.callback is not None:
                r.callback(floats)
        elif r.kind == "histogram":
            w.add_histogram(r.tags[0], r.payload, r.step)
        elif r.kind == "image":
            w.add_image(r.tags[0], r.payload, r.step)
        elif r.kind == "text":
            w.add_text(r.tags[0], r.payload, r.step)
        elif r.kind == "layout":
            w.add_custom_scalars(r.payload)

    def _sink(self):
        """The SummaryWriter, created on first use (writer thread, or a callback running on it)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.logdir)
        return self._writer
