"""Audio files through libsndfile (soundfile): any format it reads, any rate and channel count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import mixdown
from .errors import InputError

BLOCK = 4096


def open_file(path: str | Path) -> sf.SoundFile:
    """Open an audio file for reading, or raise InputError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"is a directory, not an audio file: {path}")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot decode {path}: {str(exc).splitlines()[0]}") from None
    if f.frames == 0:
        f.close()
        raise InputError(f"no audio in {path} (zero frames)")
    return f


def read_blocks(f: sf.SoundFile, block: int = BLOCK) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an open file, decoded as they are needed."""
    try:
        for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
            yield mixdown(chunk)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"cannot decode {f.name}: {str(exc).splitlines()[0]}") from None


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """A whole file as mono float32 samples and its sample rate."""
    with open_file(path) as f:
        rate = f.samplerate
        blocks = list(read_blocks(f, 1 << 16))
    return np.concatenate(blocks), rate
