"""A streaming twin of scipy.signal.resample_poly for many streams at one rate: chunks in, the same samples out.

resample_poly filters the zero-stuffed input with a Kaiser-windowed FIR (scipy's own design) and keeps every
`down`-th sample. Output sample i depends only on a finite stretch of input, so it can be produced as soon
as that stretch has arrived; at the end of a stream the zeros that resample_poly assumes past the end are
supplied. Streams at the same rate keep their input in rows of one `Rows` buffer and are filtered together,
one 2-D filtering per block of rows; each stream's concatenated output equals resample_poly of its whole
signal up to float rounding, whatever its chunks.

Upsampling by a whole factor (8 kHz telephone audio to 16 kHz) filters each polyphase branch on its own
(scipy.ndimage.correlate1d), without the taps that are zero: resample_poly's filter for a factor of 2 is
half-band, so one branch is a single tap and the other is symmetric (which correlate1d folds): a quarter of
`upfirdn`'s multiplications. Other ratios use `upfirdn`.
"""

from __future__ import annotations

from functools import cache
from math import gcd

import numpy as np

from . import audio
from .buffers import Rows

BLOCK_ROWS = 32
"""Streams filtered together (sorted by how much input each has, so that little of a block is padding)."""
NEGLIGIBLE = 1e-9
"""A polyphase branch's taps below this share of the filter's largest are left out: far below float32's
resolution (the zero taps of a half-band filter come out of its design as about 1e-17)."""


@cache
def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    """resample_poly's filter for up/down, front-padded to a multiple of down, and the leading outputs it drops."""
    from scipy.signal import firwin  # imported when needed: it costs a noticeable part of start-up

    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    pre_pad = down - half_len % down
    return np.concatenate([np.zeros(pre_pad), h]), (half_len + pre_pad) // down


@cache
def _branches(up: int) -> tuple[tuple[int, np.ndarray], ...]:
    """The polyphase branches of the filter h for upsampling by `up`: for each p, h[p], h[p + up], ... without
    its negligible taps, as (index of its first tap kept, the taps kept, reversed for correlation)."""
    h = _design(up, 1)[0]
    floor = NEGLIGIBLE * np.abs(h).max()
    out = []
    for p in range(up):
        taps = np.flatnonzero(np.abs(h[p::up]) > floor)
        first = int(taps[0])
        out.append((first, h[p::up][first : taps[-1] + 1][::-1].copy()))
    return tuple(out)


def _upsample(branches: tuple[tuple[int, np.ndarray], ...], length: int, x: np.ndarray) -> np.ndarray:
    """upfirdn(h, x, up, 1, axis=1) for 2-D float32 x, branch by branch: output r*up + p is the sum over the
    kept taps hp[k] of branch p of hp[k] * x[r - k]."""
    from scipy.ndimage import correlate1d  # imported when needed, as upfirdn: it costs a noticeable part of start-up

    up = len(branches)
    rows, n = x.shape
    y = np.empty((rows, (n - 1) * up + length), dtype=np.float32)
    for p, (first, w) in enumerate(branches):
        count = -(-(y.shape[1] - p) // up)
        last = first + len(w) - 1  # x[r - last] .. x[r - first]: a left-aligned correlation of x delayed by last
        padded = np.zeros((rows, max(count, last + n)), dtype=np.float32)
        padded[:, last : last + n] = x
        y[:, p::up] = correlate1d(padded, w, axis=1, mode="constant", origin=-(len(w) // 2))[:, :count]
    return y


class Resampler:
    """Resample many streams from rate_in to rate_out; the caller keeps each stream's input in a row of `rows`
    and its count of outputs produced."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self._h, self._skip = _design(self.up, self.down)
        self._branches = _branches(self.up) if self.down == 1 else None

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
        for b in range(0, len(order), BLOCK_ROWS):
            part = order[b : b + BLOCK_ROWS]
            block = np.zeros((len(part), int((hi - lo)[part].max())), dtype=np.float32)
            for j, k in enumerate(part.tolist()):
                block[j, : have[k] - lo[k]] = rows.read(int(which[k]), int(lo[k]), int(have[k]))
            if not np.isfinite(block).all():
                block = audio.sane(block)
            y = self._filter(block)
            for j, k in enumerate(part.tolist()):
                offset = int(done[k] + self._skip - lo[k] * self.up // self.down)
                out[k] = y[j, offset : offset + int(stop[k] - done[k])].astype(np.float32, copy=False)
        return out

    def _filter(self, block: np.ndarray) -> np.ndarray:
        """upfirdn(h, block, up, down, axis=1), each row a stream's input."""
        if self._branches is not None:
            return _upsample(self._branches, len(self._h), block)
        from scipy.signal import upfirdn  # imported when needed: it costs a noticeable part of start-up

        return upfirdn(self._h, block, self.up, self.down, axis=1)
