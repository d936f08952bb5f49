"""Ctrl-C that waits for the end of a checkpoint save.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside library code that catches broad
exceptions or leaves half-built state (OmegaConf turned one into an AttributeError while the checkpoint's
config was being converted), and between two checkpoint files of one epoch (latest.pt written, best.pt not).
Inside `deferred_sigint()` a SIGINT is only recorded; it is raised as KeyboardInterrupt once the block ends."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Runs the block to its end, then raises KeyboardInterrupt if SIGINT arrived meanwhile. Only where the
    default handler is installed and on the main thread (the only thread that may set handlers); elsewhere
    (a handler of the embedding program, a worker thread) the block runs unchanged."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
