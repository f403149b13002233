"""A contact-centre floor as a supervisor sees it: many concurrent AudioSocket calls of held-out speakers, in
real time, through `anger-stream serve` at its default settings; how many anger segments each call raises.

    python -m tools.evaluate.floor --json docs/floor.json [--calls 50 --angry 7 --call-seconds 60]
        [--manifest ../shared/data/ravdess/manifest.csv ...] [--model full] [--threshold 0.6]

Calls (`tools.evaluate.calls`) are built from the test speakers of the manifests: calm calls of about
--call-seconds (pauses included), and calls as long with one angry passage of about 20 s (18-22 s) between
calm passages; spread over corpora and speakers. When the speakers' calm clips run out, more calm calls are
built from the same clips in another order. Each call goes through the 8 kHz mu-law telephone channel
(`tools.channels.telephone`), then as 8 kHz 16-bit AudioSocket frames of 20 ms, each sent when its audio is
complete; call starts are spread over --ramp seconds. Per angry call: the anger segments overlapping its passage
(an `anger_start` between the passage's start and its end plus one window, or a segment open as it starts;
the goal is exactly one), the delay from the passage's first sample to that segment's `anger_start`, and
segments elsewhere in the call. Per calm call: its anger segments. False alarms per hour of calm speech: the
calm calls' segments over their scored windows times the hop. Writes the JSON and prints a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shlex
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anger_stream import audio
from anger_stream.serve import audiosocket
from anger_stream.serve.hub import FINAL_STATES
from tools.channels import telephone
from tools.evaluate.calls import Call, build_calls
from tools.evaluate.scoring import load_audio
from tools.loadtest import CLI, FRAME, FRAME_S, RATE, _cpu_seconds, pcm16
from tools.manifest import SHARED, load_manifest

PASSAGE_S = (18.0, 22.0)
CLIP_SHARE = 0.77
"""Of a call's length, the share of clips (the pauses between them take the rest), as measured on these corpora."""
SEED_TRIES = 8


def _spread(calls: list[Call]) -> list[Call]:
    """Calls in turn from each corpus, and within a corpus in turn from each speaker."""
    by_corpus: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for i, c in enumerate(calls):
        by_corpus[c.corpus].append((seen[c.corpus, c.speaker], c.speaker, i))
        seen[c.corpus, c.speaker] += 1
    queues = [sorted(v) for _, v in sorted(by_corpus.items())]
    out = []
    for k in range(max(len(q) for q in queues)):
        out += [calls[q[k][2]] for q in queues if k < len(q)]
    return out


def floor_calls(manifests: Sequence[Path], n: int, angry: int, call_s: float, seed: int) -> list[Call]:
    """`n` calls of the manifests' test speakers: `angry` with a passage, the rest calm (ValueError if short)."""
    clips = [c for m in manifests for c in load_manifest(m, "test")]
    if not clips:
        raise ValueError("no test speakers' clips in the manifests")
    load = functools.cache(lambda clip: load_audio(clip.path))
    around = max((call_s - sum(PASSAGE_S) / 2) * CLIP_SHARE, 2.0)
    with_passage = [c for c in build_calls(clips, seed, load, around, PASSAGE_S) if c.passage]
    calm: list[Call] = []
    for s in range(seed, seed + SEED_TRIES):
        built = [c for c in build_calls(clips, s, load, call_s * CLIP_SHARE) if c.passage is None]
        calm += [c for c in built if len(c.audio) >= 0.75 * call_s * audio.SAMPLE_RATE]
        if len(calm) >= n - angry:
            break
    chosen = _spread(with_passage)[:angry] + _spread(calm)[: n - angry]
    if len(chosen) < n:
        raise ValueError(f"the manifests' test speakers give only {len(chosen)} of the {n} calls asked for")
    return chosen


def telephone_samples(call: Call) -> np.ndarray:
    """The call through the telephone channel, as the 8 kHz int16 samples AudioSocket carries."""
    return pcm16(audio.resample(telephone(call.audio), audio.SAMPLE_RATE, RATE))


async def _serve(args: argparse.Namespace) -> asyncio.subprocess.Process:
    cmd = [CLI, "serve", "--audiosocket", "127.0.0.1:0", *(["--model", args.model] if args.model else [])]
    cmd += ["--threshold", str(args.threshold)] if args.threshold is not None else []
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, limit=1 << 20)


