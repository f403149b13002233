"""Timing primitives for the benchmark: repeated measurements with warm-up, robust statistics, sessions.

Every figure is a distribution of per-call times; we report the median, the 99th percentile and the
spread (interquartile range relative to the median). `interleaved` times several alternatives in
alternating rounds so that a busy machine slows them alike and their ratio stays meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import onnxruntime as ort

K = TypeVar("K")


@dataclass(frozen=True)
class Stats:
    """Seconds per call (per unit when `per` > 1, e.g. per window of a batch)."""

    n: int
    median: float
    p99: float
    p1: float
    iqr_rel: float

    @classmethod
    def of(cls, seconds: np.ndarray | list[float], per: int = 1) -> Stats:
        s = np.asarray(seconds, dtype=np.float64) / per
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        return cls(len(s), float(med), float(np.percentile(s, 99)), float(np.percentile(s, 1)), float((q3 - q1) / med))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def ms(self) -> str:
        """'median (p99, ±spread)' in milliseconds."""
        return f"{self.median * 1e3:.3f} (p99 {self.p99 * 1e3:.3f}, IQR {100 * self.iqr_rel:.0f}%)"


@dataclass(frozen=True)
class Budget:
    """Seconds of measurement per figure; --quick shrinks everything."""

    quick: bool

    def t(self, full: float) -> float:
        return full / 15 if self.quick else full


def measure(
    fn: Callable[[], object], seconds: float, warmup: int = 5, min_n: int = 7, max_n: int = 5000
) -> list[float]:
    """Call fn `warmup` times, then repeatedly for about `seconds` (between min_n and max_n calls)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_n and (len(times) < min_n or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved(fns: dict[K, Callable[[], object]], seconds: float, rounds: int = 5) -> dict[K, list[float]]:
    """Time each alternative for seconds/rounds/len(fns) per round, alternating, after one warm-up each."""
    times: dict[K, list[float]] = {name: [] for name in fns}
    slot = seconds / rounds / len(fns)
    for fn in fns.values():
        measure(fn, 0.0, warmup=3, min_n=0)
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += measure(fn, slot, warmup=1, min_n=3)
    return times


def session(
    path: str | bytes,
    threads: int = 1,
    spinning: bool = True,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """A CPU session configured like `anger_stream.model.AngerModel`, with the knobs the benchmark varies."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
