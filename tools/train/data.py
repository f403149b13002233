"""Training data: decoded clips, speech-only crop positions, augmentation, balanced batches, eval windows.

Shortcuts in the corpora (RAVDESS loudness and leading/trailing digital zeros, ASED emotion-dependent zero
padding) are kept out of the crops: a crop start is valid only if the crop passes the runtime silence gate
(`audio.dbfs >= audio.MIN_DBFS`) and at least `MIN_ACTIVE` of its 10 ms frames are active (not digital zero
and within `ACTIVE_DB` of the clip's loudest frame). Every crop is normalised with `audio.prepare_window`,
the runtime's own definition, so level carries no information.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from anger_stream import audio
from anger_stream.config import DetectorConfig
from tools import channels
from tools.evaluate.scoring import gated_segments
from tools.manifest import Clip, load_manifest
from tools.train import prosody
from tools.train.teacher import Teacher

SR = audio.SAMPLE_RATE
WINDOW, HOP = audio.WINDOW, audio.HOP
MIN_AUDIO = DetectorConfig().min_audio
FRAME = SR // 100
ACTIVE_DB = 40.0
MIN_ACTIVE = 0.6
MARGIN = 1024
"""Extra samples on each side of an augmented crop (phase-vocoder edge effects are cut away)."""


@dataclass
class Track:
    """A decoded clip (float32, 16 kHz), its label, the valid crop starts (samples) and, for prosodic targets,
    its low-level descriptors (`tools.train.prosody.descriptors`)."""

    clip: Clip
    samples: np.ndarray
    starts: np.ndarray
    descriptors: np.ndarray | None = None


@dataclass(frozen=True)
class Draw:
    """One crop's augmentation: time stretch factor and pitch shift in semitones."""

    stretch: float = 1.0
    semitones: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Draw:
        """Stretch U[0.9, 1.1], shift U[-5, 5] quarter-tones."""
        return cls(rng.uniform(0.9, 1.1), rng.uniform(-5, 5) / 2)


