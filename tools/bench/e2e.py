"""End-to-end benchmark sections: offline scoring of a long file, CLI cold start and RSS, StreamSet capacity."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf

from anger_stream import audio
from anger_stream.detector import AngerDetector
from anger_stream.events import Window
from anger_stream.model import AngerModel
from anger_stream.streams import StreamSet

HOP_S, HOP = audio.HOP_S, audio.HOP
SINK = "bench_vmic"


def offline(model: Path, speech: np.ndarray, seconds: float, rate: int = 44_100) -> dict:
    """x real time of AngerDetector.score() on a `seconds`-long WAV at `rate`, decoding and resampling included."""
    reps = int(np.ceil(seconds * audio.SAMPLE_RATE / len(speech)))
    signal = audio.resample(np.tile(speech, reps)[: round(seconds * audio.SAMPLE_RATE)], audio.SAMPLE_RATE, rate)
    detector = AngerDetector(AngerModel(model))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        sf.write(path, signal, rate, subtype="PCM_16")
        t0 = time.perf_counter()
        x, sr = sf.read(path, dtype="float32")
        t1 = time.perf_counter()
        p = detector.score(x, sr)
        t2 = time.perf_counter()
    resample_s = _time(lambda: audio.resample(x, sr))
    return {
        "audio_s": seconds,
        "rate": rate,
        "windows": len(p),
        "decode_s": t1 - t0,
        "resample_s": resample_s,
        "score_s": t2 - t1,
        "total_s": t2 - t0,
        "x_realtime": seconds / (t2 - t0),
    }


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _vm(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status memory figure in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cli_run(model: Path, speech: np.ndarray, windows: int = 6) -> dict:
    """One CLI process fed real-time s16le on stdin: seconds to the first window line beyond its 1.2 s, peak RSS."""
    exe = Path(sys.executable).with_name("anger-stream")
    cmd = [str(exe), "--input", "-", "--realtime", "--quiet", "--model", str(model)]
    pcm = np.clip(speech[: (windows + 2) * HOP + audio.WINDOW], -1, 1) * 32767
    data = pcm.astype("<i2").tobytes()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    writer = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
    writer.start()
    try:
        return _watch(proc, t0, windows)
    finally:
        proc.kill()
        proc.wait()
        writer.join(timeout=1)


def _watch(proc: subprocess.Popen, t0: float, windows: int) -> dict:
    """Read the CLI's lines until `windows` windows: time of the first one since t0, then the memory figures."""
    first, seen, hwm, rss = None, 0, None, None
    for line in proc.stdout:
        if b'"window"' in line:
            seen += 1
            first = first if first is not None else time.perf_counter() - t0
            if seen == windows:
                hwm, rss = _vm(proc.pid, "VmHWM"), _vm(proc.pid, "VmRSS")
                break
    if first is None:
        raise RuntimeError("the CLI printed no window")
    return {"first_window_s": first, "cold_start_s": first - audio.WINDOW_S, "vm_hwm_mb": _mb(hwm), "rss_mb": _mb(rss)}


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def _feed(pipe, data: bytes) -> None:  # noqa: ANN001 (a binary pipe)
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, ValueError):
        pass


