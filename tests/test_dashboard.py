"""`serve --dashboard`: the supervisor's page in a real headless Chromium (over the DevTools protocol) during
real calls over real sockets, and its HTTP side (token, read-only, one page per process)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
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
from serve_support import CLI, ServeProcess, free_port, paced_audiosocket_call

from anger_stream.config import DetectorConfig
from anger_stream.events import AngerEnd, AngerStart, Status, Window
from anger_stream.serve import audiosocket
from anger_stream.serve.board import ENDED_S, EVENTS_S, MAX_EVENTS, RECENT_S, Board, merge
from anger_stream.serve.dashboard import MAX_STREAMS
from tools.browser import BrowserError, Chromium, chromium_path
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


CONFIG = DetectorConfig(threshold=0.6)
ANGRY_AT = ("--threshold", "0.6")  # the real angry clips' p reaches about 0.9: under the default threshold


def test_the_board_puts_angry_calls_first_and_keeps_the_last_anger_events() -> None:
    clock = iter(range(100)).__next__
    boards = [Board(clock=clock), Board(clock=clock)]  # two workers
    boards[0].events([("a", Status("start", 0.0, {"protocol": "audiosocket", "peer": "p"}))])
    boards[1].events([("b", Status("start", 0.0, {"protocol": "mediastream"})), ("c", Status("start", 0.0))])
    boards[0].events([("a", Window(0.0, 1.2, 0.2, False, -20.0))])
    boards[1].events([("c", Window(0.0, 1.2, 0.9, True, -20.0)), ("c", AngerStart(1.2, 0.9, 0.0))])
    view = merge([b.snapshot() for b in boards], CONFIG, 10.0)
    assert [(c["call"], c["state"]) for c in view["calls"]] == [("c", "angry"), ("a", "calm"), ("b", "calm")]
    assert (view["active"], view["angry"], view["threshold"], view["release"]) == (3, 1, 0.6, 0.5)
    assert view["calls"][1]["p"] == 0.2 and view["calls"][2]["p"] is None
    assert view["calls"][0]["angry_since"] is not None and view["calls"][0]["segment_max"] == 0.9
    boards[1].events([("c", Window(1.2, 2.4, 0.3, False, -20.0)), ("c", AngerEnd(2.4, 1.2, 0.9))])
    view = merge([b.snapshot() for b in boards], CONFIG, 20.0)
    assert [(c["call"], c["state"]) for c in view["calls"]] == [("c", "recent"), ("a", "calm"), ("b", "calm")]
    assert view["calls"][0]["last_anger"]["p_max"] == 0.9 and view["angry"] == 0
    later = merge([b.snapshot() for b in boards], CONFIG, 20.0 + RECENT_S)
    assert later["calls"][0]["state"] == "calm", "recently angry for RECENT_S"
    boards[1].events([("c", Status("end", 6.0, {}))])
    view = merge([b.snapshot() for b in boards], CONFIG, 30.0)
    assert [c["call"] for c in view["calls"]] == ["a", "b"], "a call that calmed before its end leaves"
    assert [(e["call"], e["type"]) for e in view["events"]] == [("c", "anger_end"), ("c", "anger_start")]
    assert merge([b.snapshot() for b in boards], CONFIG, 30.0 + EVENTS_S)["events"] == []


def test_the_board_keeps_calls_that_end_angry_or_in_an_error() -> None:
    now = [100.0]
    board = Board(clock=lambda: now[0])
    for call in ("hung-up", "error", "calm"):
        board.events([(call, Status("start", 0.0, {"protocol": "audiosocket"}))])
    board.events([("hung-up", Window(0.0, 1.2, 0.9, True, -20.0)), ("hung-up", AngerStart(1.2, 0.9, 0.0))])
    now[0] = 110.0
    board.events([
        ("hung-up", AngerEnd(3.0, 1.8, 0.95)),  # closed by the end of the call (no `ended_by`: same time)
        ("hung-up", Status("end", 3.0, {})),
        ("error", Status("error", 2.0, {"error": "protocol error: bad frame", "error_kind": "protocol"})),
        ("calm", Status("end", 4.0, {})),
    ])  # fmt: skip
    view = merge([board.snapshot()], CONFIG, 111.0)
    assert [(c["call"], c["state"]) for c in view["calls"]] == [("hung-up", "ended_angry"), ("error", "error")]
    hung_up, error = view["calls"]
    assert hung_up["end"] == {"state": "end", "angry": True} and hung_up["last_anger"]["p_max"] == 0.95
    assert hung_up["last_anger"]["ended_by"] == view["events"][0]["ended_by"] == "input_end"
    assert error["end"] == {"state": "error", "kind": "protocol", "error": "protocol error: bad frame"}
    assert view["active"] == 0 and view["angry"] == 0
    assert merge([board.snapshot()], CONFIG, 110.0 + ENDED_S)["calls"] == [], "kept for ENDED_S"
    board.events(
        [("late", Status("start", 0.0, {})), ("late", AngerStart(1.2, 0.9, 0.0)), ("late", AngerEnd(9.0, 7.8, 0.9))]
    )
    board.events([("other", AngerStart(1.2, 0.9, 0.0))] * MAX_EVENTS)  # its anger_end pushed out of the list
    board.events([("late", Status("end", 9.0, {}))])
    assert ("late", "ended_angry") in [
        (c["call"], c["state"]) for c in merge([board.snapshot()], CONFIG, 111.0)["calls"]
    ]
    now[0] = 110.0 + ENDED_S
    board.events([])
    assert board.snapshot()["calls"] == [], "then forgotten"


def test_the_board_takes_the_reason_an_anger_segment_ended_and_the_raised_voice_when_given() -> None:
    board = Board(clock=lambda: 5.0)
    board.events([("a", Status("start", 0.0, {})), ("b", Status("start", 0.0, {}))])
    board.events([("a", Window(0.0, 1.2, 0.9, True, -20.0, raised=0.8)), ("a", AngerStart(1.2, 0.9, 0.0, 0.8))])
    board.events([("a", Window(0.6, 1.8, 0.7, True, -20.0, raised=0.85))])
    (a, _) = board.snapshot()["calls"]
    assert (a["raised"], a["segment_max"], a["segment_raised"]) == (0.85, 0.9, 0.85)
    board.events([("a", AngerEnd(2.4, 1.2, 0.9, "input_end", raised_max=0.85)), ("a", Status("end", 9.0, {}))])
    board.events([("b", AngerStart(1.2, 0.9, 0.0)), ("b", AngerEnd(2.4, 1.2, 0.9, "calm")), ("b", Status("end", 2.4))])
    (a,) = merge([board.snapshot()], CONFIG, 6.0)["calls"]
    assert a["call"] == "a" and a["state"] == "ended_angry", "ended_by decides, not the time"
    assert a["last_anger"]["ended_by"] == "input_end" and a["last_anger"]["raised_max"] == 0.85


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """(status, headers, body) of one request, redirects not followed."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_the_page_needs_the_token_from_a_header_or_its_sign_in_cookie_never_the_url() -> None:
    token = "t" * 32
    srv = ServeProcess("--dashboard", "0", env={"ANGER_STREAM_TOKEN": token}, protocols=("mediastream",))
    try:
        base = f"http://127.0.0.1:{srv.ports['dashboard']}"
        status, headers, form = request(f"{base}/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer ")
        assert '<form method="post" action="login">' in form and 'type="password"' in form
        status, headers, _ = request(f"{base}/events")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer ")
        assert request(f"{base}/login", b"token=wrong-" + token.encode())[0] == 401
        status, headers, _ = request(f"{base}/login", f"token={token}".encode())
        assert status == 303 and headers["Location"] == "./"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie and "Secure" not in cookie
        proxied = request(f"{base}/login", f"token={token}".encode(), {"X-Forwarded-Proto": "https"})[1]
        assert proxied["Set-Cookie"].endswith("; Secure"), "behind a TLS proxy"
        session = cookie.split(";")[0]
        status, _, page = request(f"{base}/", headers={"Cookie": session})
        assert status == 200 and "<title>anger-stream: live calls</title>" in page
        assert "http://" not in page and "https://" not in page, "nothing is fetched from elsewhere"
        assert request(f"{base}/", headers={"Cookie": session[:-1] + "0"})[0] == 401
        assert request(f"{base}/", headers={"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = request(f"{base}/?token={token}")  # an old link: the secret leaves the address bar
        assert status == 303 and headers["Location"] == "./" and headers["Set-Cookie"] == cookie
        assert request(f"{base}/nothing", headers={"Cookie": session})[0] == 404
        assert request(f"{base}/", b"x", headers={"Cookie": session})[0] == 404, "nothing to post but the form"
        assert request(f"{base}/login", b"x" * 5000)[0] == 400
        events = urllib.request.Request(f"{base}/events", headers={"Cookie": session})
        with urllib.request.urlopen(events, timeout=10) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            first = json.loads(stream.readline().decode().removeprefix("data: "))
            assert stream.readline() == b"\n" and stream.readline() == b"event: ping\n", "a ping when quiet"
        assert abs(first.pop("sent") - time.time()) < 5
        default = DetectorConfig()
        release = round(default.threshold - default.hysteresis, 3)
        assert first == {"threshold": default.threshold, "release": release, "patience": 1, "hold_s": default.hold_s,
                         "recent_s": RECENT_S, "ended_s": ENDED_S, "events_s": EVENTS_S, "active": 0, "angry": 0,
                         "calls": [], "events": []}  # fmt: skip
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
    srv = ServeProcess("--dashboard", "127.0.0.1:0", *ANGRY_AT, workers=2)
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
            live_rows = "document.querySelectorAll('#calls tr:not(.ended_angry):not(.error)').length"
            wait_for(lambda: browser.evaluate(live_rows) == 0, 10)
    finally:
        assert srv.stop() == 0
    print(f"shown angry {shown_after:.2f} s after its anger_start line")  # pytest -s shows it
    assert shown_after < 2.0, f"shown angry {shown_after:.2f} s after its anger_start line ({line})"
    calm_angry = [e for e in srv.events if e["type"] == "anger_start" and e.get("call") in calm_ids]
    if not calm_angry:  # other angry calls would share the top
        assert top == angry
    assert rows == 13 and angry[:8] in events
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def quietly(call, *args) -> threading.Thread:  # noqa: ANN001
    """A caller on a thread that ends quietly if the server goes away under it."""

    def run() -> None:
        with contextlib.suppress(OSError):
            call(*args)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def call_that_breaks_the_protocol(port: int, audio: np.ndarray, call: str) -> None:
    """A call that sends audio in real time, then a second UUID frame: it ends in a protocol error."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(audiosocket.uuid_frame(call))
        for i in range(0, len(audio), 160):
            s.sendall(audiosocket.audio_frame(audio[i : i + 160]))
            time.sleep(0.02)
        s.sendall(audiosocket.uuid_frame(call))
        s.settimeout(10)
        while s.recv(4096):
            pass


def evaluate_soon(browser: Chromium, expression: str):  # noqa: ANN201
    """The value of `expression`, or None while the page is between two documents."""
    try:
        return browser.evaluate(expression)
    except BrowserError:
        return None


STALE = "document.body.classList.contains('stale')"
STATE = "document.getElementById('state').textContent"
BANNER = "document.getElementById('banner').textContent"


@pytest.mark.shared
def test_the_page_greys_out_within_2_s_when_the_server_stops_and_is_live_again_when_it_returns(shared: Path) -> None:
    if chromium_path() is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    port = free_port()
    angry = np.resize(np.concatenate([clip(shared, ANGRY_CLIP), clip(shared, ANGRY_FOLLOW_UP)]), 40 * 8000)
    srv = ServeProcess("--dashboard", f"127.0.0.1:{port}")
    try:
        with Chromium() as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            wait_for(lambda: browser.evaluate(STATE) == "live", 10)
            caller = quietly(paced_audiosocket_call, srv.ports["audiosocket"], angry, str(uuid.uuid4()))
            wait_for(lambda: browser.evaluate("document.title").startswith("(1 angry)"), 20)
            assert srv.stop() == 0
            stopped = time.monotonic()
            wait_for(lambda: browser.evaluate(STALE), 5, step=0.02)
            greyed_after = time.monotonic() - stopped
            assert browser.evaluate("document.title") == "anger-stream: disconnected"
            assert re.match(r"Disconnected since \d\d:\d\d:\d\d \(\d+ s\): ", browser.evaluate(BANNER))
            assert browser.evaluate("getComputedStyle(document.querySelector('main')).opacity") == "0.45"
            assert browser.evaluate("document.querySelectorAll('#calls tr.angry').length") == 1, "as it was"
            caller.join()
            srv = ServeProcess("--dashboard", f"127.0.0.1:{port}")
            wait_for(lambda: browser.evaluate(STATE) == "live", 20)
            assert not browser.evaluate(STALE) and browser.evaluate("document.getElementById('banner').hidden")
            wait_for(lambda: browser.evaluate("document.querySelectorAll('#calls tr').length") == 0, 5)
            assert browser.evaluate("document.title") == "anger-stream: live calls"
    finally:
        srv.stop()
    print(f"greyed out {greyed_after:.2f} s after the server stopped")
    assert greyed_after < 2.0


def test_a_page_refused_with_503_or_401_says_why_and_recovers() -> None:
    if chromium_path() is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    port, token, other = free_port(), "a" * 32, "b" * 32
    srv = ServeProcess("--dashboard", f"127.0.0.1:{port}", env={"ANGER_STREAM_TOKEN": token})
    held = []
    try:
        for _ in range(MAX_STREAMS):  # every stream slot taken
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            assert s.recv(64).startswith(b"HTTP/1.1 200")
            held.append(s)
        with Chromium() as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            assert browser.evaluate("document.title") == "anger-stream: sign in"
            browser.evaluate(f"document.getElementById('token').value = '{token}'; document.forms[0].submit()")
            wait_for(lambda: "(503)" in (evaluate_soon(browser, BANNER) or ""), 10)
            assert browser.evaluate("document.querySelector('#call-count b').textContent") == "\u2013", "not 0 calls"
            for s in held:
                s.close()
            wait_for(lambda: browser.evaluate(STATE) == "live", 10)
            assert browser.evaluate("document.getElementById('banner').hidden")
            assert srv.stop() == 0
            srv = ServeProcess("--dashboard", f"127.0.0.1:{port}", env={"ANGER_STREAM_TOKEN": other})
            wait_for(lambda: "(401)" in browser.evaluate(BANNER), 20)
            assert "Sign in again" in browser.evaluate(BANNER)
            assert srv.stop() == 0
            srv = ServeProcess("--dashboard", f"127.0.0.1:{port}", env={"ANGER_STREAM_TOKEN": token})
            wait_for(lambda: browser.evaluate(STATE) == "live", 20)  # the same token: its cookie works again
    finally:
        srv.stop()


@pytest.mark.shared
@pytest.mark.parametrize("width", [1024, 1600])
def test_from_1024_px_every_column_shows_and_calls_that_end_angry_or_in_an_error_stay(
    width: int, shared: Path, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    calm, angry = clip(shared, CALM_CLIP), np.concatenate([clip(shared, ANGRY_CLIP), clip(shared, ANGRY_FOLLOW_UP)])
    calls = {
        "angry": np.resize(angry, 30 * 8000),
        "hung-up": np.concatenate([calm[: 2 * 8000], angry])[: 9 * 8000],  # hangs up in the middle of its anger
        "recent": np.concatenate([angry, np.resize(calm, 20 * 8000)]),
        **{f"calm-{i}": np.resize(np.roll(calm, 4000 * i), 24 * 8000) for i in range(4)},
    }
    ids = {name: str(uuid.uuid4()) for name in [*calls, "error"]}
    srv = ServeProcess("--dashboard", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--hold", "2", *ANGRY_AT)
    try:
        with Chromium(width=width, height=900) as browser:
            browser.open(f"http://127.0.0.1:{srv.ports['dashboard']}/")
            wait_for(lambda: browser.evaluate(STATE) == "live", 10)
            callers = [quietly(paced_audiosocket_call, srv.ports["audiosocket"], audio, ids[name])
                       for name, audio in calls.items()]  # fmt: skip
            callers.append(quietly(call_that_breaks_the_protocol, srv.ports["audiosocket"], calm[:8000], ids["error"]))
            row = "document.querySelector('tr[data-call=\"{}\"]')"

            def state(name: str) -> str | None:
                return browser.evaluate(f"{row.format(ids[name])}?.className ?? null")

            wait_for(lambda: state("error") == "error", 15)
            wait_for(lambda: state("hung-up") == "ended_angry", 20)
            wait_for(lambda: state("recent") == "recent", 15)
            assert state("angry") == "angry"
            hung_up = browser.evaluate(f"{row.format(ids['hung-up'])}.textContent")
            error = browser.evaluate(f"{row.format(ids['error'])}.textContent")
            angry_detail = browser.evaluate(f"{row.format(ids['angry'])}.querySelector('.detail').textContent")
            geometry = browser.evaluate("""(() => {
                const box = e => {
                    const r = e.getBoundingClientRect();
                    return [r.left, r.right, r.top, r.bottom];
                };
                const table = document.getElementById('table').closest('section');
                const events = document.getElementById('events-panel');
                const shown = q => [...document.querySelectorAll(q)]
                    .filter(e => getComputedStyle(e).display !== 'none');
                return { width: window.innerWidth, table: box(table), events: box(events),
                         heads: shown('thead th').map(th => [th.textContent.trim(), ...box(th)]),
                         cells: shown('#calls tr:first-child td').map(box),
                         scrollWidth: document.documentElement.scrollWidth };
            })()""")
            angry_now = scrape_angry(srv.ports["metrics"])
            browser.screenshot(tmp_path / "dashboard.png")
            scrolled = browser.evaluate("""(() => {
                document.body.style.paddingBottom = '2000px';  // room to scroll, whatever the number of calls
                window.scrollTo(0, 250);
                const header = document.querySelector('header').getBoundingClientRect();
                const head = document.querySelector('th').getBoundingClientRect();
                return [window.scrollY, header.top, header.bottom, head.top];
            })()""")
            for t in callers:
                t.join()
    finally:
        assert srv.stop() == 0
    assert "HUNG UP ANGRY" in hung_up and "hung up while angry" in hung_up, hung_up
    assert "ENDED: ERROR" in error and "ago): protocol error: a second UUID frame" in error, error
    assert re.match(r"angry since \d\d:\d\d:\d\d \(\d+ s\), max 0\.\d\d", angry_detail), angry_detail
    assert angry_now == 1
    left, right, _, bottom = geometry["table"]
    assert geometry["scrollWidth"] <= geometry["width"], "nothing off to the side"
    assert [h[0] for h in geometry["heads"]][:3] == ["Call", "Connection", "Audio"] and all(
        h[0] for h in geometry["heads"]
    )
    for name, h_left, h_right, *_ in geometry["heads"]:
        assert left <= h_left < h_right <= right, f"{name} outside the table's panel: {geometry}"
    assert len(geometry["cells"]) == len(geometry["heads"])
    assert all(left <= c[0] < c[1] <= right for c in geometry["cells"]), geometry
    if width < 1400:
        assert geometry["events"][2] >= bottom, "the events below the table, not over it"
    else:
        assert geometry["events"][0] >= right, "the events beside the table, not over it"
    scroll_y, header_top, header_bottom, head_top = scrolled
    assert scroll_y == 250 and header_top == 0, "the header stays in view"
    assert abs(head_top - header_bottom) < 2, "the column heads stay in view, under the header"
    if width == 1024 and (target := os.environ.get(SCREENSHOT_ENV)):
        shutil.copy(tmp_path / "dashboard.png", target)


def scrape_angry(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith("anger_stream_calls_angry ")))


def test_serve_help_says_the_token_guards_the_page_too() -> None:
    help_text = subprocess.run([CLI, "serve", "--help"], capture_output=True, text=True).stdout
    token_help = " ".join(re.search(r"\n  --token TOKEN(.*?)\n  --", help_text, flags=re.S)[1].split())
    assert "guards the --dashboard page" in token_help, token_help


def test_a_page_greys_out_when_the_server_hangs_and_is_live_again_when_it_resumes() -> None:
    if chromium_path() is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    srv = ServeProcess("--dashboard", "127.0.0.1:0")
    try:
        with Chromium() as browser:
            browser.open(f"http://127.0.0.1:{srv.ports['dashboard']}/")
            wait_for(lambda: browser.evaluate(STATE) == "live", 10)
            os.kill(srv.proc.pid, signal.SIGSTOP)  # the connection stays open, and nothing more comes
            hung = time.monotonic()
            wait_for(lambda: browser.evaluate(STALE), 5, step=0.02)
            greyed_after = time.monotonic() - hung
            assert "no data from the server for 2 s" in browser.evaluate(BANNER)
            os.kill(srv.proc.pid, signal.SIGCONT)
            wait_for(lambda: browser.evaluate(STATE) == "live", 10)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        assert srv.stop() == 0
    print(f"greyed out {greyed_after:.2f} s after the server hung")
    assert greyed_after < 3.0
