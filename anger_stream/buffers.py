"""The recent audio of many streams in one 2-D array, a row each, so that numpy can cut and filter them all."""

from __future__ import annotations

import numpy as np


class Rows:
    """Float32 samples of many streams: row r holds its stream's samples from absolute index base[r] (at
    column 0) up to end[r]. A write that does not fit drops what the reader no longer needs (before `keep`);
    if it still does not fit, every row is widened."""

    def __init__(self, width: int) -> None:
        self.buf = np.zeros((0, width), dtype=np.float32)
        self.base = np.zeros(0, dtype=np.int64)
        self.end = np.zeros(0, dtype=np.int64)
        self._free: list[int] = []

    def __len__(self) -> int:
        """Rows allocated (in use or free)."""
        return len(self.buf)

    def open(self) -> int:
        """A row for a new stream, empty, at absolute index 0."""
        if not self._free:
            n = len(self.buf)
            grow = max(n, 4)
            self.buf = np.concatenate([self.buf, np.zeros((grow, self.buf.shape[1]), dtype=np.float32)])
            self.base = np.concatenate([self.base, np.zeros(grow, dtype=np.int64)])
            self.end = np.concatenate([self.end, np.zeros(grow, dtype=np.int64)])
            self._free = list(range(n + grow - 1, n - 1, -1))
        row = self._free.pop()
        self.base[row] = self.end[row] = 0
        return row

    def close(self, row: int) -> None:
        self._free.append(row)

    def write(self, row: int, x: np.ndarray, keep: int) -> None:
        """Append samples to a row; samples before absolute index `keep` may be dropped to make room."""
        n = len(x)
        base, end = int(self.base[row]), int(self.end[row])
        if end - base + n > self.buf.shape[1]:
            keep = min(keep, end)
            drop = keep - base
            self.buf[row, : end - keep] = self.buf[row, drop : end - base]
            self.base[row] = base = keep
            if end - base + n > self.buf.shape[1]:
                width = max(2 * self.buf.shape[1], end - base + n)
                self.buf = np.pad(self.buf, ((0, 0), (0, width - self.buf.shape[1])))
        self.buf[row, end - base : end - base + n] = x
        self.end[row] = end + n

    def read(self, row: int, start: int, stop: int) -> np.ndarray:
        """Absolute samples start .. stop-1 of a row (a view; start must not be before the row's base)."""
        base = int(self.base[row])
        return self.buf[row, start - base : stop - base]
