"""Corpus manifests and the speaker-disjoint splits used by training and evaluation.

A manifest is the `manifest.csv` of a corpus folder (path, corpus, speaker, gender, emotion, anger, ...);
paths in it are relative to that folder. Splits are by speaker, never by file:

- RAVDESS: actors 01-16 train, 17-20 validation, 21-24 test (each block half men, half women).
- ASED: speaker number divisible by 5 -> test (13 speakers), number = 2 mod 5 -> validation (13),
  the other 39 -> train.
- nEMO: KD0 (f) and TP0 (m) test, EB0 (f) and KS0 (m) validation, the other five train.
- EmoDB (and any other corpus, a user's own included): test only, whatever its speaker ids look like; EmoDB
  is a cross-language development set, never trained on.

Speaker ids are strings everywhere; only RAVDESS and ASED, which number their speakers, are split by number.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
"""The project's shared data folder (corpora in its data/): $ANGER_SHARED, or ../shared beside the repository."""
SPLITS = ("train", "val", "test")
NEMO_SPLIT = {"KD0": "test", "TP0": "test", "EB0": "val", "KS0": "val"}


@dataclass(frozen=True)
class Clip:
    path: Path
    corpus: str
    speaker: str
    anger: int
    duration_s: float

    @property
    def split(self) -> str:
        return speaker_split(self.corpus, self.speaker)


def speaker_split(corpus: str, speaker: str) -> str:
    """Which split a speaker of a corpus belongs to."""
    if corpus == "ravdess":
        n = int(speaker)
        return "train" if n <= 16 else "val" if n <= 20 else "test"
    if corpus == "ased":
        n = int(speaker)
        return "test" if n % 5 == 0 else "val" if n % 5 == 2 else "train"
    if corpus == "nemo":
        return NEMO_SPLIT.get(speaker, "train")
    return "test"


def load_manifest(manifest: str | Path, split: str | None = None) -> list[Clip]:
    """The clips of one manifest.csv, optionally only those of one split."""
    manifest = Path(manifest)
    with manifest.open(newline="") as f:
        clips = [
            Clip(
                path=manifest.parent / row["path"],
                corpus=row["corpus"],
                speaker=row["speaker"],
                anger=int(row["anger"]),
                duration_s=float(row["duration_s"]),
            )
            for row in csv.DictReader(f)
        ]
    return [c for c in clips if split is None or c.split == split]
