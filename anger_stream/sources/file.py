"""Audio files through libsndfile (soundfile): any format it reads, any rate and channel count."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import mixdown
from ..files import check_input, shown
from .errors import InputError, require_finite

BLOCK = 4096
_PLACEHOLDER_SIZES = 0x7FFF0000
"""A WAV data size at or above this (or 0) is a streaming writer's placeholder, not a claim of length."""


@dataclass(frozen=True)
class Recording:
    """A whole file: float32 samples (frames, channels), its rate, and what was wrong with it but usable."""

    samples: np.ndarray
    rate: int
    warning: str | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


def open_file(path: str | Path) -> sf.SoundFile:
    """Open an audio file for reading, or raise InputError with a one-line reason."""
    check_input(path)
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: any name the system allows, UTF-8 or not
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot decode {shown(path)}: {_first_line(exc)}") from None
    if f.frames == 0:
        f.close()
        raise InputError(f"no audio in {shown(path)} (zero frames)")
    return f


def _first_line(exc: Exception) -> str:
    """libsndfile's reason, without its "Error opening 'name':" prefix (the name is given once, readably)."""
    text = str(exc).splitlines()[0].removeprefix("Error : ")
    return re.sub(r"^Error opening .*?: ", "", text)


def read_frames(
    f: sf.SoundFile, path: str | Path, warn: Callable[[str], None], block: int = BLOCK
) -> Iterator[np.ndarray]:
    """Float32 blocks (frames, channels) of an open file, decoded as they are needed. A file cut short keeps
    the audio present, as `read_recording` does, and `warn` says what is missing."""
    frames, reason = 0, None
    try:
        for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
            frames += len(chunk)
            yield require_finite(chunk, shown(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        reason = _first_line(exc)
        if not frames:
            raise InputError(f"cannot decode {shown(path)}: {reason}") from None
    warning = _truncation(f, frames, reason)
    if warning:
        warn(f"{shown(path)}: {warning}")


def _declared_frames(f: sf.SoundFile) -> int:
    """Frames the file's header declares: libsndfile trims a WAV's data size to the bytes present and says
    so in its log ("data : 128000 (should be 63978)"); other formats' frame counts are the header's."""
    match = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", f.extra_info, re.MULTILINE)
    if match:
        declared, present = int(match[1]), int(match[2])
        if 0 < present < declared < _PLACEHOLDER_SIZES:
            return round(f.frames * declared / present)
    return f.frames


def _truncation(f: sf.SoundFile, frames: int, reason: str | None) -> str | None:
    """What is missing from a file of which `frames` could be decoded (None if nothing)."""
    declared = _declared_frames(f)
    if frames < declared:
        why = f" ({reason})" if reason else ""
        got, total = frames / f.samplerate, declared / f.samplerate
        return f"truncated: {got:.3f} s of the {total:.3f} s its header declares{why}"
    if reason:
        return f"truncated: decoding stopped at {frames / f.samplerate:.3f} s ({reason})"
    if "lacks an end-of-stream" in f.extra_info:
        return "truncated: the stream ends without its end-of-stream mark"
    return None


def read_recording(path: str | Path, cancelled: Callable[[], bool] = lambda: False) -> Recording:
    """A whole file, all its channels; a file cut short keeps the audio present and says what is missing.

    `cancelled` is checked between blocks: when it returns True, reading stops with an InputError.
    """
    reason = None
    with open_file(path) as f:
        # decoded into one array of the length the header gives (grown if it says too little): a list of blocks
        # joined at the end held the audio twice
        samples, n = np.empty((max(f.frames, 0) if f.seekable() else 0, f.channels), np.float32), 0
        try:
            for chunk in f.blocks(blocksize=BLOCK, dtype="float32", always_2d=True):  # as the detector reads
                if cancelled():
                    raise InputError(f"reading {shown(path)} was cancelled")
                if n + len(chunk) > len(samples):
                    samples = np.resize(samples, (max(2 * len(samples), n + len(chunk)), f.channels))
                samples[n : n + len(chunk)] = require_finite(chunk, shown(path))
                n += len(chunk)
        except (sf.LibsndfileError, RuntimeError) as exc:
            reason = _first_line(exc)
            if not n:
                raise InputError(f"cannot decode {shown(path)}: {reason}") from None
        samples = samples[:n]
        return Recording(samples, f.samplerate, _truncation(f, len(samples), reason))


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """A whole file as mono float32 samples (channels averaged) and its sample rate."""
    recording = read_recording(path)
    return mixdown(recording.samples), recording.rate
