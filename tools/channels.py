"""Recording and transmission channels: a fixed evaluation suite and random draws for training.

Every channel maps a mono float32 clip at 16 kHz to one of the same length, as a caller's microphone,
room, line or codec would. The evaluation suite (`SUITE_NAMES`, `suite_channel`) applies each channel with
fixed settings and a fixed seed; training (`random_channel`) draws from the same channel functions with
random settings, so training and evaluation describe channels the same way.

Filters come from scipy.signal (Butterworth designs and the audio-EQ-cookbook biquads), rooms from
pyroomacoustics, codecs from libsndfile (GSM 06.10, MP3) and the project's G.711 coder. (audiomentations
offers the same filters but caps soxr below 1.0, which the Pipecat extra needs.)

The G.711 mu-law encoder is the Sun/CCITT reference coder on 14-bit samples, rounded from float as SoX does
(it matches `sox -e mu-law` byte for byte on every 16-bit input); decoding uses the runtime's table
(`anger_stream.codec.decode`), so evaluation hears what a mu-law caller would send. The tests and the serve
load test encode their callers' audio with it.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
import soundfile as sf
from scipy import signal

from anger_stream import codec
from anger_stream.audio import SAMPLE_RATE, resample

SR = SAMPLE_RATE
NARROW = 8_000
_BIAS = 0x84 >> 2  # the mu-law bias on the 14-bit scale
_CLIP = 8159  # the largest 14-bit magnitude mu-law can code
Channel = Callable[[np.ndarray, np.random.Generator, np.ndarray | None], np.ndarray]


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def active_rms(x: np.ndarray) -> float:
    """RMS of the non-silent part of a clip (10 ms frames within 40 dB of the loudest)."""
    n = len(x) // 160
    if n == 0:
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    ms = np.mean(np.square(x[: n * 160].reshape(n, 160), dtype=np.float64), axis=1)
    return float(np.sqrt(np.mean(ms[ms >= ms.max() * 1e-4]))) if ms.max() > 0 else 0.0


# --- spectral tilt and equalisation -------------------------------------------------------------------


def pre_emphasis(x: np.ndarray, coef: float) -> np.ndarray:
    """y[n] = x[n] - coef x[n-1]: coef > 0 brightens (thin headset), coef < 0 dulls."""
    return _f32(signal.lfilter([1.0, -coef], [1.0], x))


def _sosfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Filter with the state started at the first sample (no click at the start)."""
    y, _ = signal.sosfilt(sos, x, zi=signal.sosfilt_zi(sos) * x[0]) if len(x) else (x, None)
    return _f32(y)


