"""Many-stream benchmark: the core's Python-side cost, streams sustained, cores used, model vs Python time, and
the many-stream figure as a share of the bare model's throughput, all measured in one run.

    python -m tools.bench streams [--against REV] [--model M] [--int8 M8] [--quick] [--out docs/benchmarks-streams]

Every figure is measured in a fresh subprocess; with `--against REV`, the `anger_stream` package of that git
revision is measured too, alternating with the working tree's, with the same harness (the StreamSet API
both share), so that old and new are compared side by side under the same load. The machine may be shared:
the load average is recorded with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HOP_S = 0.6
RATES = {"s16le": 16_000, "mulaw": 8_000}
EDGE = 0.97
"""The capacity search's next trial: this share of the streams the last trial's cost per stream says fit in a
hop (a little headroom for the machine's noise; the trials that do not fit are measured and left out)."""


# ---- measurements, each run in its own process (the code measured is whatever `anger_stream` imports) ----


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Timed:
    """A model whose scoring (`score`, what the StreamSet calls) is timed (CPU seconds inside it, summed over
    threads): the model's share."""

    def __init__(self, model: object) -> None:
        self.model, self.seconds, self._lock = model, 0.0, threading.Lock()

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.thread_time()  # CPU time: a thread preempted inside the model is not the model's cost
        scores = self._score(windows)
        with self._lock:
            self.seconds += time.thread_time() - t0
        return scores


def _make_model(path: str | None, timed: list) -> object:
    """An AngerModel (one intra-op thread) or, for None, one that costs nothing; its scoring timed."""
    from anger_stream.model import AngerModel

    class Null(AngerModel):
        def __init__(self) -> None:  # no session
            pass

        def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros(len(windows), dtype=np.float32), np.full(len(windows), np.nan, dtype=np.float32)

    model = Null() if path is None else AngerModel(path, threads=1)
    clock = _Timed(model)
    clock._score = model.score  # type: ignore[attr-defined]
    model.score = clock  # type: ignore[method-assign]
    timed.append(clock)
    return model


class _Load:
    """n streams of real speech at distinct offsets, each fed one hop per cycle: samples (16 kHz floats through
    `push`) or raw call audio (8 kHz mu-law bytes through `run`, as the servers feed it)."""

    def __init__(self, streams: object, speech: np.ndarray, n: int, encoding: str) -> None:
        from tools.channels import mulaw_encode

        self.set, self.n, self.encoding = streams, n, encoding
        rate = RATES[encoding]
        x = speech if rate == 16_000 else speech[::2]  # the 8 kHz stream: a decimation is enough for timing
        self.hop = round(HOP_S * rate)
        loop = np.concatenate([x, x[: 64 * self.hop]])
        self.data = mulaw_encode(loop) if encoding == "mulaw" else loop
        self.offsets = np.random.default_rng(0).integers(0, len(x) // self.hop, n) * self.hop
        self.length = len(x)
        self.source = speech
        self.k = 0
        if encoding == "s16le":
            for i in range(n):
                streams.add(i)

    def windows(self, n: int) -> list[np.ndarray]:
        """n prepared windows of the speech (the model's input), for the bare model."""
        from anger_stream import audio

        x = self.source
        return [audio.prepare_window(x[i * 9600 : i * 9600 + 19_200], 19_200) for i in range(n)]

    def cycle(self) -> tuple[float, float]:
        """One hop to every stream, then a tick: (feeding seconds, tick seconds)."""
        from anger_stream.streams import Feed

        start = (self.offsets + self.k * self.hop) % self.length
        self.k += 1
        t0 = time.perf_counter()
        if self.encoding == "mulaw":
            feeds = tuple(Feed(i, 8_000, "mulaw", self.data[s : s + self.hop], False) for i, s in enumerate(start))
            t1 = time.perf_counter()
            self.set.run(feeds)
            return t1 - t0, time.perf_counter() - t1
        for i in range(self.n):
            self.set.push(i, self.data[start[i] : start[i] + self.hop])
        t1 = time.perf_counter()
        self.set.tick()
        return t1 - t0, time.perf_counter() - t1


def measure(speech: str, model: str | None, n: int, cycles: int, encoding: str, max_batch: int, workers: int) -> dict:
    """Steady-state cycles of n streams (two warm-up cycles first): time per cycle, per stream, cores used and
    the model's share of the CPU time."""
    from anger_stream.streams import StreamSet

    timed: list = []
    streams = StreamSet(_make_model(model, timed), None, max_batch=max_batch, workers=workers)
    load = _Load(streams, np.load(speech), n, encoding)
    for _ in range(2):
        load.cycle()
    timed[0].seconds = 0.0
    cpu0, wall0, load0 = _cpu_s(), time.perf_counter(), os.getloadavg()[0]
    runs = np.array([load.cycle() for _ in range(cycles)])
    wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
    total = runs.sum(axis=1)
    streams.close()
    nearby = {}
    if model:  # the bare model right after, in the same process: the same share of the machine
        from anger_stream.model import AngerModel

        x = np.stack(load.windows(16))
        sessions = [AngerModel(model, threads=1) for _ in range(2)]
        nearby = {f"2x1 batch {b}": _throughput(sessions, x[:b], 1.0) * HOP_S for b in (max_batch, 16)}
    return {
        "streams": n,
        "encoding": encoding,
        "cycle_median_s": float(np.median(total)),
        "feed_median_s": float(np.median(runs[:, 0])),
        "tick_median_s": float(np.median(runs[:, 1])),
        "us_per_stream": float(np.median(total) / n * 1e6),
        "cores_used": cpu / wall,
        "cpu_us_per_stream": cpu / (n * cycles) * 1e6,
        "model_share": timed[0].seconds / cpu if model else 0.0,
        "loadavg": [load0, os.getloadavg()[0]],
        **({"bare_streams": max(nearby.values()), "bare_best": max(nearby, key=nearby.get)} if nearby else {}),
    }


def bare(speech: str, model: str, batches: list[int], seconds: float) -> dict:
    """The bare model's best throughput on 2 cores: two 1-thread sessions on two threads (as the StreamSet
    runs it), or one session with 2 intra-op threads, at each batch size; windows/s and streams' worth."""
    from anger_stream import audio
    from anger_stream.model import AngerModel

    x16 = np.load(speech)
    x = np.stack([audio.prepare_window(x16[i * 9600 : i * 9600 + 19_200], 19_200) for i in range(max(batches))])
    out = {}
    for batch in batches:
        for kind in ("2x1", "1x2"):
            models = [AngerModel(model, threads=1) for _ in range(2)] if kind == "2x1" else [AngerModel(model, 2)]
            out[f"{kind} batch {batch}"] = _throughput(models, x[:batch], seconds)
    best = max(out, key=out.get)
    return {"windows_per_s": out, "best": best, "streams": out[best] * HOP_S, "loadavg": os.getloadavg()[0]}


def _throughput(models: list, x: np.ndarray, seconds: float) -> float:
    """Windows/s of the models predicting batch x over and over, each on a thread of its own."""
    counts = [0] * len(models)
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop:
            models[i].predict(x)
            counts[i] += len(x)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(models))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


# ---- the orchestrating process ----


def _child(pythonpath: str, job: dict) -> dict:
    """Run one job in a fresh process whose `anger_stream` is the first one on `pythonpath` (started in an
    empty folder: `python -m` puts the working folder first on sys.path)."""
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tools.bench.streams", json.dumps(job)]
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=empty, check=False)
    if done.returncode:
        raise SystemExit(f"benchmark job {job} failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = Path(pythonpath.split(":")[0]).resolve() / "anger_stream"
    if Path(out["code"]).resolve().parent != expected:
        raise SystemExit(f"benchmark job measured {out['code']}, not {expected}")
    return out


def _capacity(runs: dict[str, callable], start: int, steps: int) -> dict[str, dict]:
    """Per code, the largest measured N whose median cycle fits in one hop: predict N from the cost per
    stream at the previous N, re-measure; the codes' trials alternate, so that they share the machine's load."""
    trials: dict[str, list[dict]] = {name: [] for name in runs}
    for step in range(steps + 1):
        for name, run in runs.items():
            last = trials[name][-1] if step else None
            trials[name].append(run(int(EDGE * HOP_S / (last["us_per_stream"] * 1e-6)) if last else start))
    out = {}
    for name, ts in trials.items():
        fitting = [t for t in ts if t["cycle_median_s"] < HOP_S]
        best = max(fitting, key=lambda t: t["streams"], default=None)
        out[name] = {"sustained_streams": best["streams"] if best else 0, "at": best, "trials": ts}
    return out


def export(rev: str, into: Path) -> Path:
    """The anger_stream package of a git revision, extracted under `into` (put it first on PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", rev, "anger_stream"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_report(args: argparse.Namespace, command: str) -> dict:
    # here, not at the top: the measuring processes import this module with an older anger_stream first
    from anger_stream.serve.command import MAX_BATCH

    codes = {"new": str(ROOT)}
    tmp = tempfile.TemporaryDirectory()
    if args.against:
        codes = {f"old ({args.against})": f"{export(args.against, Path(tmp.name))}:{ROOT}", **codes}
    models = {"fp32": str(args.model)} | ({"int8": str(args.int8)} if args.int8.is_file() else {})
    n, cycles, reps = (200, 3, 1) if args.quick else (1000, 5, 2)
    from tools.bench.runtime import SPEECH, speech

    np.save(Path(tmp.name) / "speech.npy", speech(args.speech or list(SPEECH), 120))
    talk = str(Path(tmp.name) / "speech.npy")
    results: dict = {"command": command, "loadavg_start": os.getloadavg(), "codes": list(codes), "overhead": {}}
    for rep in range(reps):
        for encoding in ("s16le", "mulaw"):
            for name, path in codes.items():
                job = {
                    "speech": talk,
                    "model": None,
                    "n": n,
                    "cycles": cycles,
                    "encoding": encoding,
                    "max_batch": 4,
                    "workers": 1,
                }
                row = _child(path, {"measure": job})
                results["overhead"].setdefault(f"{name} {encoding}", []).append(row)
                print(f"overhead {name} {encoding} rep {rep}: {row['us_per_stream']:.1f} us/stream", flush=True)
    results["bare"], results["capacity"] = {}, {}
    for model, path_m in models.items():
        results["bare"][model] = _child(
            str(ROOT), {"bare": [talk, path_m, [1, 2, 4, 8, 16, MAX_BATCH], 1.0 if args.quick else 3.0]}
        )
        print(f"bare {model}: {results['bare'][model]['streams']:.0f} streams", flush=True)

        def job(k: int, p: str, m: str = path_m) -> dict:
            spec = {"speech": talk, "model": m, "n": max(k, 16), "cycles": cycles, "encoding": "s16le"}
            return _child(p, {"measure": {**spec, "max_batch": MAX_BATCH, "workers": 2}})

        runs = {name: (lambda k, p=path: job(k, p)) for name, path in codes.items()}
        for name, cap in _capacity(runs, 400 if model == "fp32" else 1000, 1 if args.quick else 3).items():
            at = cap["at"] or {"bare_streams": results["bare"][model]["streams"]}
            cap["share_of_bare"] = cap["sustained_streams"] / at["bare_streams"]
            results["capacity"][f"{name} {model}"] = cap
            print(f"capacity {name} {model}: {cap['sustained_streams']} streams", flush=True)
    results["loadavg_end"] = os.getloadavg()
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out}.md and .json")
    return results


def markdown(r: dict) -> str:
    """The sub-report as Markdown."""
    la = f"load average {r['loadavg_start'][0]:.1f} at the start, {r['loadavg_end'][0]:.1f} at the end"
    lines = [
        "## Many streams: the core's Python side and capacity",
        "",
        f"`{r['command']}` ({la}; every row is the median of its cycles, with the 1-minute load average when it "
        "was measured). The overhead rows use a model that costs nothing (what is left is the Python and numpy "
        "work of one 600 ms cycle: feeding a hop to every stream and a tick); 16 kHz float samples through "
        "`push`, or 8 kHz mu-law bytes through `run` as the servers feed it. Capacity: the most streams whose "
        "cycle fits in 600 ms with `StreamSet(AngerModel(path, threads=1), max_batch=32, workers=2)` (serve's "
        "batch); the bare "
        "model's throughput is measured in the same process right after each trial (two 1-thread sessions at "
        "batch 32 and 16: the same share of the machine; the share of bare is against it), and on its own in the "
        "run (best of batch 1-32, two 1-thread sessions or one 2-thread session). CPU time per stream and cycle "
        'is what a stream costs whatever else runs; "on 2 whole cores" is 1.2 CPU seconds per 600 ms cycle '
        "divided by it: what the code would sustain with both cores to itself (the measured capacity is a lower "
        "bound on a shared machine).",
        "",
        "| code | input | streams | us per stream and cycle | CPU us per stream and cycle | feeding ms | tick ms "
        "| load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, rows in r["overhead"].items():
        code, encoding = key.rsplit(" ", 1)
        for row in rows:
            lines.append(
                f"| {code} | {encoding} | {row['streams']} | {row['us_per_stream']:.1f} | "
                f"{row['cpu_us_per_stream']:.1f} | "
                f"{row['feed_median_s'] * 1e3:.0f} | {row['tick_median_s'] * 1e3:.0f} | {row['loadavg'][0]:.1f} |"
            )
    lines += [
        "",
        "| code | model | streams sustained | bare model then (streams' worth) | share of bare | bare model, "
        "best of batch 1-16 | cores used | model share of CPU | CPU us per stream and cycle | on 2 whole cores "
        "| cycle ms | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, cap in r["capacity"].items():
        code, model = key.rsplit(" ", 1)
        at = cap["at"] or cap["trials"][-1]
        b = r["bare"][model]
        lines.append(
            f"| {code} | {model} | {cap['sustained_streams']} | {at['bare_streams']:.0f} ({at['bare_best']}) | "
            f"{cap['share_of_bare']:.0%} | {b['streams']:.0f} ({b['best']}) | {at['cores_used']:.2f} | "
            f"{at['model_share']:.0%} | {at['cpu_us_per_stream']:.0f} | "
            f"{2 * HOP_S / (at['cpu_us_per_stream'] * 1e-6):.0f} | {at['cycle_median_s'] * 1e3:.0f} | "
            f"{at['loadavg'][0]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", metavar="REV", help="also measure the anger_stream package of this git revision")
    parser.add_argument("--model", type=Path, default=ROOT / "models/anger_fcn.onnx")
    parser.add_argument("--int8", type=Path, default=ROOT / "models/anger_fcn.int8.onnx", help="skipped if missing")
    parser.add_argument("--speech", type=Path, action="append", metavar="MANIFEST", help="as for `runtime`")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks-streams", help="writes OUT.md and .json")


if __name__ == "__main__":  # one measurement, in a process of its own: python -m tools.bench.streams JOB
    import anger_stream

    job = json.loads(sys.argv[1])
    result = measure(**job["measure"]) if "measure" in job else bare(*job["bare"])
    print(json.dumps({**result, "code": anger_stream.__file__}))
