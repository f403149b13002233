"""tools.evaluate.false_alarms: the README's false-alarm table from a few real test-speaker clips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tools.evaluate import false_alarms


def test_table_from_real_clips(shared: Path, tmp_path: Path, capsys) -> None:
    data = shared / "data" / "ravdess"
    with (data / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["speaker"] == "23"][:12] + [r for r in rows if r["speaker"] == "05"][:3]
    manifest = tmp_path / "ravdess" / "manifest.csv"
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(data / r["path"])} for r in picked)
    out = tmp_path / "fa.json"
    false_alarms.main(["--model", "fp32", "--manifest", str(manifest), "--json", str(out)])
    result = json.loads(out.read_text())
    reference = [r for r in picked if r["speaker"] == "23" and r["anger"] == "0"]  # actor 05 trains the model
    assert result["clips"] == len(reference) and result["speakers"] == ["ravdess:23"]
    for channel in false_alarms.CHANNELS:
        pooled = result["channels"][channel]["all"]
        assert pooled == result["channels"][channel]["ravdess"]
        assert [row["threshold"] for row in pooled["table"]] == pytest.approx([0.5 + 0.05 * i for i in range(10)])
        for row in pooled["table"]:
            fa = row["false_alarms_per_minute"]
            assert 0 <= fa["patience_2"] <= fa["patience_1"]
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 12 and table[2].startswith("| 0.50 |")
