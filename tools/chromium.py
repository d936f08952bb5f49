"""Headless Chromium for tests and docs: screenshots, DOM dumps and page text of a (loopback) URL.

Used by tests/test_tensorboard_served.py and tools/tensorboard_screenshot.py; not part of the installed
package (a user viewing runs needs only a browser). Needs the `chromium` binary:
apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumError(RuntimeError):
    pass


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
        raise ChromiumError("chromium is not installed (apt-get install -y chromium)")
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
                raise ChromiumError(f"chromium did not finish within {timeout:g} s: {' '.join(cmd)}") from exc
            if result.returncode != 0:
                raise ChromiumError(f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}")
            if "--dump-dom" in cmd:
                dom = result.stdout
    if screenshot is not None and not Path(screenshot).is_file():
        raise ChromiumError(f"chromium wrote no screenshot to {screenshot}")
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
                    raise ChromiumError(self._replies[-1]["error"]["message"])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChromiumError(f"chromium did not answer {method} within {timeout:g} s")
                self._lock.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise ChromiumError(f"chromium {method} failed: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except ChromiumError:
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
        raise ChromiumError("chromium is not installed (apt-get install -y chromium)")
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
