"""A streaming twin of scipy.signal.resample_poly for many streams at one rate: chunks in, the same samples out.

resample_poly filters the zero-stuffed input with a Kaiser-windowed FIR (scipy's own design) and keeps every
`down`-th sample. Output sample i depends only on a finite stretch of input, so it can be produced as soon
as that stretch has arrived; at the end of a stream the zeros that resample_poly assumes past the end are
supplied. Streams at the same rate keep their input in rows of one `Rows` buffer and are filtered together,
one 2-D `upfirdn` per block of rows; each stream's concatenated output equals resample_poly of its whole
signal up to float rounding, whatever its chunks.
"""

from __future__ import annotations

from functools import cache
from math import gcd

import numpy as np

from . import audio
from .buffers import Rows

BLOCK_ROWS = 32
"""Streams filtered per upfirdn call (sorted by how much input each has, so that little of a block is padding)."""


@cache
def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    """resample_poly's filter for up/down, front-padded to a multiple of down, and the leading outputs it drops."""
    from scipy.signal import firwin  # imported when needed: it costs a noticeable part of start-up

    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    pre_pad = down - half_len % down
    return np.concatenate([np.zeros(pre_pad), h]), (half_len + pre_pad) // down


class Resampler:
    """Resample many streams from rate_in to rate_out; the caller keeps each stream's input in a row of `rows`
    and its count of outputs produced."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self._h, self._skip = _design(self.up, self.down)

    def last_input(self, i: np.ndarray | int) -> np.ndarray | int:
        """Highest input index that output i depends on."""
        return (i + self._skip) * self.down // self.up

    def first_input(self, i: np.ndarray | int) -> np.ndarray | int:
        """Lowest input index output i may depend on, rounded down to a multiple of `down`."""
        lo = np.maximum(((i + self._skip) * self.down - len(self._h)) // self.up + 1, 0)
        return lo - lo % self.down

    def inputs_for(self, n_out: int) -> int:
        """How many input samples are needed before the first n_out outputs can be produced."""
        return int(self.last_input(n_out - 1)) + 1 if n_out > 0 else 0

    def ready(self, n_in: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Outputs fully determined by n_in inputs; at the end of a stream, all of them."""
        determined = (n_in * self.up - 1) // self.down - self._skip + 1
        return np.maximum(np.where(ended, -(-n_in * self.up // self.down), determined), 0)

    def produce(self, rows: Rows, which: np.ndarray, done: np.ndarray, stop: np.ndarray) -> list[np.ndarray]:
        """For each row in `which`, outputs done .. stop-1 (float32), from the input it holds (zeros past its
        end; cleaned by `audio.sane` where it needs). Every output must be new (stop > done)."""
        lo = self.first_input(done)
        hi = self.last_input(stop - 1) + 1
        have = np.minimum(hi, rows.end[which])
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(which)
        order = np.argsort(hi - lo, kind="stable")
        from scipy.signal import upfirdn

        for b in range(0, len(order), BLOCK_ROWS):
            part = order[b : b + BLOCK_ROWS]
            block = np.zeros((len(part), int((hi - lo)[part].max())), dtype=np.float32)
            for j, k in enumerate(part.tolist()):
                block[j, : have[k] - lo[k]] = rows.read(int(which[k]), int(lo[k]), int(have[k]))
            if not np.isfinite(block).all():
                block = audio.sane(block)
            y = upfirdn(self._h, block, self.up, self.down, axis=1)
            for j, k in enumerate(part.tolist()):
                offset = int(done[k] + self._skip - lo[k] * self.up // self.down)
                out[k] = y[j, offset : offset + int(stop[k] - done[k])].astype(np.float32)
        return out
