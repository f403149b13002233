"""The runtime report: the model and runtime figures of docs/benchmarks.md and docs/benchmarks.json.

Single-window latency (onnxruntime vs PyTorch eager vs openSMILE eGeMAPS), batched throughput, FLOP/s
against the measured matmul peak, offline scoring speed, CLI cold start and RSS, StreamSet capacity, the
Python side's cost per stream, and the optimisations table (session and StreamSet settings measured
before/after in this run, interleaved). All figures come from one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import soundfile as sf

from anger_stream import audio
from anger_stream.detector import windows
from anger_stream.model import AngerModel
from anger_stream.streams import StreamSet
from tools.bench import e2e, optimisations, peak
from tools.bench.onnxgraph import flops_per_window
from tools.bench.report import write_markdown
from tools.bench.timing import Budget, Stats, interleaved, session
from tools.manifest import SHARED, load_manifest

WINDOW, HOP = audio.WINDOW, audio.HOP
SPEECH = (SHARED / "data" / "emodb" / "manifest.csv", SHARED / "data" / "ravdess" / "manifest.csv")
"""The default --speech manifests: EmoDB and RAVDESS in the project's shared data folder."""
BATCHES = (1, 4, 16, 64, 256)


def environment() -> dict:
    """CPU, cores, library versions and how busy the machine was."""
    import opensmile
    import scipy
    import torch

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "avx512_vnni": "avx512_vnni" in flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "opensmile": opensmile.__version__,
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def speech(manifests: Sequence[Path], seconds: float, seed: int = 0) -> np.ndarray:
    """Real speech at 16 kHz: shuffled test-split clips of the manifests concatenated to `seconds`."""
    clips = [c for m in manifests for c in load_manifest(m, "test")]
    parts, total = [], 0
    for i in np.random.default_rng(seed).permutation(len(clips)):
        x, rate = sf.read(str(clips[i].path), dtype="float32", always_2d=False)
        parts.append(audio.resample(audio.mixdown(x), rate))
        total += len(parts[-1])
        if total >= seconds * audio.SAMPLE_RATE:
            break
    return np.concatenate(parts)[: round(seconds * audio.SAMPLE_RATE)]


def prepared(x: np.ndarray, n: int) -> np.ndarray:
    """n prepared windows (the model's input) of the runtime's windows of speech, gated like the runtime."""
    segs = [w.audio for w in windows(x) if audio.dbfs(w.audio) >= audio.MIN_DBFS]
    return np.stack([audio.prepare_window(segs[i % len(segs)], WINDOW) for i in range(n)])


