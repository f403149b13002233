"""Standard input: a WAV, FLAC or OGG stream is recognised by its header and decoded (libsndfile); anything
else is headerless raw audio in the format and at the rate the user gives (sources/raw.py).

libsndfile reads WAV and OGG sequentially from a pipe, so those are decoded as the bytes arrive: a copier
thread replays the header bytes already peeked at, then the rest of stdin, into a pipe libsndfile reads.
FLAC needs a seekable file, so a FLAC stream is read to its end first.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf

from ..audio import mixdown
from .errors import InputError, require_finite
from .file import BLOCK

SNIFF_BYTES = 12


def container(head: bytes) -> str | None:
    """'WAV', 'FLAC' or 'OGG' from a stream's first bytes, or None for headerless audio."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    return None


def sniff(stream: io.BufferedReader) -> str | None:
    """The container of a buffered byte stream, without consuming anything (one read at most)."""
    return container(stream.peek(SNIFF_BYTES)[:SNIFF_BYTES])


def _replay(stream: BinaryIO, write_fd: int) -> None:
    """Copy a stream into a pipe until it ends or the reader goes away."""
    try:
        while data := stream.read1(1 << 16):  # type: ignore[attr-defined]
            os.write(write_fd, data)
    except OSError:  # the decoder stopped reading (bad data, or the command is ending)
        pass
    finally:
        os.close(write_fd)


def open_stream(stream: io.BufferedReader, kind: str, name: str = "standard input") -> sf.SoundFile:
    """A SoundFile decoding a WAV, FLAC or OGG byte stream (`name`: stdin or a pipe, for messages); InputError
    if libsndfile cannot."""
    try:
        if kind == "FLAC":
            return sf.SoundFile(io.BytesIO(stream.read()))
        read_fd, write_fd = os.pipe()
        threading.Thread(target=_replay, args=(stream, write_fd), name="stdin-copy", daemon=True).start()
        return sf.SoundFile(read_fd, closefd=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot decode the {kind} stream on {name}: {str(exc).splitlines()[0]}") from None


def read_stream(f: sf.SoundFile, name: str = "standard input", block: int = BLOCK) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an open (possibly unseekable) SoundFile as they are decoded."""
    total = 0
    try:
        while len(chunk := f.read(block, dtype="float32", always_2d=True)):
            total += len(chunk)
            yield mixdown(require_finite(chunk, name))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"cannot decode {name}: {str(exc).splitlines()[0]}") from None
    finally:
        f.close()
    if total == 0:
        raise InputError(f"no audio on {name} (a header but zero frames)")
