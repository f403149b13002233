"""The soak command against a real server: calls join and leave, a line a minute, a summary with nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_soak_counts_every_window_of_calls_joining_and_leaving(speech_wav: Path) -> None:
    command = [sys.executable, "-m", "tools.soak", "--minutes", "0.15", "--calls", "3", "--call-seconds", "2"]
    command += ["--file", str(speech_wav), "--workers", "1", "--warm-up", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *minutes, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert summary["summary"] and minutes, result.stdout
    assert summary["calls_started"] >= 5  # a call joins every 2/3 s for 9 s
    assert summary["calls_completed"] == summary["calls_started"] and summary["calls_failed"] == 0
    assert summary["windows_expected"] > 0 and summary["windows_lost"] == 0
    assert minutes[-1]["server_rss_mb"] > 0 and minutes[-1]["server_fds"] > 0
    assert summary["fds_after_warm_up"][0] > 0
