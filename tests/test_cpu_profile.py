"""The load test's server profile: perf's report read into shares by library, and a real recording."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

import pytest

from tools import cpu_profile

REPORT = """# Samples: 2K of event 'cpu-clock:ppp'
#
# Shared Object
# .......................................................
#
    43.14%  libpython3.11.so.1.0
    20.23%  onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so
    12.67%  [kernel.kallsyms]
     6.09%  libc.so.6
     0.16%  [vdso]
"""


def test_the_report_becomes_shares_by_library_largest_first() -> None:
    shares = cpu_profile.shares(REPORT)
    assert shares == {
        "libpython3.11": 43.14,
        "onnxruntime_pybind11_state": 20.23,
        "[kernel.kallsyms]": 12.67,
        "libc": 6.09,
        "[vdso]": 0.16,
    }
    assert cpu_profile.shares("# nothing sampled\n") == {}


def test_a_busy_python_process_is_mostly_the_interpreter() -> None:
    if shutil.which("perf") is None:
        pytest.skip("needs perf (Debian: linux-perf)")
    busy = subprocess.Popen([sys.executable, "-c", "while True: sum(range(1000))"])
    try:
        assert cpu_profile.process_tree(busy.pid) == [busy.pid]
        try:
            shares = asyncio.run(cpu_profile.record([busy.pid], 1.0))
        except cpu_profile.ProfileError as exc:  # perf present, tracing not permitted here
            pytest.skip(str(exc))
    finally:
        busy.kill()
        busy.wait()
    assert max(shares, key=shares.get).startswith("libpython"), shares
