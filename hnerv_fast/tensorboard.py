"""Start TensorBoard on loopback to view runs.

    python -m hnerv_fast.tensorboard [--logdir output] [--port 0]

TensorBoard only listens on 127.0.0.1 (port 0 = a free port chosen by the OS). The URL is printed once
the server answers HTTP; the process runs until Ctrl-C and is always terminated on the way out.
(The README screenshot is taken by `python -m tools.tensorboard_screenshot`, outside the package.)

Library use (the tests do this)::

    with tensorboard_server("output/patch_dual") as url:
        runs = get_json(url, "data/runs")

`start_tensorboard(logdir, port=None) -> (process, url)` is the non-context version: the caller must
`stop_tensorboard(process)`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
_URL_RE = re.compile(r"(http://127\.0\.0\.1:\d+/)")


class TensorBoardError(RuntimeError):
    pass


class _OutputPump(threading.Thread):
    """Drains a child's output (so it never blocks on a full pipe), keeps the tail, spots the URL."""

    def __init__(self, stream, echo: bool = False):
        super().__init__(name="tensorboard-output", daemon=True)
        self.stream, self.echo = stream, echo
        self.lines: deque[str] = deque(maxlen=200)
        self.url: str | None = None
        self.url_seen = threading.Event()

    def run(self) -> None:
        for raw in iter(self.stream.readline, ""):
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.url is None:
                match = _URL_RE.search(line)
                if match:
                    self.url = match.group(1)
                    self.url_seen.set()
            if self.echo:
                print(line, file=sys.stderr, flush=True)
        self.url_seen.set()  # EOF: the process is gone, stop waiting

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def get_json(url: str, path: str, timeout: float = 10.0):
    """GET `url` + `path` (e.g. "data/plugin/scalars/tags") and decode the JSON answer."""
    with urllib.request.urlopen(url.rstrip("/") + "/" + path.lstrip("/"), timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def start_tensorboard(logdir: str | os.PathLike, port: int | None = None, *, timeout: float = 60.0,
                      reload_interval: float = 5.0, echo: bool = False,
                      extra_args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start TensorBoard for `logdir` on 127.0.0.1 and wait (at most `timeout` s) until it answers HTTP.

    port None or 0: a free port picked by the OS. Returns (process, "http://127.0.0.1:PORT/").
    The process is terminated if it does not become ready in time; otherwise the caller owns it
    (`stop_tensorboard`, or use `tensorboard_server` which always stops it).
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise TensorBoardError(f"logdir {str(logdir)!r} is not a directory")
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST,
           "--port", str(port or 0), "--load_fast", "false", "--reload_interval", str(reload_interval),
           *(extra_args or [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    pump = _OutputPump(process.stdout, echo=echo)
    pump.start()
    process._hnerv_pump = pump  # type: ignore[attr-defined]  # output tail for error messages
    deadline = time.monotonic() + timeout
    try:
        pump.url_seen.wait(max(0.0, deadline - time.monotonic()))
        url = pump.url
        if url is None:
            state = f"exited with code {process.poll()}" if process.poll() is not None else f"no URL within {timeout:g} s"
            raise TensorBoardError(f"TensorBoard did not start ({state}):\n{pump.tail()}")
        while not _http_ok(url + "data/environment"):
            if process.poll() is not None:
                raise TensorBoardError(f"TensorBoard exited with code {process.returncode}:\n{pump.tail()}")
            if time.monotonic() > deadline:
                raise TensorBoardError(f"TensorBoard at {url} did not answer within {timeout:g} s:\n{pump.tail()}")
            time.sleep(0.1)
    except BaseException:
        stop_tensorboard(process)
        raise
    return process, url


def stop_tensorboard(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate (then kill) the TensorBoard process started by `start_tensorboard`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    pump = getattr(process, "_hnerv_pump", None)
    if pump is not None:
        pump.join(timeout)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def tensorboard_server(logdir: str | os.PathLike, port: int | None = None, **kwargs) -> Iterator[str]:
    """`with tensorboard_server(logdir) as url:` -- the process is terminated on any exit."""
    process, url = start_tensorboard(logdir, port, **kwargs)
    try:
        yield url
    finally:
        stop_tensorboard(process)


def wait_for_data(url: str, predicate=None, path: str = "data/plugin/scalars/tags", timeout: float = 60.0):
    """Poll `path` until `predicate(json)` holds (default: non-empty); TensorBoard loads runs in the background."""
    predicate = predicate or bool
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = get_json(url, path)
            if predicate(last):
                return last
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TensorBoardError(f"{url}{path} not ready within {timeout:g} s; last answer: {last!r}")
        time.sleep(0.25)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.tensorboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default="output", help="directory holding runs (default: output)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for TensorBoard to answer")
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) stops us the way Ctrl-C does: through the `finally` that stops TensorBoard, which
    # runs in its own session and would otherwise outlive us
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        process, url = start_tensorboard(args.logdir, args.port, timeout=args.timeout, echo=True)
    except TensorBoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"TensorBoard for {args.logdir}: {url}  (Ctrl-C to stop)", flush=True)
        process.wait()
        print(f"TensorBoard exited with code {process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_tensorboard(process)


if __name__ == "__main__":
    sys.exit(main())