async def stream(args: argparse.Namespace, calls: list[Call]) -> tuple[dict[str, list[dict]], float, float]:
    """Every call in real time through one server: each call's lines (by call id, in order), the seconds
    streamed and the server's CPU seconds meanwhile."""
    proc = await _serve(args)
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if not line:
                raise RuntimeError("the server did not start")
            msg = json.loads(line)
            if msg.get("state") == "listening":
                port = msg["port"]
                break
        ids = [str(uuid.uuid4()) for _ in calls]
        samples = [telephone_samples(c) for c in calls]
        frames = [[audiosocket.audio_frame(x[i : i + FRAME], RATE) for i in range(0, len(x), FRAME)] for x in samples]
        writers = [(await asyncio.open_connection("127.0.0.1", port))[1] for _ in calls]
        starts = [round(i * args.ramp / FRAME_S / len(calls)) for i in range(len(calls))]
        lines: dict[str, list[dict]] = {i: [] for i in ids}

        async def read() -> None:
            ended = 0
            while ended < len(calls):
                raw = await proc.stdout.readline()
                if not raw:
                    return
                msg = json.loads(raw)
                if msg.get("call") in lines:
                    lines[msg["call"]].append(msg)
                    ended += msg.get("type") == "status" and msg.get("state") in FINAL_STATES

        reader = asyncio.create_task(read())
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        for tick in range(max(s + len(f) for s, f in zip(starts, frames, strict=True))):
            await asyncio.sleep(max(t0 + (tick + 1) * FRAME_S - time.monotonic(), 0.0))
            for cid, w, s, f in zip(ids, writers, starts, frames, strict=True):
                k = tick - s
                if 0 <= k < len(f) and not w.is_closing():
                    w.write((audiosocket.uuid_frame(cid) if k == 0 else b"") + f[k])
                    if k == len(f) - 1:
                        w.write(audiosocket.hangup_frame())
                        w.close()
        await asyncio.wait_for(reader, 60)
        streamed, cpu = time.monotonic() - t0, _cpu_seconds(proc.pid) - cpu0
        return {cid: lines[cid] for cid in ids}, streamed, cpu
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def segments(lines: list[dict]) -> list[tuple[float, float]]:
    """A call's anger segments as (anger_start's t, anger_end's t)."""
    out: list[tuple[float, float]] = []
    for m in lines:
        if m["type"] == "anger_start":
            out.append((m["t"], np.inf))
        elif m["type"] == "anger_end" and out:
            out[-1] = (out[-1][0], m["t"])
    return out


def call_report(call: Call, lines: list[dict], window_s: float) -> dict[str, Any]:
    """One call's anger segments; for a call with a passage, those overlapping it, whether and how soon it was
    caught, and the segments elsewhere."""
    seg = segments(lines)
    scored = sum(m["type"] == "window" and m["p"] is not None for m in lines)
    out: dict[str, Any] = {
        "corpus": call.corpus,
        "speaker": call.speaker,
        "seconds": round(len(call.audio) / audio.SAMPLE_RATE, 2),
        "speech_seconds": round(scored * audio.HOP_S, 1),
        "ended": next((m["state"] for m in lines if m["type"] == "status" and m["state"] in FINAL_STATES), None),
        "segments": len(seg),
    }
    if call.passage is None:
        return out
    a, b = call.passage
    overlapping = [(s, e) for s, e in seg if (a < s <= b + window_s) or s <= a < e]
    return out | {
        "passage": [round(a, 2), round(b, 2)],
        "segments_in_passage": len(overlapping),
        "caught": bool(overlapping),
        "delay_s": round(max(overlapping[0][0] - a, 0.0), 2) if overlapping else None,
        "segments_outside": len(seg) - len(overlapping),
    }


def summary(reports: list[dict[str, Any]], streamed: float, cpu: float) -> dict[str, Any]:
    angry = [r for r in reports if "passage" in r]
    calm = [r for r in reports if "passage" not in r]
    hours = sum(r["speech_seconds"] for r in calm) / 3600
    false_alarms = sum(r["segments"] for r in calm)
    delays = [r["delay_s"] for r in angry if r["caught"]]
    return {
        "calls": len(reports),
        "calls_ended": sum(r["ended"] == "end" for r in reports),
        "angry_calls": len(angry),
        "angry_caught": len(delays),
        "angry_with_one_segment": sum(r["segments_in_passage"] == 1 for r in angry),
        "segments_in_passage": [r["segments_in_passage"] for r in angry],
        "delay_s": {"median": round(float(np.median(delays)), 2), "max": max(delays)} if delays else None,
        "angry_segments_outside": sum(r["segments_outside"] for r in angry),
        "calm_calls": len(calm),
        "calm_calls_with_segment": sum(r["segments"] > 0 for r in calm),
        "false_alarms": false_alarms,
        "calm_speech_hours": round(hours, 3),
        "false_alarms_per_hour": round(false_alarms / hours, 2) if hours else None,
        "streamed_s": round(streamed, 1),
        "server_cpu_percent": round(100 * cpu / streamed, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.floor", description=__doc__.splitlines()[0])
    default_manifests = sorted((SHARED / "data").glob("*/manifest.csv"))
    parser.add_argument("--manifest", type=Path, action="append", help="a corpus manifest (repeat; default: ../shared)")
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls")
    parser.add_argument("--angry", type=int, default=7, help="of them, calls with an angry passage")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="about this long each, pauses included")
    parser.add_argument("--ramp", type=float, default=3.0, help="spread call starts over this many seconds")
    parser.add_argument("--model", help="the server's --model (default: its own)")
    parser.add_argument("--threshold", type=float, help="the server's --threshold (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="for the calls' order, pauses and passages")
    parser.add_argument("--json", type=Path, required=True, help="write the result here")
    args = parser.parse_args(argv)
    if not 0 <= args.angry <= args.calls <= 500 or not 10 <= args.call_seconds <= 600:
        parser.error("--calls must be 1..500, --angry at most --calls, --call-seconds 10..600")
    manifests = args.manifest or default_manifests
    try:
        calls = floor_calls(manifests, args.calls, args.angry, args.call_seconds, args.seed)
        lines, streamed, cpu = asyncio.run(stream(args, calls))
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"floor: {exc}") from None
    window_s = audio.WINDOW_S
    reports = [call_report(c, ls, window_s) for c, ls in zip(calls, lines.values(), strict=True)]
    command = ["python", "-m", "tools.evaluate.floor", *(sys.argv[1:] if argv is None else argv)]
    result = {
        "command": shlex.join(command),
        "model": args.model or "default",
        "threshold": args.threshold if args.threshold is not None else "default",
        "summary": summary(reports, streamed, cpu),
        "calls": reports,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
