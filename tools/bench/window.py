"""Single-window latency of several models side by side: python -m tools.bench window --model NAME=PATH ...

Each model runs one prepared window of speech at a time on one intra-op thread, the models interleaved in
rounds (`timing.interleaved`), so that a noisy machine slows them alike; the ratio to the first model is the
figure to compare. Writes OUT.json with the command and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tools.bench.runtime import SPEECH, environment, prepared, single_window, speech


def model_arg(text: str) -> tuple[str, Path]:
    """NAME=PATH."""
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH of an existing ONNX file, got {text!r}")
    return name, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=model_arg, action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--speech", type=Path, action="append", metavar="MANIFEST", help="as for runtime")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement time per model")
    parser.add_argument("--out", type=Path, default=Path("docs/window-latency.json"))


def run_report(args: argparse.Namespace, command: str) -> None:
    models = dict(args.model)
    x = prepared(speech(args.speech or list(SPEECH), 30), 8)
    load = os.getloadavg()
    stats = {
        name: {k: v * 1e3 if k in ("median", "p1", "p99") else v for k, v in st.items() if k != "iqr_rel"}
        for name, st in single_window(models, x, args.seconds * len(models)).items()
    }
    first = next(iter(stats.values()))["median"]
    result = {
        "command": command,
        "environment": environment(),
        "load_average": [round(v, 2) for v in (*load, *os.getloadavg())],
        "models": {name: str(path) for name, path in models.items()},
        "single_window_ms": stats,
        "median_ratio_to_first": {name: round(s["median"] / first, 3) for name, s in stats.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in stats.items():
        print(f"{name}: median {s['median']:.3f} ms ({result['median_ratio_to_first'][name]:.2f}x)")
