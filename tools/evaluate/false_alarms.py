"""False alarms per minute of calm speech at each threshold, with patience 1 and 2, on the test speakers'
non-angry recordings, as recorded and through a simulated 8 kHz mu-law telephone channel.

    python -m tools.evaluate.false_alarms --model models/anger_fcn.onnx --json docs/false-alarms.json \
        --manifest ../shared/data/ravdess/manifest.csv --manifest ../shared/data/ased/manifest.csv \
        --manifest ../shared/data/nemo/manifest.csv --manifest ../shared/data/emodb/manifest.csv

The recordings are the test split of `tools.manifest` (speakers never trained on) with anger 0. Each is scored
with the live detector's windows and the table is computed by `anger_stream.calibrate` (the code behind
`anger-stream calibrate`): per corpus and pooled, for each channel. Writes the JSON and prints the README's
table (markdown) on stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from anger_stream.calibrate import PATIENCES, Stream, calibrate
from anger_stream.detector import AngerDetector, DetectorConfig
from anger_stream.events import Window
from tools.channels import telephone
from tools.evaluate.scoring import load_audio
from tools.manifest import Clip, load_manifest

CHANNELS = ("16 kHz as recorded", "8 kHz mu-law telephone (simulated)")
TARGET_FPR = 0.05


def reference_clips(manifests: Sequence[Path]) -> list[Clip]:
    """The non-angry clips of the test speakers of each manifest."""
    return [c for m in manifests for c in load_manifest(m, "test") if not c.anger]


def score(clips: list[Clip], detector: AngerDetector, phone: bool) -> list[Stream]:
    """One stream per clip: its windows as the live detector scores them (through the telephone channel)."""
    streams = []
    for clip in clips:
        x = load_audio(clip.path)
        windows = [e for e in detector.analyse(telephone(x) if phone else x) if isinstance(e, Window)]
        streams.append(Stream(str(clip.path), None, windows, 0))
    return streams


def measure(clips: list[Clip], detector: AngerDetector) -> dict[str, dict]:
    """calibrate()'s result per channel, pooled over all clips and per corpus."""
    out = {}
    for channel, phone in zip(CHANNELS, (False, True), strict=True):
        streams = score(clips, detector, phone)
        corpus = {str(c.path): c.corpus for c in clips}
        out[channel] = {"all": calibrate(streams, TARGET_FPR, detector.config)} | {
            name: calibrate([s for s in streams if corpus[s.path] == name], TARGET_FPR, detector.config)
            for name in dict.fromkeys(c.corpus for c in clips)
        }
    return out


def markdown(result: dict) -> str:
    """The pooled table: threshold, window false-alarm rate and false alarms per minute, per channel."""
    cols = ["threshold"]
    for channel in ("as recorded", "telephone"):
        cols += [f"{channel}: window FPR"] + [f"{channel}: FA/min, patience {p}" for p in PATIENCES]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    pooled = [result["channels"][c]["all"] for c in CHANNELS]
    for i, row in enumerate(pooled[0]["table"]):
        cells = [f"{row['threshold']:.2f}"]
        for channel in pooled:
            r = channel["table"][i]
            cells += [f"{r['window_fpr']:.3f}"] + [f"{v:.2f}" for v in r["false_alarms_per_minute"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.false_alarms", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fp32", help="ONNX model path, or fp32 / int8 (packaged)")
    parser.add_argument("--manifest", type=Path, action="append", required=True, help="corpus manifest.csv")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    args = parser.parse_args(argv)
    config = DetectorConfig()
    detector = AngerDetector(args.model, config=config)
    clips = reference_clips(args.manifest)
    if not clips:
        raise SystemExit("error: no non-angry test-split clips in the manifests")
    command = ["python", "-m", "tools.evaluate.false_alarms", *(sys.argv[1:] if argv is None else argv)]
    result = {
        "command": shlex.join(command),
        "model": args.model,
        "clips": len(clips),
        "speakers": sorted({f"{c.corpus}:{c.speaker}" for c in clips}),
        "target_fpr": TARGET_FPR,
        "hysteresis": config.hysteresis,
        "min_dbfs": config.min_dbfs,
        "channels": measure(clips, detector),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
