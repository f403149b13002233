"""`serve --dashboard`: the supervisor's page in a real headless Chromium (over the DevTools protocol) during
real calls over real sockets, and its HTTP side (token, read-only, one page per process)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ANGRY_CLIP, CALM_CLIP
from serve_support import ServeProcess, paced_audiosocket_call

from anger_stream.events import AngerEnd, AngerStart, Status, Window
from anger_stream.serve.board import Board, merge
from tools.browser import Chromium, chromium_path
from tools.loadtest import load_audio

SCREENSHOT_ENV = "ANGER_STREAM_SCREENSHOT"
"""Where to copy the page's screenshot (docs/dashboard.png is made so)."""
ANGRY_FOLLOW_UP = "ravdess/Actor_22/03-01-05-02-02-01-22.flac"


def clip(shared: Path, name: str) -> np.ndarray:
    """A corpus clip as 8 kHz int16, as a phone sends it."""
    path = shared / "data" / name
    return load_audio(path, sf.info(path).duration)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_board_puts_angry_calls_first_and_keeps_the_last_anger_events() -> None:
    clock = iter(range(100)).__next__
    boards = [Board(clock=clock), Board(clock=clock)]  # two workers
    boards[0].events([("a", Status("start", 0.0, {"protocol": "audiosocket", "peer": "p"}))])
    boards[1].events([("b", Status("start", 0.0, {"protocol": "mediastream"})), ("c", Status("start", 0.0))])
    boards[0].events([("a", Window(0.0, 1.2, 0.2, False, -20.0))])
    boards[1].events([("c", Window(0.0, 1.2, 0.9, True, -20.0)), ("c", AngerStart(1.2, 0.9, 0.0))])
    view = merge([b.snapshot() for b in boards], 0.6)
    assert [c["call"] for c in view["calls"]] == ["c", "a", "b"]
    assert (view["active"], view["angry"], view["threshold"]) == (3, 1, 0.6)
    assert view["calls"][0]["angry"] and view["calls"][1]["p"] == 0.2 and view["calls"][2]["p"] is None
    boards[1].events([("c", AngerEnd(2.4, 1.2, 0.9)), ("c", Status("end", 2.4, {}))])
    view = merge([b.snapshot() for b in boards], 0.6)
    assert [c["call"] for c in view["calls"]] == ["a", "b"]
    assert [(e["call"], e["type"]) for e in view["events"]] == [("c", "anger_end"), ("c", "anger_start")]


def test_the_page_needs_the_token_and_is_read_only() -> None:
    token = "t" * 32
    srv = ServeProcess("--dashboard", "0", env={"ANGER_STREAM_TOKEN": token}, protocols=("mediastream",))
    try:
        base = f"http://127.0.0.1:{srv.ports['dashboard']}"
        assert get(f"{base}/")[0] == 401
        assert get(f"{base}/events?token=wrong-{token}")[0] == 401
        status, page = get(f"{base}/?token={token}")
        assert status == 200 and "<title>anger-stream: live calls</title>" in page
        assert "http://" not in page and "https://" not in page, "nothing is fetched from elsewhere"
        assert get(f"{base}/", {"Authorization": f"Bearer {token}"})[0] == 200
        assert get(f"{base}/nothing?token={token}")[0] == 404
        request = urllib.request.Request(f"{base}/?token={token}", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 501
        with urllib.request.urlopen(f"{base}/events?token={token}", timeout=10) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            first = json.loads(stream.readline().decode().removeprefix("data: "))
        assert first == {"threshold": 0.6, "active": 0, "angry": 0, "calls": [], "events": []}
    finally:
        assert srv.stop() == 0
    assert token not in "".join(srv.stderr)


@pytest.mark.shared
def test_the_page_shows_an_angry_caller_within_2_s_of_its_anger_start(shared: Path, tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    calm = clip(shared, CALM_CLIP)
    calm_call = np.resize(calm, 12 * 8000)  # 12 s of calm speech, looped
    angry_call = np.concatenate([calm, clip(shared, ANGRY_CLIP), clip(shared, ANGRY_FOLLOW_UP)])
    srv = ServeProcess("--dashboard", "127.0.0.1:0", workers=2)
    try:
        with Chromium() as browser:
            browser.open(f"http://127.0.0.1:{srv.ports['dashboard']}/")
            wait_for(lambda: browser.evaluate("document.getElementById('state').textContent") == "live", 10)
            angry, calm_ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(12)]
            callers = [
                threading.Thread(target=paced_audiosocket_call, args=(srv.ports["audiosocket"], audio, call))
                for call, audio in [(angry, angry_call), *((c, calm_call) for c in calm_ids)]
            ]
            for t in callers:
                t.start()
            line = next_line(srv, lambda e: e.get("call") == angry and e["type"] == "anger_start", 30)
            seen_at = time.monotonic()
            row = f"document.querySelector('tr[data-call=\"{angry}\"]')"
            wait_for(lambda: browser.evaluate(f"{row} !== null && {row}.classList.contains('angry')"), 5)
            shown_after = time.monotonic() - seen_at
            top = browser.evaluate("document.querySelector('#calls tr').dataset.call")
            rows = browser.evaluate("document.querySelectorAll('#calls tr').length")
            events = browser.evaluate("document.getElementById('events').textContent")
            time.sleep(0.6)  # the meters move on: a screenshot with a window more
            browser.screenshot(tmp_path / "dashboard.png")
            for t in callers:
                t.join()
            wait_for(lambda: browser.evaluate("document.querySelectorAll('#calls tr').length") == 0, 10)
    finally:
        assert srv.stop() == 0
    print(f"shown angry {shown_after:.2f} s after its anger_start line")  # pytest -s shows it
    assert shown_after < 2.0, f"shown angry {shown_after:.2f} s after its anger_start line ({line})"
    calm_angry = [e for e in srv.events if e["type"] == "anger_start" and e.get("call") in calm_ids]
    if not calm_angry:  # other angry calls would share the top
        assert top == angry
    assert rows == 13 and angry in events
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get(SCREENSHOT_ENV):
        shutil.copy(tmp_path / "dashboard.png", target)


def next_line(srv: ServeProcess, wanted, timeout: float) -> dict:
    """Read the server's lines (keeping them in srv.events) until one is `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        line = srv.next(deadline - time.monotonic())
        srv.events.append(line)
        if wanted(line):
            return line


def wait_for(condition, timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s")
        time.sleep(step)


def test_a_dashboard_beyond_loopback_without_a_token_is_warned_about() -> None:
    srv = ServeProcess("--dashboard", "0.0.0.0:0", "--metrics", "0.0.0.0:0")
    try:
        assert get(f"http://127.0.0.1:{srv.ports['dashboard']}/health") == (200, "OK\n")
    finally:
        assert srv.stop() == 0
    stderr = "".join(srv.stderr)
    assert "WARNING: dashboard on 0.0.0.0:" in stderr and "WARNING: metrics on 0.0.0.0:" in stderr
