"""python -m tools.bench REPORT [options]: see tools/bench/__init__.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from tools.bench import batch, dashboard, runtime, streams, window


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description="The project's benchmark.")
    reports = parser.add_subparsers(required=True, metavar="REPORT")
    for name, module, text in (
        ("runtime", runtime, "model and runtime figures: docs/benchmarks.md and .json"),
        ("streams", streams, "many-stream core: Python-side cost, capacity, cores, share of the bare model"),
        ("batch", batch, "anger-stream batch throughput: a Markdown table for docs/batch.md"),
        ("dashboard", dashboard, "what serve --metrics and --dashboard cost under load (docs/operations.md)"),
        ("window", window, "single-window latency of several models side by side: OUT.json"),
    ):
        sub = reports.add_parser(name, help=text, description=text)
        module.add_arguments(sub)
        sub.set_defaults(run_report=module.run_report)
    args = parser.parse_args(argv)
    args.run_report(args, shlex.join(["python", "-m", "tools.bench", *argv]))


if __name__ == "__main__":
    main()
