"""Sample-level audio helpers: the one normalisation, levels, window preparation, mixdown, resampling.

Everything here is pure numpy/scipy: training (tools/) and the runtime import the same definitions.

Normalisation (the paper, section 3): a window is scaled so that its RMS level is -20 dBFS, with full scale
being 1.0, and is then multiplied by 256, SoundNet's input scale (float audio in [-1, 1] times 256). We do
*not* rescale each window's peak to 256: that would undo the -20 dBFS step (every window would then be
scaled by its crest factor instead of its loudness). So the model sees windows with RMS 25.6 and peaks that
vary with the signal's crest factor, exactly what "full scale = 256" means. A window's DC offset (a
microphone's bias) is removed first: it is not sound, and would otherwise count towards the level.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 1.2
HOP_S = 0.6
MIN_AUDIO_S = 1.0
WINDOW = round(WINDOW_S * SAMPLE_RATE)
"""Samples in a default window (19,200: the model's input length)."""
HOP = round(HOP_S * SAMPLE_RATE)
"""Samples between the starts of consecutive default windows."""
TARGET_DBFS = -20.0
FULL_SCALE = 256.0
SILENCE_DBFS = -120.0
"""Level reported for digital silence (a finite floor: JSON has no -inf)."""
MIN_DBFS = -50.0
"""Default silence gate: windows quieter than this are not scored."""


BLOCK = 8
"""Windows measured and normalised at a time: their temporaries stay in the CPU caches."""
_GAIN = 10.0 ** (TARGET_DBFS / 20.0) * FULL_SCALE


@lru_cache(maxsize=4)  # a few window lengths; a stream's last windows each have their own (not worth keeping)
def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


def _moments(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """The mean square (DC removed) of each window (row) of 2-D float32 `x`; with `out`, the windows
    normalised into it.

    Blocks of BLOCK windows, in float32 with BLAS dot products for the sums (their many partial sums keep
    them within a few float32 roundings of float64 arithmetic, at a fraction of its memory traffic).
    """
    n = x.shape[-1]
    ms = np.zeros(len(x))
    if n == 0:
        return ms
    for i in range(0, len(x), BLOCK):
        xb = x[i : i + BLOCK]
        mean = np.vecdot(xb, _ones(n)) / np.float32(n)
        centred = np.subtract(xb, mean[:, None], out=None if out is None else out[i : i + BLOCK])
        ms[i : i + BLOCK] = block_ms = np.vecdot(centred, centred).astype(np.float64) / n
        if out is not None:
            rms = np.sqrt(block_ms)
            gain = np.divide(_GAIN, rms, out=np.zeros_like(rms), where=rms > 1e-10)
            centred *= gain.astype(np.float32)[:, None]
    return ms


def _level(ms: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(ms, 10.0 ** (SILENCE_DBFS / 10.0)))


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]) if x.ndim else x.reshape(1, 1)


def dbfs(x: np.ndarray) -> np.ndarray | float:
    """RMS level in dBFS (full scale 1.0) along the last axis, DC removed, floored at SILENCE_DBFS."""
    x = np.asarray(x)
    level = _level(_moments(_rows(x), None))
    return float(level[0]) if x.ndim <= 1 else level.reshape(x.shape[:-1])


def normalise(x: np.ndarray) -> np.ndarray:
    """Remove DC, scale windows (last axis) to -20 dBFS RMS, then to SoundNet's range (full scale 256).

    Digital silence stays silent (zeros), never NaN. Returns float32.
    """
    return measure_and_normalise(x)[1]


def measure_and_normalise(windows: np.ndarray) -> tuple[np.ndarray | float, np.ndarray]:
    """`dbfs` and `normalise` of the same windows in one pass (the level of full windows, before padding)."""
    x = np.asarray(windows)
    rows = _rows(x)
    out = np.empty(rows.shape, dtype=np.float32)
    level = _level(_moments(rows, out))
    if x.ndim <= 1:
        return float(level[0]), out.reshape(x.shape)
    return level.reshape(x.shape[:-1]), out.reshape(x.shape)


def prepare_window(segment: np.ndarray, window: int) -> np.ndarray:
    """Zero-pad a segment to `window` samples and normalise it: the model's exact input."""
    segment = np.asarray(segment, dtype=np.float32)
    if segment.shape[-1] < window:
        pad = [(0, 0)] * (segment.ndim - 1) + [(0, window - segment.shape[-1])]
        segment = np.pad(segment, pad)
    return normalise(segment)


NON_FINITE = "contains NaN or infinite samples"
"""What the Python API and every source of the command line say of audio with NaN or infinite samples."""
SANE_PEAK = 1e6
"""Samples beyond this (full scale 1.0) are clipped by `sane`: their squares would overflow float32."""


def sane(x: np.ndarray) -> np.ndarray:
    """Samples with non-finite values as silence (0.0), the others within +-SANE_PEAK."""
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), -SANE_PEAK, SANE_PEAK)


MAX_CHANNELS = 64
"""2-D audio is (frames, channels); more columns than this is taken for a (channels, frames) array."""


def to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM or float samples -> float32 in [-1, 1] full scale; other types (complex, bool) are refused."""
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        scale = float(-info.min) if info.min < 0 else (info.max + 1) / 2
        offset = 0.0 if info.min < 0 else scale
        return ((samples.astype(np.float32) - offset) / scale).astype(np.float32)
    if samples.dtype.kind != "f":
        raise ValueError(f"audio samples must be integer PCM or float, not {samples.dtype}")
    return samples.astype(np.float32, copy=False)


MIX_BLOCK = 1 << 16
"""Frames mixed down at a time (a float64 block of them is the only temporary)."""


def mixdown(samples: np.ndarray) -> np.ndarray:
    """Mono (frames,) or (frames, channels) -> mono (frames,), by averaging channels."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(f"audio must be 1-D (mono) or 2-D (frames, channels), not of shape {samples.shape}")
    out = np.empty(len(samples), dtype=np.float32)
    for i in range(0, len(samples), MIX_BLOCK):  # in float64 (float32 sums of loud channels overflow), in blocks
        out[i : i + MIX_BLOCK] = samples[i : i + MIX_BLOCK].mean(axis=1, dtype=np.float64)
    return out


def as_mono(samples: np.ndarray) -> np.ndarray:
    """The one way audio enters the detector: mono float32 from integer PCM or float, 1-D or (frames, channels)
    with at most MAX_CHANNELS channels (a wider array is refused as probably transposed)."""
    x = to_float(samples)
    if x.ndim == 2 and x.shape[1] > MAX_CHANNELS:
        raise ValueError(
            f"2-D audio is (frames, channels) with at most {MAX_CHANNELS} channels; shape {x.shape} looks like "
            "(channels, frames): pass its transpose"
        )
    return mixdown(x)


def resample(x: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling with exact integer ratios (scipy.signal.resample_poly)."""
    if rate_in == rate_out:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly  # imported when needed: it costs a noticeable part of start-up

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)
