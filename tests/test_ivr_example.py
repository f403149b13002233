"""examples/ivr_prototype.py: the escalation policy, and the program taking a real call."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import audiosocket_call, make_speech

from anger_stream.events import AngerEnd, AngerStart, Status, Window

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ivr_prototype.py"


def _load():
    spec = importlib.util.spec_from_file_location("ivr_prototype", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _window(t_end: float, angry: bool) -> tuple[str, Window]:
    return "c1", Window(t_end - 1.2, t_end, 0.9 if angry else 0.1, angry, -20.0)


def test_escalates_once_when_anger_persists(capsys: pytest.CaptureFixture[str]) -> None:
    policy = _load().Escalation(persist=1.5)
    policy.on_events(
        [
            _window(1.2, True),
            ("c1", AngerStart(1.2, 0.9, 0.0)),
            _window(1.8, True),
            ("c1", AngerEnd(2.4, 1.2, 0.9)),  # a break
            _window(3.0, True),
            ("c1", AngerStart(3.0, 0.9, 1.8)),
            _window(3.6, True),
            _window(4.2, True),  # angry since 3.0: 1.2 s
            _window(4.8, True),  # 1.8 s: escalate
            _window(5.4, True),  # only once
            ("c1", Status("end", 5.5, {"windows": 9})),
        ]
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [
        {"call": "c1", "action": "escalate", "t": 4.8, "queue": "agents", "angry_for": 1.8},
        {"call": "c1", "action": "ended", "t": 5.5, "state": "end", "escalated": True},
    ]
    assert policy.calls == {}


def test_the_program_takes_a_call_and_escalates(tmp_path: Path) -> None:
    speech = make_speech(tmp_path)
    cmd = [sys.executable, str(EXAMPLE), "--audiosocket", "127.0.0.1:0", "--persist", "1.2", "--threshold", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listening = json.loads(proc.stdout.readline())
        call = audiosocket_call(listening["port"], speech)
        deadline, out = time.monotonic() + 20, []
        while time.monotonic() < deadline and not any(o.get("action") == "ended" for o in out):
            out.append(json.loads(proc.stdout.readline()))
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert out[0] == {"call": call, "action": "escalate", "t": 2.4, "queue": "agents", "angry_for": 1.2}
    assert out[-1] == {"call": call, "action": "ended", "t": out[-1]["t"], "state": "end", "escalated": True}
