"""Where a running server's CPU goes, by library: Linux `perf` sampling its processes for some seconds.

    shares = await cpu_profile.record([pid, *workers], seconds=12)
    # {"libpython3.11": 43.1, "onnxruntime_pybind11_state": 20.2, "[kernel.kallsyms]": 12.7, ...}

The split between the Python interpreter, the model (onnxruntime), numpy and scipy, and the kernel (sockets,
threads) is what explains a server's cost beyond its model's (docs/telephony.md). Needs `perf` (Debian:
linux-perf) and the permission to trace the processes (root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

SAMPLE_HZ = 499
"""Samples per second per CPU (a prime, so as not to beat with the server's 20 ms and 40 ms cycles)."""


class ProfileError(Exception):
    """perf is missing or could not sample the processes."""


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (serve --workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(p for c in children for p in process_tree(int(c)))]


def library(name: str) -> str:
    """A shared object's short name: "libpython3.11.so.1.0" -> "libpython3.11", "x.cpython-311-...so" -> "x"."""
    return re.sub(r"(\.cpython-\d+.*|\.so(\.[\d.]+)?)$", "", name)


def shares(report: str) -> dict[str, float]:
    """Per-library percentages from `perf report --sort dso --stdio`, largest first."""
    rows = re.findall(r"^\s*([\d.]+)%\s+(\S+)\s*$", report, flags=re.MULTILINE)
    out: dict[str, float] = {}
    for percent, dso in rows:
        out[library(dso)] = out.get(library(dso), 0.0) + float(percent)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def record(pids: list[int], seconds: float) -> dict[str, float]:
    """Sample the processes for `seconds`; their CPU's shares by library (ProfileError without perf)."""
    perf = shutil.which("perf")
    if perf is None:
        raise ProfileError("perf is not installed (Debian: apt install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "perf.data")
        target = ",".join(map(str, pids))
        rec = await asyncio.create_subprocess_exec(
            perf, "record", "-F", str(SAMPLE_HZ), "-p", target, "-o", data, "--", "sleep", f"{seconds:g}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await rec.communicate()
        if rec.returncode or not Path(data).is_file():
            why = (err.decode(errors="replace").strip().splitlines() or [f"exit status {rec.returncode}"])[-1]
            raise ProfileError(f"perf record failed: {why}")
        rep = await asyncio.create_subprocess_exec(
            perf, "report", "-i", data, "--sort", "dso", "--stdio",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await rep.communicate()
    return shares(out.decode(errors="replace"))
