"""examples/ivr_prototype.py: the escalation policy, its webhook endpoint, and the program acting on a real call
through `anger-stream serve --webhook`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import ServeProcess, audiosocket_call, make_speech

from anger_stream.serve.webhook import sign

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ivr_prototype.py"
SECRET = b"fedcba9876543210fedcba9876543210"


def _load():
    spec = importlib.util.spec_from_file_location("ivr_prototype", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_escalates_once_when_anger_persists(capsys: pytest.CaptureFixture[str]) -> None:
    policy = _load().Escalation(persist=1.5)
    for event in [
        {"call": "c1", "type": "anger_start", "t": 1.2, "p": 0.9, "onset": 0.0},  # 1.2 s: not yet
        {
            "call": "c1",
            "type": "anger_end",
            "t": 3.0,
            "duration": 2.4,
            "p_max": 0.9,
            "ended_by": "calm",
            "last_angry": 2.4,
        },  # angry for 2.4 s (until last_angry, not t, which adds the hold): escalate
        {"call": "c1", "type": "anger_start", "t": 4.2, "p": 0.9, "onset": 3.0},  # only once
        {"call": "c1", "channel": 1, "type": "anger_start", "t": 9.0, "p": 0.9, "onset": 0.0},  # the agent's side
        {"call": "c2", "type": "anger_start", "t": 1.2, "p": 0.9, "onset": 0.0},
        {"call": "c1", "type": "status", "state": "end", "t": 5.5, "windows": 9},
    ]:
        policy.on_event(event)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [
        {"call": "c1", "action": "escalate", "t": 3.0, "queue": "agents", "angry_for": 2.4},
        {"call": "c1", "action": "ended", "t": 5.5, "state": "end", "escalated": True},
    ]
    assert list(policy.calls) == ["c2"]


def test_the_endpoint_verifies_and_handles_each_event_once(capsys: pytest.CaptureFixture[str]) -> None:
    module = _load()
    endpoint = module.Endpoint(SECRET, module.Escalation(persist=1.0))
    body = json.dumps({"id": "e1", "call": "c", "type": "anger_start", "t": 1.2, "p": 0.9, "onset": 0.0}).encode()
    timestamp = str(int(time.time()))
    headers = {"X-Anger-Timestamp": timestamp, "X-Anger-Signature": sign(SECRET, timestamp, body)}
    assert module.verify(SECRET, headers, body)  # the example's standalone check agrees with the server's signing
    assert endpoint.post({**headers, "X-Anger-Signature": "sha256=00"}, body) == 401
    assert endpoint.post({**headers, "X-Anger-Timestamp": str(int(time.time()) - 3600)}, body) == 401
    assert endpoint.post(headers, body) == 204
    assert endpoint.post(headers, body) == 204  # a retry: answered, not acted on again
    assert [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()] == ["escalate"]


def test_the_program_acts_on_the_webhooks_of_a_real_call(tmp_path: Path) -> None:
    speech = make_speech(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode() + "\n")
    cmd = [sys.executable, str(EXAMPLE), "--listen", "127.0.0.1:0", "--secret-file", str(secret), "--persist", "1"]
    ivr = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        url = json.loads(ivr.stdout.readline())["listening"] + "anger"
        server = ServeProcess("--threshold", "0", "--webhook", url, "--webhook-secret-file", str(secret))
        call = audiosocket_call(server.ports["audiosocket"], speech)
        lines = server.call_events(call)
        deadline, out = time.monotonic() + 20, []
        while time.monotonic() < deadline and not any(o.get("action") == "ended" for o in out):
            out.append(json.loads(ivr.stdout.readline()))
    finally:
        if server is not None:
            assert server.stop() == 0
        ivr.terminate()
        assert ivr.wait(15) == 0
    start = next(e for e in lines if e["type"] == "anger_start")
    assert out[0] == {"call": call, "action": "escalate", "t": start["t"], "queue": "agents",
                      "angry_for": round(start["t"] - start["onset"], 2)}  # fmt: skip
    assert out[-1] == {"call": call, "action": "ended", "t": lines[-1]["t"], "state": "end", "escalated": True}
