"""Prosodic training targets: eGeMAPS-style functionals of each training crop, learnt as extra outputs.

Classic eGeMAPS features with a logistic regression transfer to natural speech better than a network
trained on acted labels alone, because they measure the voice (pitch level and range, loudness dynamics,
voice quality, spectral balance) rather than the recording. With `tools.train --prosody`, the network learns
these functionals of every crop beside the labels, from the crop after its augmentation and random channel,
while the targets come from the clip before either; the extra outputs are dropped at export.

openSMILE's eGeMAPSv02 low-level descriptors (10 ms frames) are computed once per clip of the clean audio
(`descriptors`); the functionals of a crop are taken over the frames it covers (`functionals`), its pitch
level moved by the crop's pitch shift. Functionals of voiced frames are NaN where a crop has too few.
"""

from __future__ import annotations

from functools import cache
from multiprocessing import Pool

import numpy as np

from anger_stream import audio
from tools import channels

LLD = (
    "F0semitoneFrom27.5Hz_sma3nz",
    "Loudness_sma3",
    "jitterLocal_sma3nz",
    "shimmerLocaldB_sma3nz",
    "HNRdBACF_sma3nz",
    "alphaRatio_sma3",
    "hammarbergIndex_sma3",
    "slope0-500_sma3",
    "slope500-1500_sma3",
)
"""The eGeMAPSv02 low-level descriptors the functionals are taken from, in column order."""
FUNCTIONALS = (
    "f0_mean",
    "f0_stddev",
    "f0_range",
    "loudness_stddev_norm",
    "loudness_rise_norm",
    "jitter",
    "shimmer",
    "hnr",
    "alpha_ratio",
    "hammarberg",
    "slope_0_500",
    "slope_500_1500",
    "voiced_share",
)
"""Names of the targets, in order: F0 (semitones) mean, standard deviation and 20-80 % range over voiced
frames; loudness standard deviation and mean rise per frame, each over its mean (level-free); means over
voiced frames of jitter, shimmer, HNR, alpha ratio, Hammarberg index and the two spectral slopes; the share
of voiced frames."""
HOP = audio.SAMPLE_RATE // 100
"""Samples per descriptor frame (10 ms)."""
MIN_VOICED = 5
"""Fewest voiced frames for the voiced functionals to be defined."""
LEVEL = 0.1
"""RMS of a clip's active part when its descriptors are computed (-20 dBFS): openSMILE's voicing decision
depends on the level, which must carry no information."""


@cache
def _smile():
    import opensmile

    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
    )


def descriptors(x: np.ndarray) -> np.ndarray:
    """[frames, len(LLD)] float32: the low-level descriptors of a 16 kHz clip brought to LEVEL, one row per
    10 ms."""
    x = x * np.float32(LEVEL / max(channels.active_rms(x), 1e-9))
    frame = _smile().process_signal(x, audio.SAMPLE_RATE)
    return frame[list(LLD)].to_numpy(dtype=np.float32)


def all_descriptors(clips: list[np.ndarray], processes: int = 2) -> list[np.ndarray]:
    """`descriptors` of many clips, in `processes` processes."""
    if processes <= 1:
        return [descriptors(x) for x in clips]
    with Pool(processes) as pool:
        return pool.map(descriptors, clips, chunksize=16)


def functionals(lld: np.ndarray, start: int, length: int, semitones: float = 0.0) -> np.ndarray:
    """[len(FUNCTIONALS)] float32: the functionals of the frames that start within samples
    [start, start + length) of a clip with descriptors `lld`, its pitch shifted by `semitones`."""
    first = max(-(-start // HOP), 0)
    frames = lld[first : max(-(-(start + length) // HOP), first)]
    f0, loudness = frames[:, 0], frames[:, 1]
    voiced = frames[f0 > 0]
    out = np.full(len(FUNCTIONALS), np.nan, dtype=np.float32)
    if len(frames) == 0:
        return out
    mean_loudness = float(loudness.mean())
    if mean_loudness > 0:
        out[3] = loudness.std() / mean_loudness
        out[4] = np.clip(np.diff(loudness), 0, None).mean() / mean_loudness if len(loudness) > 1 else np.nan
    out[12] = len(voiced) / len(frames)
    if len(voiced) >= MIN_VOICED:
        pitch = voiced[:, 0] + semitones
        out[0], out[1] = pitch.mean(), pitch.std()
        out[2] = np.percentile(pitch, 80) - np.percentile(pitch, 20)
        out[5:12] = voiced[:, 2:9].mean(axis=0)
    return out
