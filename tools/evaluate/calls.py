"""Synthetic calls from corpus speakers, scored once per window: the material of `tools.evaluate.false_alarms`.

A call is one speaker's non-angry clips in random order joined by pauses of 0.3-1.5 s of a low noise floor
(-70 dBFS white noise: under the silence gate, but not digital zeros), about `CALL_S` seconds of clips long.
Its angry twin is the same call with one angry passage of 5-20 s inserted between two of its clips: that
speaker's angry clips, joined by the same kind of pauses. Every call is scored once per channel (16 kHz as
recorded, and through the simulated 8 kHz mu-law telephone channel) with the live detector's windows and
silence gate, so that any number of event rules can then be run over the cached scores.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from anger_stream import audio
from anger_stream.detector import AngerDetector
from anger_stream.events import Window
from tools.channels import telephone
from tools.evaluate.scoring import load_audio
from tools.manifest import Clip

CALL_S = 30.0
"""Seconds of non-angry clips per call."""
PAUSE_S = (0.3, 1.5)
PASSAGE_S = (5.0, 20.0)
FLOOR_DBFS = -70.0
CHANNELS = {"16k": lambda x: x, "telephone": telephone}
"""The channels every call is scored through: as recorded, and the simulated 8 kHz mu-law line."""


@dataclass(frozen=True)
class Call:
    """A synthetic call at 16 kHz; `passage` is the (start, end) in seconds of its angry passage, if any."""

    corpus: str
    speaker: str
    audio: np.ndarray
    passage: tuple[float, float] | None


@dataclass(frozen=True)
class ScoredCalls:
    """The windows of many calls as padded arrays (one row per call, NaN past a call's last window): p (NaN
    when silent), start and end in seconds, and how many windows each call has."""

    calls: list[Call]
    p: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    lengths: np.ndarray

    def subset(self, keep: np.ndarray) -> ScoredCalls:
        rows = np.flatnonzero(keep)
        calls = [self.calls[i] for i in rows]
        return ScoredCalls(calls, self.p[rows], self.t_start[rows], self.t_end[rows], self.lengths[rows])

    @property
    def calm_speech_hours(self) -> float:
        """Non-silent windows times the hop, in hours, of the calls without a passage (as `calibrate` counts
        speech)."""
        calm = np.array([c.passage is None for c in self.calls], dtype=bool)
        return float(np.sum(~np.isnan(self.p[calm]))) * audio.HOP_S / 3600


def _rng(seed: int, corpus: str, speaker: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{corpus}:{speaker}".encode())])


def _pause(rng: np.random.Generator) -> np.ndarray:
    n = round(rng.uniform(*PAUSE_S) * audio.SAMPLE_RATE)
    return (10 ** (FLOOR_DBFS / 20) * rng.standard_normal(n)).astype(np.float32)


def _join(parts: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Parts with a pause before, between and after them; the (start, end) sample of each part."""
    out, spans, at = [_pause(rng)], [], 0
    at = len(out[0])
    for x in parts:
        spans.append((at, at + len(x)))
        out += [x, _pause(rng)]
        at += len(x) + len(out[-1])
    return np.concatenate(out), spans


def _passage(
    angry: list[np.ndarray], rng: np.random.Generator, passage_s: tuple[float, float] = PASSAGE_S
) -> list[np.ndarray]:
    """Angry clips in random order, as many as reach a length drawn from `passage_s` (pauses between them
    counted at their mean) without passing its upper end."""
    target, chosen, length = rng.uniform(*passage_s), [], 0.0
    gap = sum(PAUSE_S) / 2
    for i in rng.permutation(len(angry)):
        s = len(angry[i]) / audio.SAMPLE_RATE
        if chosen and length + gap + s > passage_s[1]:
            continue
        chosen.append(angry[i])
        length += s + (gap if len(chosen) > 1 else 0.0)
        if length >= target:
            break
    return chosen


def build_calls(
    clips: Sequence[Clip],
    seed: int = 0,
    load: Callable[[Clip], np.ndarray] | None = None,
    call_s: float = CALL_S,
    passage_s: tuple[float, float] = PASSAGE_S,
) -> list[Call]:
    """Each speaker's calm calls (about `call_s` seconds of clips) and, where the speaker has angry clips,
    their angry twins (one passage of `passage_s` seconds inserted)."""
    load = load or (lambda clip: load_audio(clip.path))
    speakers: dict[tuple[str, str], list[Clip]] = defaultdict(list)
    for clip in clips:
        speakers[clip.corpus, clip.speaker].append(clip)
    calls = []
    for (corpus, speaker), own in sorted(speakers.items()):
        rng = _rng(seed, corpus, speaker)
        calm = [load(c) for c in sorted(own, key=lambda c: str(c.path)) if not c.anger]
        angry = [load(c) for c in sorted(own, key=lambda c: str(c.path)) if c.anger]
        groups, group, length = [], [], 0.0
        for i in rng.permutation(len(calm)):
            group.append(calm[i])
            length += len(calm[i]) / audio.SAMPLE_RATE
            if length >= call_s:
                groups.append(group)
                group, length = [], 0.0
        if group:
            groups.append(group)
        for group in groups:
            calls.append(Call(corpus, speaker, _join(group, rng)[0], None))
            if not angry:
                continue
            passage = _passage(angry, rng, passage_s)
            cut = int(rng.integers(1, len(group) + 1))
            x, spans = _join([*group[:cut], *passage, *group[cut:]], rng)
            first, last = spans[cut][0], spans[cut + len(passage) - 1][1]
            calls.append(Call(corpus, speaker, x, (first / audio.SAMPLE_RATE, last / audio.SAMPLE_RATE)))
    return calls


def score_calls(calls: Sequence[Call], detector: AngerDetector, channel: str) -> ScoredCalls:
    """Every call's windows through one channel of CHANNELS, as the live detector cuts, gates and scores them."""
    rows = []
    for call in calls:
        windows = [e for e in detector.analyse(CHANNELS[channel](call.audio)) if isinstance(e, Window)]
        rows.append([(np.nan if w.p is None else w.p, w.t_start, w.t_end) for w in windows])
    width = max(len(r) for r in rows)
    table = np.full((3, len(rows), width), np.nan)
    for i, r in enumerate(rows):
        table[:, i, : len(r)] = np.array(r).T
    return ScoredCalls(list(calls), table[0], table[1], table[2], np.array([len(r) for r in rows]))