def decode(path: str | Path) -> np.ndarray:
    """A mono 16 kHz file as float32 in [-1, 1]."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SR:
        raise ValueError(f"{path}: {sr} Hz, expected {SR}")
    return audio.mixdown(x)


def crop_starts(x: np.ndarray, step: int = FRAME, min_active: float = MIN_ACTIVE) -> np.ndarray:
    """Starts (every `step` samples) of WINDOW crops with >= MIN_AUDIO samples that pass the silence gate
    and have at least `min_active` active frames."""
    n_frames = len(x) // FRAME
    frames = x[: n_frames * FRAME].reshape(n_frames, FRAME)
    level = np.asarray(audio.dbfs(frames))
    active = (level >= level.max() - ACTIVE_DB) & np.any(frames != 0, axis=1)
    csum = np.concatenate([[0], np.cumsum(active)])
    starts = np.arange(0, max(len(x) - MIN_AUDIO + 1, 0), step)
    first = starts // FRAME
    last = np.minimum((starts + WINDOW) // FRAME, n_frames)
    share = (csum[last] - csum[first]) / (WINDOW // FRAME)
    ok = share >= min_active
    ok[ok] = [audio.dbfs(x[s : s + WINDOW]) >= audio.MIN_DBFS for s in starts[ok]]
    return starts[ok]


def load_tracks(manifests: Sequence[str | Path], split: str, min_active: float = MIN_ACTIVE) -> list[Track]:
    """Decoded clips of one split of several manifests; clips without a valid crop are dropped."""
    tracks = []
    for manifest in manifests:
        for clip in load_manifest(manifest, split):
            x = decode(clip.path)
            tracks.append(Track(clip, x, crop_starts(x, min_active=min_active)))
    return [t for t in tracks if len(t.starts)]


def crop(x: np.ndarray, start: int, length: int = WINDOW) -> np.ndarray:
    """x[start:start+length], zero-padded on either side where it runs past the clip."""
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, len(x))
    if hi > lo:
        out[lo - start : hi - start] = x[lo:hi]
    return out


def fill_zeros(x: np.ndarray, rng: np.random.Generator, low_db: float = -70.0, high_db: float = -50.0) -> np.ndarray:
    """A copy of x with every exact digital zero replaced by Gaussian noise at a level drawn from
    U[low_db, high_db] relative to the RMS of the non-zero samples (real microphones never deliver exact
    zeros, so digital silence must not be a cue). Unchanged if x is all zeros or has none."""
    zero = x == 0
    if zero.all() or not zero.any():
        return x.copy()
    rms = float(np.sqrt(np.mean(np.square(x[~zero], dtype=np.float64))))
    sigma = rms * 10.0 ** (rng.uniform(low_db, high_db) / 20.0)
    out = x.copy()
    out[zero] = rng.normal(0.0, sigma, int(zero.sum())).astype(x.dtype)
    return out


def augment_pair(
    x: np.ndarray,
    start: int,
    rng: np.random.Generator,
    zero_noise: bool = False,
    channel_p: float = 0.0,
    babble_pool: np.ndarray | None = None,
    draw: Draw | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(heard, clean): heard is a WINDOW crop at `start`, time-stretched and pitch-shifted by `draw` (a random
    one if None), with probability `channel_p` passed through a random recording channel
    (`channels.random_channel`: tilt and EQ, band limits and codecs, rooms, noise and babble from
    `babble_pool`), plus Gaussian noise with sigma U[0, 0.005 * peak]; clean is the same crop before the
    channel and the added noise (what a teacher hears).

    Stretch and shift are one librosa phase-vocoder stretch followed by one soxr resampling (what
    `librosa.effects.pitch_shift` does internally), on a slightly longer segment that is cut afterwards
    (the channel too runs on the longer segment, so filters and rooms have no edge at the crop).
    With `zero_noise`, digital zeros of the segment (incl. padding past the clip) are first replaced by a
    noise floor (`fill_zeros`).
    """
    draw = draw or Draw.random(rng)
    stretch, shift = draw.stretch, 2.0 ** (-draw.semitones / 12)
    need = int(np.ceil(WINDOW * stretch)) + 2 * MARGIN
    seg = crop(x, start - MARGIN, need)
    if zero_noise:
        seg = fill_zeros(seg, rng)
    clean = librosa.effects.time_stretch(seg, rate=stretch * shift)
    clean = librosa.resample(clean, orig_sr=SR / shift, target_sr=SR, res_type="soxr_hq")
    heard = channels.random_channel(clean, rng, babble_pool) if rng.random() < channel_p else clean
    offset = max((len(clean) - WINDOW) // 2, 0)
    clean, y = crop(clean, offset), crop(heard, offset)
    y += rng.normal(0.0, rng.uniform(0, 0.005 * np.abs(y).max()), WINDOW).astype(np.float32)
    return y, clean


def example(
    track: Track,
    rng: np.random.Generator,
    train: bool,
    zero_noise: bool = False,
    channel_p: float = 0.0,
    babble_pool: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One prepared (normalised) training example from a random valid crop of the track, the same crop
    prepared before its channel (equal without augmentation) and, when the track has descriptors, the
    crop's prosodic functionals (of the clip's samples it was cut from, before augmentation)."""
    start = int(rng.choice(track.starts))
    if train:
        draw = Draw.random(rng)
        x, clean = augment_pair(track.samples, start, rng, zero_noise, channel_p, babble_pool, draw)
        x, clean = audio.prepare_window(x, WINDOW), audio.prepare_window(clean, WINDOW)
    else:
        draw = Draw()
        x = crop(track.samples, start)
        if zero_noise:
            x = fill_zeros(x, rng)
        x = clean = audio.prepare_window(x, WINDOW)
    if track.descriptors is None:
        return x, clean, None
    return x, clean, prosody.functionals(track.descriptors, start, round(WINDOW * draw.stretch), draw.semitones)


class BalancedBatches(torch.utils.data.IterableDataset):
    """Endless minibatches (x, label) of `half` non-angry + `half` angry examples; with a `teacher` or
    tracks with descriptors, (x, label, extra targets): the teacher's targets of each example before its
    channel, then its prosodic functionals (NaN where undefined).

    Each angry/non-angry pair comes from one corpus drawn uniformly, so corpus identity (recording
    conditions, language) says nothing about the label; clips are drawn uniformly within corpus and class.
    """

    def __init__(
        self,
        tracks: list[Track],
        seed: int,
        half: int = 5,
        augment: bool = True,
        zero_noise: bool = False,
        channel_p: float = 0.0,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.tracks = tracks
        corpora = sorted({t.clip.corpus for t in tracks})
        self.groups = [
            [np.array([i for i, t in enumerate(tracks) if t.clip.corpus == c and t.clip.anger == a]) for a in (0, 1)]
            for c in corpora
        ]
        self.seed = seed
        self.half = half
        self.augment = augment
        self.zero_noise = zero_noise
        self.channel_p = channel_p
        self.babble_pool = babble_pool(tracks, seed) if channel_p > 0 else None
        self.teacher = teacher

    def indices(self, rng: np.random.Generator) -> np.ndarray:
        """Track indices of one batch: `half` non-angry, then their `half` angry partners."""
        pairs = [[rng.choice(ids) for ids in self.groups[rng.integers(len(self.groups))]] for _ in range(self.half)]
        return np.array(pairs).T.reshape(-1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            idx = self.indices(rng)
            examples = [
                example(self.tracks[i], rng, self.augment, self.zero_noise, self.channel_p, self.babble_pool)
                for i in idx
            ]
            x = torch.from_numpy(np.stack([heard for heard, _, _ in examples]))
            y = torch.from_numpy(np.array([self.tracks[i].clip.anger for i in idx]))
            targets = []
            if self.teacher is not None:
                targets.append(np.stack([self.teacher.targets(clean) for _, clean, _ in examples]))
            if examples[0][2] is not None:
                targets.append(np.stack([functionals for _, _, functionals in examples]))
            yield (x, y, torch.from_numpy(np.concatenate(targets, axis=1))) if targets else (x, y)


def babble_pool(tracks: list[Track], seed: int, clips: int = 300) -> np.ndarray:
    """Other people's speech for babble noise: the active parts of up to `clips` random training clips."""
    rng = np.random.default_rng([seed, 7])
    chosen = rng.choice(len(tracks), size=min(clips, len(tracks)), replace=False)
    parts = [tracks[i].samples[tracks[i].starts[0] : tracks[i].starts[-1] + WINDOW] for i in chosen]
    return np.concatenate([p / max(channels.active_rms(p), 1e-9) * 0.1 for p in parts]).astype(np.float32)


def windows(x: np.ndarray) -> np.ndarray:
    """Run-time windows of a clip that pass the silence gate, prepared: [n, WINDOW] float32."""
    kept, _ = gated_segments(x)
    if not kept:
        return np.zeros((0, WINDOW), dtype=np.float32)
    return np.stack([audio.prepare_window(w, WINDOW) for w in kept])
