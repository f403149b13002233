"""The image (Containerfile) and the stack (deploy/compose.yaml) under podman: real AudioSocket and Media Streams
calls through HAProxy to two replicas, their JSON lines, Prometheus over both, the pages, the health check and
SIGTERM to serve as PID 1. Slow (an image build): run by `make container-test`, which installs podman and
makes the base image tarball (debootstrap); skipped otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import (
    assert_same_events,
    audiosocket_call,
    expected_lines,
    free_port,
    mediastream_call,
    mulaw_roundtrip,
)

from anger_stream.detector import AngerDetector
from anger_stream.events import to_json
from anger_stream.serve import audiosocket

BASE_TARBALL = os.environ.get("ANGER_STREAM_CONTAINER_BASE")
pytestmark = pytest.mark.skipif(
    not BASE_TARBALL, reason="slow: run by `make container-test` (ANGER_STREAM_CONTAINER_BASE names a base tarball)"
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/anger-stream:container-test"
PROJECT = "anger-stream-test"
COMPOSE = str(Path(sys.executable).parent / "podman-compose")
REPLICAS = ("anger1", "anger2")
FINAL = ("end", "error", "interrupted")
# runc and cgroupfs work on hosts without systemd (and in VMs); no ulimits podman may not raise there
CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs podman (or podman-compose: `podman("compose", ...)`) with this test's configuration."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: `make container-test` installs it")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(*args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        cmd = [COMPOSE, *args[1:]] if args[0] == "compose" else ["podman", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, **kw.pop("env", {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-3000:]}")
        return r

    return run


@pytest.fixture(scope="module")
def base(podman: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    """The base tarball as an image, imported once per tarball."""
    tarball = Path(BASE_TARBALL)
    stat = tarball.stat()
    digest = hashlib.sha1(f"{tarball}{stat.st_mtime}{stat.st_size}".encode()).hexdigest()
    tag = f"localhost/anger-stream-base:{digest[:12]}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        podman(
            "import", "--change", "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV=PIP_CERT=/etc/ssl/certs/ca-certificates.crt", str(tarball), tag, timeout=600,
        )  # fmt: skip
    return tag


@pytest.fixture(scope="module")
def image(podman: Callable[..., subprocess.CompletedProcess[str]], base: str) -> str:
    """The Containerfile built on that base (`--format docker` keeps its HEALTHCHECK); pip reaches PyPI."""
    podman(
        "build", "--network", "host", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE,
        "-f", str(ROOT / "Containerfile"), str(ROOT), timeout=1800,
    )  # fmt: skip
    return IMAGE


def _lines(podman: Callable[..., subprocess.CompletedProcess[str]], container: str) -> list[dict[str, Any]]:
    """A container's stdout so far, parsed (each line must be JSON)."""
    return [json.loads(line) for line in podman("logs", container).stdout.splitlines()]


def _listening(podman: Callable[..., subprocess.CompletedProcess[str]], container: str, protocol: str = "") -> int:
    """How many `listening` lines (of `protocol`, else of any) the container has printed."""
    lines = _lines(podman, container)
    return sum(e.get("state") == "listening" and protocol in ("", e["protocol"]) for e in lines)


