"""Raw headerless audio bytes -> float32 samples in [-1, 1]: s16le, f32le, G.711 mu-law and A-law.

The one decoder of raw audio, for standard input (`sources.raw`) and phone calls (`calls`). Pure numpy.
"""

from __future__ import annotations

import numpy as np

WIDTHS = {"s16le": 2, "f32le": 4, "mulaw": 1, "alaw": 1}
"""Encodings and their bytes per sample."""


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 mu-law: byte -> linear sample (16-bit scale)."""
    u = ~np.arange(256, dtype=np.uint8)
    t = (((u & 0x0F).astype(np.int32) << 3) + 0x84) << ((u >> 4) & 0x07).astype(np.int32)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: byte -> linear sample (16-bit scale)."""
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    seg = ((a & 0x70) >> 4).astype(np.int32)
    t = (a & 0x0F).astype(np.int32) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


G711 = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}
"""G.711 byte -> 16-bit linear sample, per law."""


def decode(data: bytes, encoding: str) -> np.ndarray:
    """Bytes of whole samples in `encoding` (a key of WIDTHS) -> float32 in [-1, 1].

    f32le samples are returned as they are, NaN and infinities included: what to do with those is the
    caller's decision (standard input rejects them, a call's stream scores them as silence).
    """
    if encoding == "s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "f32le":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if encoding in G711:
        return G711[encoding][np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
    raise ValueError(f"unknown encoding {encoding!r} (known: {', '.join(WIDTHS)})")
