"""A headless Chromium driven over the DevTools protocol (websockets, no Playwright): the system's browser
(Debian's `chromium`), never a downloaded one, with a fresh profile that is removed on close.

    with Chromium() as browser:
        browser.open("http://127.0.0.1:8080/")
        browser.evaluate("document.title")
        browser.screenshot(Path("page.png"))
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


class BrowserError(Exception):
    """Chromium could not be started or did not answer."""


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    return shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)


class Chromium:
    """One headless Chromium with one page, commanded over the DevTools protocol."""

    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 30.0) -> None:
        path = chromium_path()
        if path is None:
            raise BrowserError("Chromium is not installed (Debian: apt-get install chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="anger-stream-chromium-"))
        self.proc = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self._closing = contextlib.ExitStack()  # the DevTools connection
        try:
            port = self._devtools_port(timeout)
            self.ws = self._closing.enter_context(
                connect(self._page_socket(port, timeout), max_size=None, open_timeout=timeout)
            )
        except Exception:
            self.close()
            raise
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self, timeout: float) -> int:
        """Chromium writes the port it chose to DevToolsActivePort in its profile."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with code {self.proc.returncode} at start")
            if active.exists() and (lines := active.read_text().split()):
                return int(lines[0])
            time.sleep(0.05)
        raise BrowserError(f"Chromium did not open its DevTools port within {timeout:g} s")

    def _page_socket(self, port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise BrowserError("Chromium has no page")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and wait for its result (events in between are skipped)."""
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def open(self, url: str, timeout: float = 30.0) -> None:
        """Load a page and wait until its document is complete."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not load within {timeout:g} s")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """A PNG of what the window shows."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self._closing.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