def butterworth(x: np.ndarray, cutoff_hz: float, btype: str, octave_db: int) -> np.ndarray:
    """A Butterworth low- or high-pass falling `octave_db` dB per octave (order octave_db / 6)."""
    return _sosfilt(signal.butter(octave_db // 6, cutoff_hz, btype=btype, fs=SR, output="sos"), x)


def biquad(kind: str, f0: float, gain_db: float, q: float) -> np.ndarray:
    """One second-order section of the audio-EQ cookbook: 'peak', 'lowshelf' or 'highshelf'."""
    w = 2 * np.pi * f0 / SR
    a = 10 ** (gain_db / 40)
    alpha, cos = np.sin(w) / (2 * q), np.cos(w)
    if kind == "peak":
        b, den = [1 + alpha * a, -2 * cos, 1 - alpha * a], [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:
        sign = 1 if kind == "lowshelf" else -1
        root = 2 * np.sqrt(a) * alpha
        b = [
            a * ((a + 1) - sign * (a - 1) * cos + root),
            sign * 2 * a * ((a - 1) - sign * (a + 1) * cos),
            a * ((a + 1) - sign * (a - 1) * cos - root),
        ]
        den = [(a + 1) + sign * (a - 1) * cos + root, -sign * 2 * ((a - 1) + sign * (a + 1) * cos)]
        den.append((a + 1) + sign * (a - 1) * cos - root)
    return np.array([[*np.divide(b, den[0]), 1.0, den[1] / den[0], den[2] / den[0]]])


def dull_tilt(x: np.ndarray, corner_hz: float = 800.0) -> np.ndarray:
    """A -6 dB/octave slope above `corner_hz` (a first-order low-pass): a muffled microphone."""
    return butterworth(x, corner_hz, "lowpass", 6)


def random_eq(x: np.ndarray, rng: np.random.Generator, max_db: float = 12.0) -> np.ndarray:
    """A random low shelf, high shelf and two peaking bands, each within +-max_db."""
    sections = [
        biquad("lowshelf", rng.uniform(100, 600), rng.uniform(-max_db, max_db), rng.uniform(0.5, 1.0)),
        biquad("highshelf", rng.uniform(1500, 6000), rng.uniform(-max_db, max_db), rng.uniform(0.5, 1.0)),
        biquad("peak", rng.uniform(200, 1500), rng.uniform(-max_db, max_db), rng.uniform(0.5, 3.0)),
        biquad("peak", rng.uniform(1500, 6500), rng.uniform(-max_db, max_db), rng.uniform(0.5, 3.0)),
    ]
    return _sosfilt(np.concatenate(sections), _f32(x))


def low_pass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """A steep (36 dB/octave) low-pass: a band-limited line or codec."""
    return butterworth(x, cutoff_hz, "lowpass", 36)


def high_pass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """A 12 dB/octave high-pass: small loudspeakers and telephone microphones lose the lows."""
    return butterworth(x, cutoff_hz, "highpass", 12)


# --- lines and codecs ----------------------------------------------------------------------------------


def mulaw_encode(x: np.ndarray) -> bytes:
    """Float samples (full scale 1.0) -> G.711 mu-law bytes."""
    scaled = np.floor(np.asarray(x, dtype=np.float64) * 8192.0 + 0.5)  # to 14 bits, rounding as SoX does
    pcm = np.clip(scaled, -8192, 8191).astype(np.int32)
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _CLIP) + _BIAS
    seg = np.maximum(np.floor(np.log2(mag)).astype(np.int32) - 5, 0)  # first seg with mag <= 0x3F << seg
    code = np.where(seg > 7, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8).tobytes()


def _band(x: np.ndarray) -> np.ndarray:
    """The telephone band, 300-3400 Hz, at 8 kHz (4th-order Butterworth band-pass)."""
    sos = signal.butter(4, [300, 3400], btype="bandpass", fs=NARROW, output="sos")
    return signal.sosfilt(sos, x)


def telephone(x: np.ndarray, law: str = "mulaw", band: bool = False) -> np.ndarray:
    """16 kHz -> 8 kHz -> G.711 (mu-law or A-law) -> 16 kHz. With `band`, the line's 300-3400 Hz band-pass
    first, scaled down to full scale where it would clip (the evaluation's channel has no band-pass)."""
    narrow = resample(x, SR, NARROW)
    if band:
        narrow = _band(narrow)
        narrow = narrow / max(float(np.max(np.abs(narrow))), 1.0)
    if law == "mulaw":
        coded = codec.decode(mulaw_encode(narrow), "mulaw")
    else:
        coded = _via_soundfile(narrow, NARROW, "WAV", "ALAW")
    return _fit(resample(coded, NARROW, SR), len(x))


def gsm(x: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz telephone band -> GSM 06.10 full rate (libsndfile) -> 16 kHz."""
    narrow = _band(resample(x, SR, NARROW))
    narrow = narrow / max(float(np.max(np.abs(narrow))), 1.0)
    return _fit(resample(_via_soundfile(narrow, NARROW, "WAV", "GSM610"), NARROW, SR), len(x))


def mp3(x: np.ndarray, compression: float = 0.9) -> np.ndarray:
    """An MP3 round trip through libsndfile (LAME); compression 0.9 is about 24 kbit/s at 16 kHz."""
    peak = max(float(np.max(np.abs(x))), 1.0)
    y = _via_soundfile(x / peak, SR, "MP3", "MPEG_LAYER_III", compression_level=compression, bitrate_mode="CONSTANT")
    return _f32(_align(y, x) * peak)


def _via_soundfile(x: np.ndarray, rate: int, fmt: str, subtype: str, **options: object) -> np.ndarray:
    buf = io.BytesIO()
    sf.write(buf, _f32(np.clip(x, -1.0, 1.0)), rate, format=fmt, subtype=subtype, **options)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return y


def _align(y: np.ndarray, x: np.ndarray, max_lag: int = 2400) -> np.ndarray:
    """y shifted by the lag that best matches x (codec delay), cut or zero-padded to len(x)."""
    n = len(x)
    padded = np.concatenate([y, np.zeros(max(n + max_lag - len(y), 0), dtype=np.float32)])
    corr = signal.correlate(padded[: n + max_lag], x, mode="valid")
    lag = int(np.argmax(corr)) if len(corr) and np.any(corr) else 0
    return _f32(padded[lag : lag + n])


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(y))] = y[:n]
    return out


# --- rooms -----------------------------------------------------------------------------------------------


@cache
def room_response(rt60: float, seed: int) -> np.ndarray:
    """The impulse response of a shoebox room with reverberation time `rt60` (image sources,
    pyroomacoustics), source and microphone placed at random; unit energy."""
    rng = np.random.default_rng(seed)
    dim = rng.uniform([3.0, 3.0, 2.4], [8.0, 7.0, 3.5])
    import pyroomacoustics as pra  # only rooms need it (and its import is slow)

    absorption, order = pra.inverse_sabine(rt60, dim)
    room = pra.ShoeBox(dim, fs=SR, materials=pra.Material(absorption), max_order=min(order, 40))
    room.add_source(rng.uniform([0.5, 0.5, 1.0], dim - [0.5, 0.5, 1.0]))
    room.add_microphone(rng.uniform([0.5, 0.5, 0.8], dim - [0.5, 0.5, 0.8]))
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    return _f32(h / np.sqrt(np.sum(h**2)))


def reverb(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x convolved with a room response, aligned on the direct path, same length."""
    onset = int(np.argmax(np.abs(h)))
    return _f32(signal.fftconvolve(x, h)[onset : onset + len(x)])


# --- noise -------------------------------------------------------------------------------------------------


def colored_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, decay_db: float = -3.01) -> np.ndarray:
    """Noise with a spectral slope of `decay_db` per octave (0 white, -3 pink, -6 brown) at `snr_db`
    below the clip's active speech level."""
    spectrum = np.fft.rfft(rng.standard_normal(len(x)))
    f = np.fft.rfftfreq(len(x), 1 / SR)
    f[0] = f[1] if len(f) > 1 else 1.0
    noise = np.fft.irfft(spectrum * f ** (decay_db / (20 * np.log10(2))), len(x))
    return _add(x, noise, snr_db)


def babble(x: np.ndarray, rng: np.random.Generator, pool: np.ndarray, snr_db: float, talkers: int = 4) -> np.ndarray:
    """Other people talking: `talkers` random stretches of `pool` (other speakers' speech), each at its
    own active level, summed and added at `snr_db` below the clip's active speech level."""
    mix = np.zeros(len(x), dtype=np.float64)
    for _ in range(talkers):
        start = int(rng.integers(0, max(len(pool) - len(x), 1)))
        part = _fit(pool[start : start + len(x)], len(x))
        mix += part / max(active_rms(part), 1e-9)
    return _add(x, mix, snr_db)


def _add(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    level = active_rms(x)
    noise_rms = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64))))
    if level == 0 or noise_rms == 0:
        return _f32(x)
    return _f32(x + noise * (level / noise_rms) * 10.0 ** (-snr_db / 20.0))


