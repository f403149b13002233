"""Help a person can read, the module entry point and the meter's last frame."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_cli
from rich.console import Console

from anger_stream.display import Meter
from anger_stream.events import AngerEnd, AngerStart, Status, Window

COMMANDS = ["", "batch", "report", "serve", "calibrate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_internal_types(command: str) -> None:
    result = run_cli(*command.split(), "-h")
    assert result.returncode == 0, result.stderr.decode()
    text = " ".join(result.stdout.decode().split())
    for internal in ("<", "{", "list[", "range>", "[default: mix] [default: mix]"):
        assert internal not in text, f"{command or 'anger-stream'} -h shows {internal!r}"


def test_help_reads_like_the_readme() -> None:
    top = run_cli("-h").stdout.decode()
    assert all(name in top for name in ("batch", "report", "serve", "calibrate"))
    batch = " ".join(run_cli("batch", "-h").stdout.decode().split())
    assert "anger-stream batch [OPTIONS] PATH..." in batch
    assert "--workers N" in batch and "--timeout SECONDS" in batch and "--scheduler ADDRESS" in batch
    assert "--audiosocket HOST:PORT" in " ".join(run_cli("serve", "-h").stdout.decode().split())


def test_python_m_is_the_command() -> None:
    module = subprocess.run([sys.executable, "-m", "anger_stream", "--version"], capture_output=True, timeout=60)
    assert module.returncode == 0 and module.stdout == run_cli("--version").stdout
    refused = subprocess.run([sys.executable, "-m", "anger_stream", "--threshold", "2"], capture_output=True)
    assert refused.returncode == 2 and refused.stderr.startswith(b"anger-stream: error: ")


def test_meter_does_not_say_calm_beside_the_last_angry_window() -> None:
    console = Console(record=True, width=120, force_terminal=False)
    meter = Meter(0.6, "call.wav", console)
    with meter:
        meter.update([Window(0.0, 1.2, 0.93, True, -20.0), AngerStart(1.2, 0.93, 0.0)])
        meter.update([AngerEnd(1.8, 0.6, 0.93), Status("end", 1.8, {})])
    last = console.export_text().split("anger-stream  call.wav")[-1]
    assert "calm" not in last and "ended" in last and "p=0.93" in last, last
