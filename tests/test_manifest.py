"""Speaker-disjoint splits: string speaker ids of any shape load, unknown corpora are test-only."""

from __future__ import annotations

from pathlib import Path

from tools.manifest import load_manifest, speaker_split


def test_splits_by_corpus() -> None:
    assert [speaker_split("ravdess", s) for s in ("01", "17", "24")] == ["train", "val", "test"]
    assert [speaker_split("ased", s) for s in ("01", "02", "05")] == ["train", "val", "test"]
    assert [speaker_split("nemo", s) for s in ("KD0", "TP0", "EB0", "KS0", "SM0")] == [
        "test",
        "test",
        "val",
        "val",
        "train",
    ]


def test_unknown_corpus_with_string_ids_is_test_only(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,corpus,speaker,anger,duration_s\na.flac,mycalls,agent-7,0,3.0\nb.flac,mycalls,X,1,2.0\n")
    clips = load_manifest(manifest)
    assert [c.speaker for c in clips] == ["agent-7", "X"]
    assert [c.split for c in clips] == ["test", "test"]
    assert load_manifest(manifest, "train") == []
