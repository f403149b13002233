"""A streaming twin of scipy.signal.resample_poly: chunks in, the same samples out.

resample_poly filters the zero-stuffed input with a Kaiser-windowed FIR (scipy's own design) and keeps every
`down`-th sample. Output sample i depends only on a finite stretch of input, so it can be produced as soon
as that stretch has arrived; `flush()` supplies the zeros that resample_poly assumes past the end. The
concatenated output equals resample_poly of the whole signal up to float rounding.
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np


class StreamingResampler:
    """Resample a stream from rate_in to rate_out, chunk by chunk."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        from scipy.signal import firwin  # imported when needed: it costs a noticeable part of start-up

        g = gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        pre_pad = self.down - half_len % self.down
        self._h = np.concatenate([np.zeros(pre_pad), h])
        self._skip = (half_len + pre_pad) // self.down  # leading outputs resample_poly drops
        self._history = np.zeros(0)  # inputs from absolute index self._base on
        self._base = 0
        self._n_in = 0
        self._next = 0  # next output index to produce

    def _last_input(self, i: int) -> int:
        """Highest input index that output i depends on."""
        return (i + self._skip) * self.down // self.up

    def _first_input(self, i: int) -> int:
        """Lowest input index output i may depend on, rounded down to a multiple of `down`."""
        lo = max(((i + self._skip) * self.down - len(self._h)) // self.up + 1, 0)
        return lo - lo % self.down

    def inputs_for(self, n_out: int) -> int:
        """How many input samples `process` needs before it has returned the first n_out outputs."""
        return self._last_input(n_out - 1) + 1 if n_out > 0 else 0

    def _produce(self, stop: int) -> np.ndarray:
        """Outputs self._next .. stop-1 from the history (zeros past the end of the input)."""
        if stop <= self._next:
            return np.zeros(0, dtype=np.float32)
        lo, hi = self._first_input(self._next), self._last_input(stop - 1) + 1
        x = self._history[lo - self._base : hi - self._base]
        x = np.pad(x, (0, hi - lo - len(x)))
        from scipy.signal import upfirdn

        full = upfirdn(self._h, x, self.up, self.down)
        offset = self._next + self._skip - lo * self.up // self.down
        y = full[offset : offset + stop - self._next]
        self._next = stop
        keep = self._first_input(self._next)
        self._history = self._history[keep - self._base :]
        self._base = keep
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed a chunk; return every output sample that is now fully determined."""
        if self.up == self.down:
            return np.asarray(x, dtype=np.float32)
        self._history = np.concatenate([self._history, np.asarray(x, dtype=np.float64)])
        self._n_in += len(x)
        # outputs whose last input has arrived, searched forward from a safe estimate
        stop = max(self._next, (self._n_in - 1) * self.up // self.down - self._skip - 1)
        while self._last_input(stop) < self._n_in:
            stop += 1
        return self._produce(stop)

    def flush(self) -> np.ndarray:
        """The remaining outputs, as resample_poly computes them at the end of the signal."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        return self._produce(ceil(self._n_in * self.up / self.down))
