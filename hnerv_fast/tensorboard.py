"""Start TensorBoard on loopback, and take headless-Chromium screenshots of it.

    python -m hnerv_fast.tensorboard [--logdir output] [--port 0]
    python -m hnerv_fast.tensorboard --logdir RUN --screenshot docs/tensorboard.png   # then exits

TensorBoard only listens on 127.0.0.1 (port 0 = a free port chosen by the OS). The URL is printed once
the server answers HTTP; the process runs until Ctrl-C and is always terminated on the way out.

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
import shutil
import signal
import subprocess
import sys
import tempfile
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


# --------------------------------------------------------------------------- headless Chromium
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# CI: apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_capture(url: str, *, screenshot: str | os.PathLike | None = None, dump_dom: bool = False,
                     window_size: tuple[int, int] = (1400, 1000), virtual_time_budget_ms: int = 15000,
                     timeout: float = 90.0, chromium: str | None = None) -> str:
    """Load `url` in headless Chromium; write a PNG to `screenshot` and/or return the DOM (`dump_dom`).

    Only the given (loopback) URL is loaded: background networking, component updates, sync and QUIC
    are off, and a throwaway profile directory is used.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise TensorBoardError("chromium is not installed (apt-get install -y chromium)")
    if screenshot is None and not dump_dom:
        raise ValueError("nothing to do: pass screenshot=... and/or dump_dom=True")
    dom = ""
    with tempfile.TemporaryDirectory(prefix="hnerv-chromium-") as profile:
        base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--window-size={window_size[0]},{window_size[1]}",
                f"--virtual-time-budget={virtual_time_budget_ms}"]
        runs = []
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            runs.append(base + [f"--screenshot={Path(screenshot).resolve()}", url])
        if dump_dom:
            runs.append(base + ["--dump-dom", url])
        for cmd in runs:
            try:
                result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                        timeout=timeout, cwd=profile)
            except subprocess.TimeoutExpired as exc:
                raise TensorBoardError(f"chromium did not finish within {timeout:g} s: {' '.join(cmd)}") from exc
            if result.returncode != 0:
                raise TensorBoardError(f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}")
            if "--dump-dom" in cmd:
                dom = result.stdout
    if screenshot is not None and not Path(screenshot).is_file():
        raise TensorBoardError(f"chromium wrote no screenshot to {screenshot}")
    return dom


# `--dump-dom` serializes the light DOM only; TensorBoard's dashboards (Polymer) render inside shadow
# roots, so the chart and category titles are not in it. This script walks the shadow roots too.
_DEEP_TEXT_JS = r"""(() => {
  const out = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) out.push(child.textContent);
      else if (child.nodeType === Node.ELEMENT_NODE && !['STYLE', 'SCRIPT', 'TEMPLATE'].includes(child.tagName)) walk(child);
      else if (child.nodeType === Node.DOCUMENT_FRAGMENT_NODE) walk(child);
    }
  };
  walk(document.documentElement);
  return out.join(' ').replace(/\s+/g, ' ');
})()"""


class _DevToolsPipe:
    """Chrome DevTools Protocol over `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies out).

    No port is opened and no extra package is needed; messages are JSON terminated by a NUL byte.
    """

    def __init__(self, cmd: list[str], cwd: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def _setup_fds():  # runs in the child before exec: put the pipe ends on fds 3 and 4
            import fcntl
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(cmd + ["--remote-debugging-pipe"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                                        preexec_fn=_setup_fds, pass_fds=(3, 4), start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="chromium-cdp", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
        with self._lock:
            self._replies[-1] = {"error": {"message": "chromium closed the DevTools pipe"}}
            self._lock.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self._next_id += 1
        ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while ident not in self._replies:
                if -1 in self._replies:
                    raise TensorBoardError(self._replies[-1]["error"]["message"])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TensorBoardError(f"chromium did not answer {method} within {timeout:g} s")
                self._lock.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise TensorBoardError(f"chromium {method} failed: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except TensorBoardError:
                    pass
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            os.close(self._to_child)
            self._reader.join(5)
            os.close(self._from_child)


def chromium_page_text(url: str, expect: tuple[str, ...] = (), *, timeout: float = 60.0,
                       window_size: tuple[int, int] = (1400, 1000), chromium: str | None = None) -> str:
    """Visible text of `url` in headless Chromium, shadow roots included.

    Polls (real time, at most `timeout` s) until every string in `expect` is on the page, then returns
    the text; returns whatever is there at the deadline otherwise (the caller asserts).
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise TensorBoardError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="hnerv-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-extensions", "--mute-audio", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", f"--window-size={window_size[0]},{window_size[1]}", "about:blank"]
        browser = _DevToolsPipe(cmd, cwd=profile)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            browser.call("Page.navigate", {"url": url}, session)
            # with nothing to wait for, give the page a few seconds to render
            deadline = time.monotonic() + (timeout if expect else min(timeout, 5.0))
            while True:
                result = browser.call("Runtime.evaluate", {"expression": _DEEP_TEXT_JS, "returnByValue": True},
                                      session)
                text = result.get("result", {}).get("value") or ""
                if (expect and all(s in text for s in expect)) or time.monotonic() > deadline:
                    return text
                time.sleep(0.5)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.tensorboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default="output", help="directory holding runs (default: output)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for TensorBoard to answer")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="save a headless-Chromium screenshot of the Custom Scalars page and exit")
    parser.add_argument("--page", default="custom_scalars", help="dashboard for --screenshot (default custom_scalars)")
    args = parser.parse_args(argv)
    try:
        process, url = start_tensorboard(args.logdir, args.port, timeout=args.timeout,
                                         echo=args.screenshot is None)
    except TensorBoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.screenshot:
            wait_for_data(url, timeout=args.timeout)
            chromium_capture(f"{url}#{args.page}", screenshot=args.screenshot)
            print(f"screenshot of {url}#{args.page} written to {args.screenshot}")
            return 0
        print(f"TensorBoard for {args.logdir}: {url}  (Ctrl-C to stop)", flush=True)
        process.wait()
        print(f"TensorBoard exited with code {process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except TensorBoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_tensorboard(process)


if __name__ == "__main__":
    sys.exit(main())