# --- level -------------------------------------------------------------------------------------------------


def at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """The clip scaled so its active speech is at `dbfs`, rounded to 16-bit samples."""
    level = active_rms(x)
    if level == 0:
        return _f32(x)
    y = x * (10.0 ** (dbfs / 20.0) / level)
    return _f32(np.round(np.clip(y, -1.0, 1.0) * 32767.0) / 32767.0)


def hard_clip(x: np.ndarray, ceiling: float = 0.3) -> np.ndarray:
    """An overdriven input: the clip scaled to peak at full scale, then clipped at `ceiling` of it."""
    peak = float(np.max(np.abs(x)))
    return _f32(np.clip(x / peak, -ceiling, ceiling)) if peak > 0 else _f32(x)


# --- the evaluation suite ------------------------------------------------------------------------------

SUITE: dict[str, Channel] = {
    "clean": lambda x, rng, pool: _f32(x),
    "bright (pre-emphasis 0.9)": lambda x, rng, pool: pre_emphasis(x, 0.9),
    "dull (-6 dB/oct above 800 Hz)": lambda x, rng, pool: dull_tilt(x, 800.0),
    "random EQ (+-12 dB)": lambda x, rng, pool: random_eq(x, rng),
    "telephone 8 kHz mu-law": lambda x, rng, pool: telephone(x, "mulaw", band=True),
    "GSM 06.10": lambda x, rng, pool: gsm(x),
    "MP3 24 kbit/s": lambda x, rng, pool: mp3(x, 0.9),
    "low-pass 1.5 kHz": lambda x, rng, pool: low_pass(x, 1500.0),
    "low-pass 4 kHz": lambda x, rng, pool: low_pass(x, 4000.0),
    "room RT60 0.3 s": lambda x, rng, pool: reverb(x, room_response(0.3, int(rng.integers(8)))),
    "room RT60 0.8 s": lambda x, rng, pool: reverb(x, room_response(0.8, int(rng.integers(8)))),
    "babble 20 dB": lambda x, rng, pool: babble(x, rng, pool, 20.0),
    "babble 10 dB": lambda x, rng, pool: babble(x, rng, pool, 10.0),
    "babble 5 dB": lambda x, rng, pool: babble(x, rng, pool, 5.0),
    "pink noise 20 dB": lambda x, rng, pool: colored_noise(x, rng, 20.0),
    "pink noise 10 dB": lambda x, rng, pool: colored_noise(x, rng, 10.0),
    "pink noise 5 dB": lambda x, rng, pool: colored_noise(x, rng, 5.0),
    "speech at -30 dBFS": lambda x, rng, pool: at_level(x, -30.0),
    "hard clipping at 0.3": lambda x, rng, pool: hard_clip(x, 0.3),
}
SUITE_NAMES: tuple[str, ...] = tuple(SUITE)
NEEDS_POOL = frozenset(name for name in SUITE_NAMES if name.startswith("babble"))


