"""`serve --metrics`: the Prometheus endpoint scraped during and after real calls over real sockets, its counts
checked against the calls made and the lines printed, summed over `--workers 2`."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_support import ServeProcess, audiosocket_call, hang_up, mediastream_call, paced_audiosocket_call

from anger_stream import __version__
from anger_stream.serve import audiosocket

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

FINAL = ("end", "error", "interrupted")


def exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    text = exposition(port)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def dtmf_flood_call(port: int, samples: np.ndarray, digits: int) -> str:
    """An AudioSocket call that sends `digits` DTMF frames after its first audio frame (more than a keypad can)."""
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(samples[:160]))
        s.sendall(audiosocket.dtmf_frame("5") * digits)
        for i in range(160, len(samples), 160):
            s.sendall(audiosocket.audio_frame(samples[i : i + 160]))
        hang_up(s)
    return call


def audio_before_uuid(port: int, samples: np.ndarray) -> None:
    """A protocol error before the call starts (AudioSocket wants the UUID frame first)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(audiosocket.audio_frame(samples[:160]))
        s.settimeout(10)
        while s.recv(4096):
            pass


@pytest.fixture
def server() -> Iterator[ServeProcess]:
    srv = ServeProcess("--metrics", "127.0.0.1:0", protocols=("audiosocket", "mediastream"), workers=2)
    yield srv
    assert srv.stop() == 0


def test_metrics_count_the_calls_of_every_worker(server: ServeProcess, speech: np.ndarray) -> None:
    port, a_port, m_port = server.ports["metrics"], server.ports["audiosocket"], server.ports["mediastream"]
    before = scrape(port)  # every known series is there from the start, at 0
    for protocol in ("audiosocket", "mediastream"):
        for name in ("anger_stream_calls_total", "anger_stream_calls_active"):
            assert before[(name, (("protocol", protocol),))] == 0
        assert before[("anger_stream_call_errors_total", (("kind", "timeout"), ("protocol", protocol)))] == 0
    assert before[("anger_stream_windows_total", (("result", "silent"),))] == 0
    assert before[("anger_stream_calls_angry", ())] == 0
    assert before[("anger_stream_build_info", (("model", "full"), ("version", __version__)))] == 1
    assert before[("process_open_fds", ())] > 0
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition(port), capture_output=True, text=True)
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    paced = [str(uuid.uuid4()) for _ in range(4)]
    callers = [threading.Thread(target=paced_audiosocket_call, args=(a_port, speech, c)) for c in paced]
    for t in callers:
        t.start()

    # during the calls: the four real-time calls are being served, by one worker or the other (a scrape reads
    # each worker's counter and gauge files one after the other, so it may see a call start in one and not yet
    # in the other: wait for a scrape that has all four in both)
    deadline, during = time.monotonic() + 4.0, {}
    while time.monotonic() < deadline:
        during = scrape(port)
        if total(during, "anger_stream_calls_active") == total(during, "anger_stream_calls_total") == 4:
            break
        time.sleep(0.1)
    assert total(during, "anger_stream_calls_active", protocol="audiosocket") == 4, during
    assert total(during, "anger_stream_calls_total", protocol="audiosocket") == 4

    with ThreadPoolExecutor(4) as pool:
        fast = list(pool.map(lambda _: mediastream_call(m_port, speech), range(10)))
        fast.append(audiosocket_call(a_port, speech))
        flood = dtmf_flood_call(a_port, speech, 60)
        audio_before_uuid(a_port, speech)
    for t in callers:
        t.join()
    calls = [*paced, *fast, flood]
    for c in calls:
        server.call_events(c)
    deadline = time.monotonic() + 10  # the protocol error's line
    while not any(e.get("error_kind") == "protocol" for e in server.events):
        server.events.append(server.next(deadline - time.monotonic()))
    after = scrape(port)

    lines = server.events
    starts = [e for e in lines if e.get("state") == "start"]
    assert {e["worker"] for e in starts} == {0, 1}, "the kernel spreads the calls over both workers"
    finals = {e["call"]: e for e in lines if e.get("state") in FINAL}
    assert all(finals[c]["state"] == "end" for c in calls)
    windows = [e for e in lines if e["type"] == "window"]
    scored = sum(e["p"] is not None for e in windows)
    assert total(after, "anger_stream_calls_total", protocol="audiosocket") == 6
    assert total(after, "anger_stream_calls_total", protocol="mediastream") == 10
    assert total(after, "anger_stream_calls_active") == 0
    assert total(after, "anger_stream_windows_total", result="scored") == scored > 0
    assert total(after, "anger_stream_windows_total", result="silent") == len(windows) - scored
    assert total(after, "anger_stream_tick_windows_sum") == scored
    ticks = total(after, "anger_stream_tick_windows_count")
    assert total(after, "anger_stream_tick_seconds_count") == ticks > 0, "both over the ticks that scored windows"
    assert total(after, "anger_stream_calls_angry") == 0
    assert total(after, "anger_stream_anger_segments_total") == sum(e["type"] == "anger_start" for e in lines)
    assert total(after, "anger_stream_call_errors_total") == 1
    assert total(after, "anger_stream_call_errors_total", protocol="audiosocket", kind="protocol") == 1
    assert total(after, "anger_stream_dtmf_dropped_total") == finals[flood]["dtmf_dropped"] > 0
    # every window line but those scored after its call ended has a latency, all under 5 s here
    latencies = total(after, "anger_stream_window_latency_seconds_count")
    assert len(windows) - 2 * len(calls) <= latencies <= len(windows)
    assert total(after, "anger_stream_window_latency_seconds_bucket", le="5.0") == latencies
    assert 0 < total(after, "anger_stream_window_latency_seconds_sum") < latencies


def test_the_scrape_config_and_alert_rules_of_the_operations_guide_pass_promtool(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (Debian: apt-get install prometheus)")
    guide = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```yaml\n# (\S+)\n(.*?)```", guide, flags=re.S)
    assert [name for name, _ in blocks] == ["prometheus.yml", "anger-stream-rules.yml"]
    for name, text in blocks:
        (tmp_path / name).write_text(text)
    for what, name in (("config", "prometheus.yml"), ("rules", "anger-stream-rules.yml")):
        check = subprocess.run(["promtool", "check", what, name], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
