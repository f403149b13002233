"""tools.evaluate.floor end to end: synthetic calls of the test speakers through a real `anger-stream serve`
over AudioSocket in real time, and the report's structure and counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_floor_reports_every_call_and_its_segments(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    manifests = [a for m in ("ravdess", "emodb") for a in ("--manifest", str(shared / "data" / m / "manifest.csv"))]
    cmd = [sys.executable, "-m", "tools.evaluate.floor", "--calls", "4", "--angry", "2", "--call-seconds", "15"]
    done = subprocess.run(
        [*cmd, *manifests, "--ramp", "1", "--threshold", "0.6", "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert json.loads(done.stdout) == summary
    calls = result["calls"]
    angry = [c for c in calls if "passage" in c]
    calm = [c for c in calls if "passage" not in c]
    assert (summary["calls"], summary["calls_ended"], len(angry), len(calm)) == (4, 4, 2, 2)
    assert {c["corpus"] for c in angry} == {"ravdess", "emodb"}  # spread over the corpora
    for c in angry:
        a, b = c["passage"]
        assert 0 < a < b < c["seconds"] and 17 < b - a < 23
        assert c["segments_in_passage"] + c["segments_outside"] == c["segments"]
        assert c["caught"] == (c["segments_in_passage"] > 0) == (c["delay_s"] is not None)
    assert summary["angry_caught"] >= 1  # 20 s of acted anger at a low threshold
    assert summary["segments_in_passage"] == [c["segments_in_passage"] for c in angry]
    assert summary["false_alarms"] == sum(c["segments"] for c in calm)
    assert 0 < summary["calm_speech_hours"] * 3600 <= sum(c["seconds"] for c in calm)
    assert 0 < summary["server_cpu_percent"] < 400


def test_floor_refuses_more_calls_than_the_speakers_give(shared: Path, tmp_path: Path) -> None:
    manifest = shared / "data" / "ravdess" / "manifest.csv"
    done = subprocess.run(
        [sys.executable, "-m", "tools.evaluate.floor", "--calls", "400", "--call-seconds", "600",
         "--manifest", str(manifest), "--json", str(tmp_path / "f.json")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.startswith("floor: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "f.json").exists()
