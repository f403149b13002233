"""Raw headerless audio from a byte stream (stdin): s16le, f32le, G.711 mu-law or A-law."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from .. import codec
from ..audio import NON_FINITE
from .errors import InputError

FORMATS = codec.WIDTHS
"""Raw formats and their bytes per sample."""


def decode_raw(data: bytes, fmt: str) -> np.ndarray:
    """Bytes of whole samples -> float32 in [-1, 1]; non-finite f32le samples are an input error."""
    x = codec.decode(data, fmt)
    if fmt == "f32le" and not np.all(np.isfinite(x)):
        raise InputError(f"f32le input {NON_FINITE} (is --format right?)")
    return x


def read_raw(
    stream: BinaryIO, fmt: str, chunk_samples: int = 1600, name: str = "standard input"
) -> Iterator[np.ndarray]:
    """Decode a raw byte stream chunk by chunk as bytes arrive; a trailing partial sample is an error."""
    width = FORMATS[fmt]
    leftover = b""
    total = 0
    read = getattr(stream, "read1", stream.read)
    while data := read(chunk_samples * width):
        data = leftover + data
        whole = len(data) - len(data) % width
        leftover = data[whole:]
        total += whole
        if whole:
            yield decode_raw(data[:whole], fmt)
    if leftover:
        raise InputError(f"input ends with a partial {fmt} sample ({total + len(leftover)} bytes)")
    if total == 0:
        raise InputError(f"no audio on {name} (zero bytes)")