def channel_rng(name: str, seed: int) -> np.random.Generator:
    """The generator a suite channel uses for one clip: fixed by the channel's name and the seed."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def suite_channel(name: str, x: np.ndarray, seed: int, babble_pool: np.ndarray | None = None) -> np.ndarray:
    """Clip `x` (16 kHz float32) through the suite channel `name`; deterministic for (name, seed, x).

    `babble_pool` (other speakers' speech at 16 kHz) is needed by the babble channels."""
    if name in NEEDS_POOL and (babble_pool is None or len(babble_pool) == 0):
        raise ValueError(f"channel {name!r} needs a babble pool")
    return SUITE[name](_f32(x), channel_rng(name, seed), babble_pool)


# --- random draws for training -------------------------------------------------------------------------

ROOMS = tuple((rt60, seed) for rt60 in (0.2, 0.35, 0.5, 0.7, 0.9) for seed in range(4))


def random_channel(x: np.ndarray, rng: np.random.Generator, babble_pool: np.ndarray | None = None) -> np.ndarray:
    """A random microphone, room, line and noise for one training clip (same length, float32).

    Each stage is drawn independently: spectral tilt (pre-emphasis -0.7..0.95) or a random EQ, a band
    limit (low-pass, high-pass, G.711, GSM or MP3), a room, then white/pink/brown noise or babble at
    0-30 dB SNR, and rarely clipping."""
    y = _f32(x)
    if rng.random() < 0.6:
        y = pre_emphasis(y, rng.uniform(-0.7, 0.95)) if rng.random() < 0.5 else random_eq(y, rng)
    if rng.random() < 0.5:
        kind = rng.integers(5)
        if kind == 0:
            y = low_pass(y, rng.uniform(1200.0, 7000.0))
        elif kind == 1:
            y = high_pass(y, rng.uniform(100.0, 600.0))
        elif kind == 2:
            y = telephone(y, "mulaw" if rng.random() < 0.5 else "alaw", band=True)
        elif kind == 3:
            y = gsm(y)
        else:
            y = mp3(y, rng.uniform(0.6, 0.9))
    if rng.random() < 0.3:
        y = reverb(y, room_response(*ROOMS[rng.integers(len(ROOMS))]))
    if rng.random() < 0.5:
        snr = rng.uniform(0.0, 30.0)
        if babble_pool is not None and len(babble_pool) and rng.random() < 0.4:
            y = babble(y, rng, babble_pool, snr)
        else:
            y = colored_noise(y, rng, snr, rng.choice([0.0, -3.01, -6.02]))
    if rng.random() < 0.05:
        y = hard_clip(y, rng.uniform(0.2, 0.7))
    return y
