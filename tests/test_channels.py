"""tools.channels: the evaluation suite is deterministic, keeps length and dtype, and stays finite."""

from __future__ import annotations

import numpy as np
import pytest

from tools import channels

SR = 16_000
RANDOM = {n for n in channels.SUITE_NAMES if n.startswith(("random EQ", "room", "babble", "pink noise"))}
"""Channels that draw their settings from the seed; the others are fixed filters, codecs and gains."""


def _voice(n: int, seed: int = 0) -> np.ndarray:
    """A voiced-speech stand-in: harmonics of a gliding 120-220 Hz pitch, syllable-rate envelope, with
    leading and trailing digital silence like RAVDESS clips."""
    t = np.arange(n) / SR
    f0 = 170 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    x = 0.1 * x + 0.002 * np.random.default_rng(seed).normal(size=n)
    x[: n // 10] = 0.0
    x[-n // 10 :] = 0.0
    return x.astype(np.float32)


POOL = np.concatenate([_voice(3 * SR, seed) for seed in range(1, 5)])


@pytest.mark.parametrize("n", [2 * SR + 7, 3 * SR])
@pytest.mark.parametrize("name", channels.SUITE_NAMES)
def test_suite_channel_is_deterministic_and_keeps_shape(name: str, n: int) -> None:
    x = _voice(n)
    y = channels.suite_channel(name, x, 5, POOL)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.isfinite(y).all()
    assert np.array_equal(y, channels.suite_channel(name, x.copy(), 5, POOL.copy()))
    assert np.array_equal(x, _voice(n))  # the input is not modified
    if name != "clean":
        assert not np.array_equal(y, x)


@pytest.mark.parametrize("name", channels.SUITE_NAMES)
def test_seed_draws_only_the_random_channels(name: str) -> None:
    """Random channels give different outputs for different seeds (rooms: one of eight per seed, so some
    seeds share one); fixed channels ignore the seed."""
    x = _voice(2 * SR)
    outputs = {channels.suite_channel(name, x, seed, POOL).tobytes() for seed in range(6)}
    assert len(outputs) > 1 if name in RANDOM else len(outputs) == 1


@pytest.mark.parametrize("name", channels.SUITE_NAMES)
def test_silence_stays_finite(name: str) -> None:
    y = channels.suite_channel(name, np.zeros(SR + 123, np.float32), 1, POOL)
    assert y.shape == (SR + 123,) and np.isfinite(y).all()


def test_babble_needs_a_pool() -> None:
    (name, *_) = sorted(channels.NEEDS_POOL)
    with pytest.raises(ValueError, match="needs a babble pool"):
        channels.suite_channel(name, _voice(SR), 0)


def test_noise_is_added_at_the_stated_snr() -> None:
    """Pink noise and babble at 10 dB: the added signal is 10 dB below the clip's active speech level."""
    x = _voice(3 * SR)
    for name in ("pink noise 10 dB", "babble 10 dB"):
        added = channels.suite_channel(name, x, 3, POOL) - x
        snr = 20 * np.log10(channels.active_rms(x) / np.sqrt(np.mean(added.astype(np.float64) ** 2)))
        assert snr == pytest.approx(10.0, abs=0.05)
