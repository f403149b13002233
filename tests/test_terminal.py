"""The live meter as a person sees it: the CLI in a real terminal (tmux), stdout piped or on the terminal."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI

pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux for a real terminal")


def run_in_tmux(tmp_path: Path, command: str) -> str:
    """Run a shell command in a fresh 120x30 tmux session until it exits; return the screen."""
    session = f"anger-{tmp_path.name}"
    done = tmp_path / "done"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", f"{command}; touch {done}; sleep 30"],
        check=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not done.exists():
            assert time.monotonic() < deadline, "the CLI did not finish in the terminal"
            time.sleep(0.2)
        return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_meter_on_terminal_json_to_pipe(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    screen = run_in_tmux(tmp_path, f"'{CLI}' --input '{speech_wav}' --threshold 0.6 > '{out}'")
    assert "threshold 0.60" in screen and "windows" in screen and "dBFS" in screen
    assert '"type"' not in screen  # no JSON leaks onto the terminal
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events[0]["state"] == "start" and events[-1]["state"] == "end"


def test_meter_and_json_share_the_terminal(speech_wav: Path, tmp_path: Path) -> None:
    screen = run_in_tmux(tmp_path, f"'{CLI}' --input '{speech_wav}' --threshold 0.6")
    rows = [r for r in screen.splitlines() if r.strip()]
    json_rows = [r for r in rows if r.startswith('{"type":"window"')]
    assert len(json_rows) >= 4
    assert sum("threshold 0.60" in r for r in rows) == 1  # one meter, redrawn below the lines, not repeated
    assert rows.index(next(r for r in rows if "threshold 0.60" in r)) > rows.index(json_rows[-1])


def test_quiet_turns_the_meter_off(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    screen = run_in_tmux(tmp_path, f"'{CLI}' --input '{speech_wav}' --quiet > '{out}'")
    assert "threshold" not in screen and out.read_text().count("\n") >= 5