def _wait(what: str, ready: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := ready():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(podman: Callable[..., subprocess.CompletedProcess[str]], base: str, image: str) -> Iterator[dict[str, Any]]:
    """deploy/compose.yaml up under podman-compose, on free host ports, HAProxy and Prometheus from the base."""
    ports = {name: free_port() for name in ("AUDIOSOCKET", "MEDIASTREAM", "PROMETHEUS", "DASHBOARD1", "DASHBOARD2")}
    env = {f"{name}_PORT": str(port) for name, port in ports.items()}
    env |= {"ANGER_STREAM_IMAGE": image, "HAPROXY_IMAGE": base, "PROMETHEUS_IMAGE": base}
    compose = ("compose", "-p", PROJECT, "-f", str(ROOT / "deploy" / "compose.yaml"))
    podman(*compose, "down", "-v", check=False, env=env)  # what a killed run left
    containers = {name: f"{PROJECT}_{name}_1" for name in (*REPLICAS, "lb-audiosocket", "lb-mediastream", "prometheus")}
    try:
        podman(*compose, "up", "-d", env=env, timeout=300)
        for replica in REPLICAS:
            # both protocols, the metrics and the page
            _wait(f"{replica} listening", lambda r=replica: _listening(podman, containers[r]) == 4)
        _wait("HAProxy", lambda: _connects(ports["AUDIOSOCKET"]) and _connects(ports["MEDIASTREAM"]))
        time.sleep(2.5)  # HAProxy's first checks of the servers (every 2 s)
        yield {"ports": ports, "containers": containers}
    finally:
        for name in containers.values():  # for a failure's report
            logs = podman("logs", name, check=False)
            print(f"--- {name} (stderr)\n{logs.stderr[-2000:]}")
        podman(*compose, "down", "-v", "-t", "10", check=False, env=env, timeout=300)


def test_image_is_non_root_with_serve_as_its_entry_point(
    podman: Callable[..., subprocess.CompletedProcess[str]], image: str
) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["anger-stream", "serve"]
    assert info["Healthcheck"]["Test"][0] == "CMD"  # kept by --format docker
    usage = podman("run", "--rm", image, "--audiosocket", "nowhere", check=False)
    assert usage.returncode == 2 and "expected HOST:PORT" in usage.stderr and usage.stdout == ""


def test_calls_through_haproxy_to_two_replicas(
    podman: Callable[..., subprocess.CompletedProcess[str]], stack: dict[str, Any], speech: np.ndarray
) -> None:
    ports, containers = stack["ports"], stack["containers"]
    rng = np.random.default_rng(5)
    clips = [speech[: rng.integers(12000, len(speech))] for _ in range(8)]
    together = threading.Barrier(6)  # six AudioSocket calls connected at once: leastconn uses both replicas
    with ThreadPoolExecutor(len(clips)) as pool:
        calls = [pool.submit(audiosocket_call, ports["AUDIOSOCKET"], clip, together=together) for clip in clips[:6]]
        calls += [pool.submit(mediastream_call, ports["MEDIASTREAM"], clip) for clip in clips[6:]]
        ids = [c.result(timeout=120) for c in calls]

    def finished() -> dict[str, list[dict[str, Any]]] | None:
        by_replica = {r: _lines(podman, containers[r]) for r in REPLICAS}
        done = {e["call"] for lines in by_replica.values() for e in lines if e.get("state") in FINAL}
        return by_replica if done >= set(ids) else None

    by_replica = _wait("every call's final line", finished)
    served = {r: {e["call"] for e in lines if "call" in e} for r, lines in by_replica.items()}
    assert all(served.values()), served  # both replicas took calls
    assert not set.intersection(*served.values())  # a call stays on one replica
    for call, clip, protocol in zip(ids, clips, ["audiosocket"] * 6 + ["mediastream"] * 2, strict=True):
        (replica,) = [r for r in REPLICAS if call in served[r]]
        events = [e for e in by_replica[replica] if e.get("call") == call]
        assert events[0]["state"] == "start" and events[0]["protocol"] == protocol
        assert events[-1]["state"] == "end", events[-1]
        heard = clip if protocol == "audiosocket" else mulaw_roundtrip(clip)
        assert_same_events(events[1:-1], expected_lines(heard, 8000, call))

    # Prometheus scrapes each replica: its count of calls per replica equals the replica's start lines
    query = "sum by (instance) (anger_stream_calls_total)"
    url = f"http://127.0.0.1:{ports['PROMETHEUS']}/api/v1/query?query={urllib.parse.quote(query)}"
    want = {f"{r}:9464": len(served[r]) for r in REPLICAS}

    def counted() -> dict[str, int] | None:
        result = json.loads(_get(url))["data"]["result"]
        got = {s["metric"]["instance"]: int(float(s["value"][1])) for s in result}
        return got if got == want else None

    assert _wait(f"Prometheus to count {want}", counted, timeout=60) == want
    up = json.loads(_get(f"http://127.0.0.1:{ports['PROMETHEUS']}/api/v1/query?query=up"))["data"]["result"]
    assert sorted(s["metric"]["instance"] for s in up if s["value"][1] == "1") == sorted(want)

    for name in ("DASHBOARD1", "DASHBOARD2"):  # each replica's page, on the host's loopback
        assert "<html" in _get(f"http://127.0.0.1:{ports[name]}/").lower()
        assert _get(f"http://127.0.0.1:{ports[name]}/health").strip() == "OK"
    for replica in REPLICAS:  # the image's HEALTHCHECK (the metrics endpoint)
        assert podman("healthcheck", "run", containers[replica], check=False).returncode == 0


def test_sigterm_to_serve_as_pid_1_ends_calls_with_their_status_lines(
    podman: Callable[..., subprocess.CompletedProcess[str]], image: str, speech: np.ndarray, tmp_path: Path
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"threshold": 0.0}')  # from --config (named in the environment): every window angry
    settings.chmod(0o644)
    port, name = free_port(), f"anger-stream-test-sigterm-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:9092", "-v", f"{settings}:/etc/anger-stream.json:ro",
        "-e", "ANGER_STREAM_SERVE_CONFIG=/etc/anger-stream.json", image, "--workers", "2",
    )  # fmt: skip
    try:
        _wait("two workers listening", lambda: _listening(podman, name, "audiosocket") == 2)
        assert "anger-stream" in podman("exec", name, "cat", "/proc/1/cmdline").stdout  # PID 1, no init
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        call, clip = str(uuid.uuid4()), speech[:12000]
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(clip))
            _wait("the call's windows", lambda: sum(e.get("call") == call for e in _lines(podman, name)) >= 2)
            started = time.monotonic()
            podman("stop", "-t", "20", name)  # SIGTERM; SIGKILL only after 20 s
            stopped = time.monotonic() - started
        (state,) = json.loads(podman("inspect", name).stdout)
        assert state["State"]["ExitCode"] == 0 and stopped < 10, (state["State"], stopped)
        events = [e for e in _lines(podman, name) if e.get("call") == call][1:]
        assert events[-1]["state"] == "interrupted" and events[-1]["t"] == 1.5
        detector = AngerDetector(threshold=0.0, sample_rate=8000)
        want = [json.loads(to_json(e, call=call)) for e in detector.feed(clip) + detector.flush()]
        assert_same_events(events[:-1], want)
        assert all(e["angry"] for e in events if e["type"] == "window")
        assert "Traceback" not in podman("logs", name).stderr
    finally:
        podman("rm", "-f", name, check=False)
