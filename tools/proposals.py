"""Proposed changes to anger_stream (not applied there) and the before/after measurements behind them.

Each proposal is a drop-in replacement of a core function; `patched` swaps it in for a measurement only.
tests/test_bench.py checks that every replacement gives the same results as the code it replaces. Once a
proposal is applied in anger_stream, its function and row here should go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import onnxruntime as ort

from anger_stream import audio, streams
from anger_stream.detector import DetectorConfig, Segment, Stream
from anger_stream.model import AngerModel
from tools.timing import Stats, interleaved, session

HOP = round(audio.HOP_S * audio.SAMPLE_RATE)


def stream_push(self: Stream, samples: np.ndarray) -> None:
    """Proposed Stream.push: replace non-finite samples only when there are any (np.isfinite is ~4x cheaper)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if self._resampler is not None:
        x = self._resampler.process(x)
    self.pending += self.windower.push(x)


def score_windows(model: AngerModel, segments: list[Segment], config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Proposed detector.score_windows: full windows' level and normalisation from one centred float64 copy.

    dBFS is the centred mean square, which normalise() needs anyway, so each full window is converted,
    centred and squared once instead of twice, for the whole batch at once. Partial (end-of-stream)
    windows keep the per-window path: their level is over their real samples, their input zero-padded.
    """
    n = len(segments)
    levels = np.empty(n, dtype=np.float64)
    probs = np.full(n, np.nan, dtype=np.float64)
    full = [i for i, s in enumerate(segments) if len(s.audio) == config.window]
    batch = np.empty((n, config.window), dtype=np.float32)
    if full:
        x = np.stack([segments[i].audio for i in full]).astype(np.float64)
        x -= x.mean(axis=-1, keepdims=True)
        ms = np.mean(np.square(x), axis=-1)  # np.var's arithmetic: the same levels, bit for bit
        levels[full] = 10.0 * np.log10(np.maximum(ms, 10.0 ** (audio.SILENCE_DBFS / 10.0)))
        target = 10.0 ** (audio.TARGET_DBFS / 20.0) * audio.FULL_SCALE
        rms = np.sqrt(ms)
        gain = np.divide(target, rms, out=np.zeros_like(rms), where=rms > 1e-10)
        batch[full] = x * gain[:, None]
    for i, s in enumerate(segments):
        if len(s.audio) != config.window:
            levels[i] = audio.dbfs(s.audio)
            batch[i] = audio.prepare_window(s.audio, config.window)
    loud = np.flatnonzero(levels >= config.min_dbfs)
    if len(loud):
        probs[loud] = model.predict(batch[loud])
    return probs, levels


@contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    """Temporarily replace an attribute (a core function) by a proposal."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class TunedModel(AngerModel):
    """AngerModel with other session options (the proposed model.py change), for measurement."""

    def __init__(self, path: str, threads: int, spinning: bool) -> None:
        super().__init__(path, threads)
        self.session = session(path, threads, spinning)


def _row(change: str, unit: str, before: list[float], after: list[float], scale: float = 1e3) -> dict:
    b, a = Stats.of(before), Stats.of(after)
    return {
        "change": change,
        "unit": unit,
        "before": b.median * scale,
        "after": a.median * scale,
        "speedup": b.median / a.median,
    }


def session_rows(models: dict[str, str], x: np.ndarray, seconds: float) -> list[dict]:
    """onnxruntime options: graph optimisation, spinning, threads; int8 vs float32."""
    fp32 = models["fp32"]
    level = ort.GraphOptimizationLevel

    def run(s: ort.InferenceSession, n: int) -> Callable[[], object]:
        return lambda: s.run(None, {"audio": x[:n]})

    rows = []
    s_off, s_basic, s_all = (
        session(fp32, 1, level=v) for v in (level.ORT_DISABLE_ALL, level.ORT_ENABLE_BASIC, level.ORT_ENABLE_ALL)
    )
    t = interleaved({"off": run(s_off, 1), "basic": run(s_basic, 1), "all": run(s_all, 1)}, seconds * 3)
    rows.append(
        _row("graph optimisation disabled -> ENABLE_BASIC (fp32, 1 window, 1 thread)", "ms", t["off"], t["basic"])
    )
    rows.append(_row("ENABLE_BASIC -> ENABLE_ALL (Conv+ReLU fusion, NCHWc layouts)", "ms", t["basic"], t["all"]))
    for n in (1, 16):
        spin, calm = session(fp32, 2, True), session(fp32, 2, False)
        t = interleaved({"spin": run(spin, n), "calm": run(calm, n)}, seconds * 2)
        rows.append(_row(f"intra-op spinning on -> off (fp32, 2 threads, batch {n})", "ms/call", t["spin"], t["calm"]))
    one, two = session(fp32, 1), session(fp32, 2)
    t = interleaved({"1": run(one, 16), "2": run(two, 16)}, seconds * 2)
    rows.append(_row("1 -> 2 intra-op threads (fp32, batch 16)", "ms/call", t["1"], t["2"]))
    if "int8" in models:
        s8 = session(models["int8"], 1)
        t = interleaved({"fp32": run(s_all, 1), "int8": run(s8, 1)}, seconds * 2)
        rows.append(_row("float32 -> static int8 QDQ per-channel (1 window, 1 thread)", "ms", t["fp32"], t["int8"]))
    return rows


def core_rows(models: dict[str, str], x16: np.ndarray, seconds: float, quick: bool) -> list[dict]:
    """Proposed anger_stream changes, end to end through StreamSet (cycle time per stream, fp32, 2 threads)."""
    from tools.bench_e2e import StreamLoad

    n = 64 if quick else 512
    cycles = 2 if quick else 4
    rows = []

    def cycle_times(model: AngerModel, max_batch: int = 256) -> list[float]:
        load = StreamLoad(streams.StreamSet(model, max_batch=max_batch), x16, n)
        for _ in range(2):
            load.cycle()
        return [sum(load.cycle()[:2]) / n for _ in range(cycles)]

    model = AngerModel(models["fp32"], threads=2)
    base = cycle_times(model)
    with patched(Stream, "push", stream_push):
        push = cycle_times(model)
    rows.append(_row("Stream.push: nan_to_num only if non-finite", "us/stream", base, push, 1e6))
    with patched(Stream, "push", stream_push), patched(streams, "score_windows", score_windows):
        both = cycle_times(model)
    rows.append(
        _row("+ score_windows: one centred float64 pass for level and normalisation", "us/stream", push, both, 1e6)
    )
    for batch in (16, 64):
        rows.append(_row(f"StreamSet max_batch 256 -> {batch}", "us/stream", base, cycle_times(model, batch), 1e6))
    calm = TunedModel(models["fp32"], 2, spinning=False)
    rows.append(_row("StreamSet: intra-op spinning off", "us/stream", base, cycle_times(calm), 1e6))
    return rows


def measure_all(models: dict, x: np.ndarray, x16: np.ndarray, seconds: float, quick: bool) -> list[dict]:
    """The optimisations table: every row measured before/after in this run."""
    paths = {k: str(v) for k, v in models.items()}
    return session_rows(paths, x, seconds) + core_rows(paths, x16, seconds, quick)
