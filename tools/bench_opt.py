"""The optimisations table: each change measured before/after in the same run, alternating between them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from anger_stream.detector import DetectorConfig, Segment, Stream
from anger_stream.detector import score_windows as current_score
from anger_stream.model import AngerModel
from anger_stream.streams import StreamSet
from tools.bench_e2e import NullModel, StreamLoad
from tools.proposals import FastStream, ProposedStreamSet, TunedModel
from tools.proposals import score_windows as proposed_score
from tools.timing import Budget, Stats, interleaved, session


def row(change: str, unit: str, before: list[float], after: list[float], scale: float = 1e3) -> dict:
    """One table row from two samples of times (medians, scaled to `unit`)."""
    b, a = Stats.of(before), Stats.of(after)
    return {
        "change": change,
        "unit": unit,
        "before": b.median * scale,
        "after": a.median * scale,
        "speedup": b.median / a.median,
    }


def session_rows(models: dict[str, str], x: np.ndarray, seconds: float, big: int) -> list[dict]:
    """onnxruntime options: graph optimisation, spinning, threads, batch size; int8 vs float32."""
    fp32 = models["fp32"]
    level = ort.GraphOptimizationLevel

    def run(s: ort.InferenceSession, n: int) -> Callable[[], object]:
        return lambda: s.run(None, {"audio": x[:n]})

    s_off, s_basic, s_all = (
        session(fp32, 1, level=v) for v in (level.ORT_DISABLE_ALL, level.ORT_ENABLE_BASIC, level.ORT_ENABLE_ALL)
    )
    t = interleaved({"off": run(s_off, 1), "basic": run(s_basic, 1), "all": run(s_all, 1)}, seconds * 3)
    rows = [
        row("graph optimisation off -> ENABLE_BASIC (fp32, 1 window, 1 thread)", "ms", t["off"], t["basic"]),
        row("ENABLE_BASIC -> ENABLE_ALL (current; Conv+ReLU fusion, NCHWc)", "ms", t["basic"], t["all"]),
    ]
    for name, path in models.items():
        one = session(path, 1)
        t = interleaved({"big": run(one, big), "4": run(one, 4)}, seconds * 2)
        per_window = [v / big for v in t["big"]], [v / 4 for v in t["4"]]
        rows.append(row(f"batch {big} -> 4 ({name}, 1 thread)", "ms/window", *per_window))
    for n in (1, 16):
        spin, calm = session(fp32, 2, True), session(fp32, 2, False)
        t = interleaved({"spin": run(spin, n), "calm": run(calm, n)}, seconds * 2)
        rows.append(row(f"intra-op spinning on -> off (fp32, 2 threads, batch {n})", "ms/call", t["spin"], t["calm"]))
    for n in (1, 4, big):
        one, two = session(fp32, 1), session(fp32, 2)
        t = interleaved({"1": run(one, n), "2": run(two, n)}, seconds * 2)
        rows.append(row(f"1 -> 2 intra-op threads (fp32, batch {n})", "ms/call", t["1"], t["2"]))
    if "int8" in models:
        t = interleaved({"fp32": run(s_all, 1), "int8": run(session(models["int8"], 1), 1)}, seconds * 2)
        rows.append(row("float32 -> static int8 QDQ per-channel (1 window, 1 thread)", "ms", t["fp32"], t["int8"]))
    return rows


def streamset_rows(name: str, path: str, x16: np.ndarray, batch: int, n: int, cycles: int) -> list[dict]:
    """The proposed StreamSet changes, cumulative, at n streams: cycle time (push + tick) per stream."""
    two, one = AngerModel(path, threads=2), AngerModel(path, threads=1)
    steps: list[tuple[str, Callable[[], StreamSet]]] = [
        ("current StreamSet (2 intra-op threads, max_batch 256)", lambda: StreamSet(two)),
        ("Stream.push: nan_to_num only when needed", lambda: ProposedStreamSet(two, fast_push=True)),
        (
            "score_windows: level and normalisation from one centred copy",
            lambda: ProposedStreamSet(two, fast_push=True, fast_score=True),
        ),
        (
            "2 worker threads x 1-thread session instead of 2 intra-op threads",
            lambda: ProposedStreamSet(one, 256, 2, fast_push=True, fast_score=True),
        ),
        (
            f"max_batch 256 -> {batch}",
            lambda: ProposedStreamSet(one, batch, 2, fast_push=True, fast_score=True),
        ),
    ]
    loads = [StreamLoad(make(), x16, n) for _, make in steps]
    for load in loads:
        load.cycle()
        load.cycle()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(cycles):
        for load, t in zip(loads, times, strict=True):
            t.append(sum(load.cycle()[:2]) / n)
    return [
        row(f"{name} StreamSet, {n} streams: {steps[i][0]}", "us/stream", times[i - 1], times[i], 1e6)
        for i in range(1, len(steps))
    ] + [row(f"{name} StreamSet, {n} streams: all of the above", "us/stream", times[0], times[-1], 1e6)]


def spinning_row(path: str, x16: np.ndarray, n: int, cycles: int) -> dict:
    """Intra-op spinning off for the current StreamSet on 2 threads."""
    loads = {k: StreamLoad(StreamSet(TunedModel(path, 2, k == "spin")), x16, n) for k in ("spin", "calm")}
    times: dict[str, list[float]] = {k: [] for k in loads}
    for load in loads.values():
        load.cycle()
        load.cycle()
    for _ in range(cycles):
        for k, load in loads.items():
            times[k].append(sum(load.cycle()[:2]) / n)
    return row(f"current StreamSet, {n} streams: intra-op spinning off", "us/stream", times["spin"], times["calm"], 1e6)


def preparation_rows(x16: np.ndarray, seconds: float) -> list[dict]:
    """The two Python-side proposals in isolation (no model): pushing 600 ms, preparing 4 windows."""
    config = DetectorConfig()
    chunk = x16[: config.hop]
    streams = {"current": Stream(config), "proposed": FastStream(config)}

    def push(stream: Stream) -> Callable[[], object]:
        return lambda: (stream.push(chunk), stream.take())

    t = interleaved({k: push(s) for k, s in streams.items()}, seconds)
    rows = [row("Stream.push of 600 ms: nan_to_num only when needed", "us", t["current"], t["proposed"], 1e6)]
    segments = [Segment(i * config.hop, x16[i * config.hop : i * config.hop + config.window]) for i in range(4)]
    null = NullModel()
    t = interleaved(
        {
            "current": lambda: current_score(null, segments, config),
            "proposed": lambda: proposed_score(null, segments, config),
        },
        seconds,
    )
    rows.append(
        row("score_windows of 4 windows without the model: one centred copy", "us", t["current"], t["proposed"], 1e6)
    )
    return rows


def measure_all(models: dict, x: np.ndarray, x16: np.ndarray, batches: dict[str, int], b: Budget) -> list[dict]:
    """Every row of the optimisations table; `batches`: the proposed StreamSet max_batch per model."""
    paths = {k: str(v) for k, v in models.items()}
    n, cycles = (64, 2) if b.quick else (300, 8)
    rows = session_rows(paths, x, b.t(1.0), 64 if b.quick else 256) + preparation_rows(x16, b.t(2.0))
    for name, path in paths.items():
        rows += streamset_rows(name, path, x16, batches[name], n, cycles)
    rows.append(spinning_row(paths["fp32"], x16, n, cycles))
    return rows
