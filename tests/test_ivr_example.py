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

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ivr_prototype.py"


def _load():
    spec = importlib.util.spec_from_file_location("ivr_prototype", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _window(t_end: float, angry: bool) -> str:
    return json.dumps({"call": "c1", "type": "window", "t_start": t_end - 1.2, "t_end": t_end, "angry": angry})


def test_escalates_once_when_anger_persists(capsys: pytest.CaptureFixture[str]) -> None:
    policy = _load().Escalation(persist=1.5)
    lines = [
        _window(1.2, True),
        json.dumps({"call": "c1", "type": "anger_start", "t": 1.2, "p": 0.9}),
        _window(1.8, True),
        json.dumps({"call": "c1", "type": "anger_end", "t": 2.4, "duration": 1.2, "p_max": 0.9}),  # a break
        _window(3.0, True),
        json.dumps({"call": "c1", "type": "anger_start", "t": 3.0, "p": 0.9}),
        _window(3.6, True),
        _window(4.2, True),  # angry since 3.0: 1.2 s
        _window(4.8, True),  # 1.8 s: escalate
        _window(5.4, True),  # only once
        json.dumps({"call": "c1", "type": "status", "state": "end", "t": 5.5}),
    ]
    for line in lines:
        policy.on_line(line)
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
