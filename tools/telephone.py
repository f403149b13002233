"""A narrowband telephone channel for evaluation: 16 kHz -> 8 kHz -> G.711 mu-law -> 8 kHz -> 16 kHz.

The encoder is ITU-T G.711 mu-law: the Sun/CCITT reference coder on 14-bit samples, rounded from float as
SoX does (it matches `sox -e mu-law` byte for byte on every 16-bit input). Decoding uses the runtime's table
(`anger_stream.codec.decode`), so evaluation hears what a mu-law caller would send.
"""

from __future__ import annotations

import numpy as np

from anger_stream.audio import SAMPLE_RATE, resample
from anger_stream.codec import decode

TELEPHONE_RATE = 8_000
_BIAS = 0x84 >> 2  # the mu-law bias on the 14-bit scale
_CLIP = 8159  # the largest 14-bit magnitude mu-law can code


def mulaw_encode(x: np.ndarray) -> bytes:
    """Float samples (full scale 1.0) -> G.711 mu-law bytes."""
    scaled = np.floor(np.asarray(x, dtype=np.float64) * 8192.0 + 0.5)  # to 14 bits, rounding as SoX does
    pcm = np.clip(scaled, -8192, 8191).astype(np.int32)
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _CLIP) + _BIAS
    seg = np.maximum(np.floor(np.log2(mag)).astype(np.int32) - 5, 0)  # first seg with mag <= 0x3F << seg
    code = np.where(seg > 7, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8).tobytes()


def telephone(x: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pass mono float audio at `rate` through an 8 kHz mu-law channel; returns float32 at `rate`."""
    narrow = resample(x, rate, TELEPHONE_RATE)
    return resample(decode(mulaw_encode(narrow), "mulaw"), TELEPHONE_RATE, rate)