def run_ort(sess: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    return lambda: sess.run(None, {"audio": x})


def single_window(models: dict[str, Path], x: np.ndarray, seconds: float) -> dict:
    """Latency of one window on 1 intra-op thread per model, interleaved for about `seconds` in all."""
    sessions = {name: session(str(path)) for name, path in models.items()}
    times = interleaved({name: run_ort(s, x[:1]) for name, s in sessions.items()}, seconds)
    return {name: Stats.of(t).as_dict() for name, t in times.items()}


def torch_eager(model: Path, x: np.ndarray, b: Budget) -> dict:
    """PyTorch eager on the ONNX weights (1 thread) vs onnxruntime (1 thread): agreement and latency ratio."""
    import torch

    from tools.bench.onnxgraph import torch_network

    torch.set_num_threads(1)
    net = torch_network(model)
    sess = session(str(model))
    with torch.inference_mode():
        p_torch = net(torch.from_numpy(x[:32])).numpy()
        one = torch.from_numpy(x[:1])
        times = interleaved({"onnxruntime": run_ort(sess, x[:1]), "torch": lambda: net(one)}, b.t(8))
    p_ort = sess.run(None, {"audio": x[:32]})[0]
    ort_s, torch_s = (Stats.of(times[k]) for k in ("onnxruntime", "torch"))
    return {
        "max_abs_diff_p": float(np.abs(p_ort - p_torch).max()),
        "onnxruntime": ort_s.as_dict(),
        "torch": torch_s.as_dict(),
        "speedup": torch_s.median / ort_s.median,
    }


def egemaps(model: Path, raw: np.ndarray, x: np.ndarray, b: Budget) -> dict:
    """openSMILE eGeMAPSv02 functionals of one raw window vs the network on it (1 thread), interleaved."""
    import opensmile

    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    sess = session(str(model))
    times = interleaved(
        {"onnxruntime": run_ort(sess, x[:1]), "egemaps": lambda: smile.process_signal(raw, audio.SAMPLE_RATE)},
        b.t(8),
    )
    ort_s, smile_s = Stats.of(times["onnxruntime"]), Stats.of(times["egemaps"])
    return {"onnxruntime": ort_s.as_dict(), "egemaps": smile_s.as_dict(), "speedup": smile_s.median / ort_s.median}


def throughput(models: dict[str, Path], x: np.ndarray, flops: int, b: Budget) -> list[dict]:
    """Windows/s and real-time streams for each model x threads x batch size (batch sizes interleaved)."""
    rows = []
    batches = BATCHES[:4] if b.quick else BATCHES
    for name, path in models.items():
        for threads in (1, 2):
            sess = session(str(path), threads)
            times = interleaved({n: run_ort(sess, x[:n]) for n in batches}, b.t(1.5) * len(batches))
            for batch in batches:
                stats = Stats.of(times[batch], per=batch)
                rate = 1.0 / stats.median
                rows.append(
                    {
                        "model": name,
                        "threads": threads,
                        "batch": batch,
                        "ms_per_window": stats.median * 1e3,
                        "p99_ms_per_window": stats.p99 * 1e3,
                        "iqr_rel": stats.iqr_rel,
                        "windows_per_s": rate,
                        "streams": rate * audio.HOP_S,
                        "gflops": rate * flops / 1e9,
                    }
                )
    return rows


def hardware(flops: int, rows: list[dict], b: Budget) -> dict:
    """Measured matmul peaks (float32: onnxruntime and numpy; int8: MatMulInteger) and achieved/peak.

    A peak is the best median over square sizes 256, 512 and 1024 (smaller ones stay in cache).
    """
    sizes = (256, 512) if b.quick else (256, 512, 1024)
    runs: dict[str, dict[int, float]] = {}
    for threads in (1, 2):
        for size in sizes:
            measured = {
                "fp32_ort": peak.ort_matmul(size, threads, False, b.t(1.0)),
                "fp32_numpy": peak.numpy_matmul(size, threads, b.t(1.0)),
                "int8_ort": peak.ort_matmul(size, threads, True, b.t(1.0)),
            }
            for key, value in measured.items():
                runs.setdefault(f"{key}_{threads}t", {})[size] = value
    peaks = {k: max(v.values()) for k, v in runs.items()}
    for row in rows:
        kind = "int8" if row["model"] == "int8" else "fp32"
        ref = max(v for k, v in peaks.items() if k.startswith(kind) and k.endswith(f"_{row['threads']}t"))
        row["peak_fraction"] = row["gflops"] * 1e9 / ref
    return {"flops_per_window": flops, "peak_flops": peaks, "by_size": runs}


def best_small_batch(rows: list[dict]) -> dict[str, int]:
    """Per model, the batch size of at most 4 with the most windows/s on 1 thread (the StreamSet max_batch)."""
    best: dict[str, dict] = {}
    for r in rows:
        if (
            r["threads"] == 1
            and r["batch"] <= 4
            and r["windows_per_s"] > best.get(r["model"], {}).get("windows_per_s", 0)
        ):
            best[r["model"]] = r
    return {name: r["batch"] for name, r in best.items()}


def streams(models: dict[str, Path], x: np.ndarray, batches: dict[str, int], b: Budget) -> dict:
    """StreamSet capacity on 2 cores per model: StreamSet(AngerModel(path, threads=1), max_batch, workers=2).

    Also the cycle cost without any model ("overhead", 1 thread), the ceiling that the Python side alone sets.
    """
    n, cycles = (64, 2) if b.quick else (1000, 5)
    out: dict = {
        "overhead": e2e.measure_streams(lambda: StreamSet(e2e.NullModel(), None, max_batch=4, workers=1), x, n, cycles),
    }
    for name, path in models.items():
        one = AngerModel(path, threads=1)
        out[name] = e2e.capacity(
            lambda m=one, k=batches[name]: StreamSet(m, None, max_batch=k, workers=2),
            x,
            64 if b.quick else 256,
            2 if b.quick else 5,
            steps=2 if b.quick else 3,
        )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/anger_fcn.onnx"))
    parser.add_argument("--int8", type=Path, default=Path("models/anger_fcn.int8.onnx"), help="skipped if missing")
    parser.add_argument(
        "--speech",
        type=Path,
        action="append",
        metavar="MANIFEST",
        help="corpus manifest.csv whose test clips are the speech (repeatable; default: EmoDB and RAVDESS in "
        f"{SHARED / 'data'}, or $ANGER_SHARED/data)",
    )
    parser.add_argument("--quick", action="store_true", help="a ~45 s smoke run")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="writes OUT.md and OUT.json")


def run_report(args: argparse.Namespace, command: str) -> None:
    """Every section in turn (each printed with its seconds), then OUT.json and OUT.md."""
    manifests = args.speech or list(SPEECH)
    missing = [str(m) for m in manifests if not m.is_file()]
    if missing:
        raise SystemExit(f"error: speech manifest not found: {', '.join(missing)} (give --speech MANIFEST)")
    b = Budget(args.quick)
    t_start = time.perf_counter()
    models = {"fp32": args.model} | ({"int8": args.int8} if args.int8.is_file() else {})
    model_proto = onnx.load(str(args.model))
    flops = flops_per_window(model_proto, WINDOW)
    x16 = speech(manifests, 90 if args.quick else 240)
    x = prepared(x16, max(BATCHES))
    results: dict = {
        "command": command,
        "environment": environment(),
        "quick": args.quick,
        "models": {k: str(v) for k, v in models.items()},
        "speech": [str(m) for m in manifests],
    }
    results["metadata"] = {p.key: p.value for p in model_proto.metadata_props if p.key in ("variant", "version")}
    results["flops_per_window"] = flops
    sections: dict[str, Callable[[], object]] = {
        "single_window": lambda: single_window(models, x, b.t(6)),
        "torch": lambda: torch_eager(args.model, x, b),
        "egemaps": lambda: egemaps(args.model, x16[HOP : HOP + WINDOW], x, b),
        "throughput": lambda: throughput(models, x, flops, b),
        "hardware": lambda: hardware(flops, results["throughput"], b),
        "offline": lambda: e2e.offline(args.model, x16, 30 if args.quick else 600),
        "cli": lambda: e2e.cli(args.model, x16, 1 if args.quick else 3),
        "max_batch": lambda: best_small_batch(results["throughput"]),
        "streams": lambda: streams(models, x16, results["max_batch"], b),
        "python_side": lambda: {k: v.as_dict() for k, v in optimisations.python_side(x16, b.t(2.0)).items()},
        "optimisations": lambda: optimisations.measure_all(models, x, x16, results["max_batch"], b),
    }
    results["section_s"] = {}
    for name, section in sections.items():
        t0 = time.perf_counter()
        results[name] = section()
        results["section_s"][name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {results['section_s'][name]} s", flush=True)
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out.with_suffix(".md"))
    print(f"wrote {args.out}.md and .json in {results['elapsed_s']:.0f} s")
