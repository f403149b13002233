"""Raw audio decoding: every G.711 code as sox decodes it, PCM scaling, and what f32le passes through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from anger_stream import codec


@pytest.mark.skipif(not shutil.which("sox"), reason="needs sox to encode reference G.711")
@pytest.mark.parametrize(("law", "encoding"), [("mulaw", "mu-law"), ("alaw", "a-law")])
def test_g711_decoding_matches_sox(tmp_path: Path, law: str, encoding: str) -> None:
    # every one of the 256 codes, as sox decodes them
    codes = tmp_path / "codes.raw"
    codes.write_bytes(bytes(range(256)))
    decoded = tmp_path / "decoded.raw"
    subprocess.run(
        ["sox", "-t", "raw", "-r", "8000", "-e", encoding, "-b", "8", "-c", "1", str(codes),
         "-t", "raw", "-e", "signed", "-b", "16", str(decoded)],
        check=True,
    )  # fmt: skip
    reference = np.fromfile(decoded, dtype="<i2") / 32768.0
    np.testing.assert_array_equal(codec.decode(codes.read_bytes(), law), reference.astype(np.float32))


def test_pcm_encodings() -> None:
    pcm = np.array([-32768, 0, 16384], dtype="<i2")
    np.testing.assert_array_equal(codec.decode(pcm.tobytes(), "s16le"), [-1, 0, 0.5])
    floats = np.array([0.25, np.nan, -np.inf], dtype="<f4")
    np.testing.assert_array_equal(codec.decode(floats.tobytes(), "f32le"), floats)  # the caller decides
    assert all(len(codec.decode(bytes(4 * w), e)) == 4 for e, w in codec.WIDTHS.items())
    with pytest.raises(ValueError, match="unknown encoding"):
        codec.decode(b"\x00\x00", "s24le")