@contextmanager
def virtual_microphone() -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon whose default source is a 16 kHz null sink's monitor (as tests/test_microphone)."""
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "native"
        config = Path(tmp) / "vmic.pa"
        config.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
            f"load-module module-null-sink sink_name={SINK} format=s16le rate=16000 channels=1 norewinds=1\n"
            f"set-default-source {SINK}.monitor\n"
        )
        env = {**os.environ, "PULSE_RUNTIME_PATH": str(Path(tmp) / "run"), "PULSE_SERVER": f"unix:{socket}"}
        args = ["-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1", "--realtime=no", "--disallow-exit"]
        daemon = subprocess.Popen(["pulseaudio", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pulseaudio did not start")
                time.sleep(0.1)
            yield env
        finally:
            daemon.kill()
            daemon.wait()


def mic_run(model: Path, speech: np.ndarray, windows: int = 6) -> dict:
    """The CLI on the (virtual) microphone while speech plays into it: first window beyond 1.2 s, peak RSS."""
    exe = Path(sys.executable).with_name("anger-stream")
    with virtual_microphone() as env, tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        sf.write(wav, speech[: 20 * audio.SAMPLE_RATE], audio.SAMPLE_RATE, subtype="PCM_16")
        player = subprocess.Popen(["paplay", f"--device={SINK}", str(wav)], env=env)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(exe), "--quiet", "--model", str(model)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            return _watch(proc, t0, windows)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
            player.kill()
            player.wait()


def startup_parts(model: Path, reps: int) -> dict:
    """Median seconds of: bare interpreter, importing the CLI, importing it and loading the model."""
    snippets = {
        "python": "pass",
        "import_cli": "import anger_stream.cli",
        "import_cli_load_model": f"import anger_stream.cli, anger_stream.model as m\nm.AngerModel({str(model)!r})",
    }
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = {}
    for name, code in snippets.items():
        runs = [
            _time(lambda c=code: subprocess.run([sys.executable, "-c", c], check=True, env=env)) for _ in range(reps)
        ]
        out[name + "_s"] = float(np.median(runs))
    return out


def cli(model: Path, speech: np.ndarray, reps: int) -> dict:
    """CLI cold start and peak RSS (median of `reps` processes) with a breakdown of the start-up time."""
    runs = [cli_run(model, speech) for _ in range(reps)]
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if runs[0][k] is not None}
    out["runs"] = runs
    out["parts"] = startup_parts(model, reps)
    try:
        out["microphone"] = mic_run(model, speech)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        out["microphone"] = {"error": str(exc)}
    return out


class NullModel(AngerModel):
    """A model that costs nothing: what remains of a StreamSet cycle is the Python/numpy work around it."""

    def __init__(self) -> None:  # no session
        pass

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return np.zeros(len(windows), dtype=np.float32)

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict(windows), np.full(len(windows), np.nan, dtype=np.float32)


class StreamLoad:
    """N streams of real speech at distinct offsets, each fed one hop per cycle, on one StreamSet."""

    def __init__(self, streams: StreamSet, speech: np.ndarray, n: int, seed: int = 0) -> None:
        self.set, self.n = streams, n
        self.speech = np.concatenate([speech, speech[: 64 * HOP]])
        self.offsets = np.random.default_rng(seed).integers(0, len(speech) // HOP, n) * HOP
        self.k = 0
        for i in range(n):
            streams.add(i)

    def cycle(self) -> tuple[float, float, int]:
        """Push one hop to every stream, then tick: (push seconds, tick seconds, windows scored)."""
        t0 = time.perf_counter()
        start = (self.offsets + self.k * HOP) % (len(self.speech) - 64 * HOP)
        for i in range(self.n):
            self.set.push(i, self.speech[start[i] : start[i] + HOP])
        t1 = time.perf_counter()
        events = self.set.tick()
        t2 = time.perf_counter()
        self.k += 1
        scored = sum(1 for evs in events.values() for e in evs if isinstance(e, Window) and e.p is not None)
        return t1 - t0, t2 - t1, scored


def measure_streams(make_set: Callable[[], StreamSet], speech: np.ndarray, n: int, cycles: int) -> dict:
    """Steady-state cycle time (push + tick) of n streams: 2 warm-up cycles fill the windows first."""
    load = StreamLoad(make_set(), speech, n)
    for _ in range(2):
        load.cycle()
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    runs = np.array([load.cycle() for _ in range(cycles)])
    cores = (_cpu_s() - cpu0) / (time.perf_counter() - wall0)
    total = runs[:, 0] + runs[:, 1]
    return {
        "streams": n,
        "cycle_median_s": float(np.median(total)),
        "cycle_max_s": float(total.max()),
        "push_median_s": float(np.median(runs[:, 0])),
        "tick_median_s": float(np.median(runs[:, 1])),
        "scored_fraction": float(runs[:, 2].sum() / (n * cycles)),
        "us_per_stream": float(np.median(total) / n * 1e6),
        "cores_used": cores,
    }


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def capacity(make_set: Callable[[], StreamSet], speech: np.ndarray, start: int, cycles: int, steps: int = 3) -> dict:
    """Largest measured N whose median cycle fits in one hop (600 ms): predict N from the per-stream cost, re-measure.

    Each step measures at N = 0.9 x HOP / (cost per stream at the previous N); the answer is the largest N
    measured that fitted (the cycle time is close to linear in N).
    """
    trials = [measure_streams(make_set, speech, start, cycles)]
    for _ in range(steps):
        n = max(16, int(0.9 * HOP_S / (trials[-1]["us_per_stream"] * 1e-6)))
        trials.append(measure_streams(make_set, speech, n, cycles))
    fitting = [t["streams"] for t in trials if t["cycle_median_s"] < HOP_S]
    return {"sustained_streams": max(fitting, default=0), "trials": trials}
