"""The shared sample-level definitions: normalisation, levels, window preparation, conversions."""

from __future__ import annotations

import numpy as np
import pytest

from anger_stream import audio


def test_normalise_sets_rms_to_minus_20_dbfs_at_full_scale_256() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 19200)) * np.array([[0.001], [0.05], [0.5]])
    y = audio.normalise(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.sqrt(np.mean(y.astype(np.float64) ** 2, axis=-1)), 0.1 * 256, rtol=1e-5)
    # the level is gone, the waveform shape is kept
    np.testing.assert_allclose(y[0] / y[0].std(), (x[0] - x[0].mean()) / x[0].std(), atol=1e-4)


def test_normalise_keeps_crest_factor_no_peak_rescale() -> None:
    t = np.arange(19200) / 16000
    sine = 0.3 * np.sin(2 * np.pi * 200 * t)
    clicks = np.zeros(19200)
    clicks[::1600] = 0.9
    assert np.abs(audio.normalise(sine)).max() == pytest.approx(25.6 * np.sqrt(2), rel=1e-3)
    assert np.abs(audio.normalise(clicks)).max() > 256  # peaks are not clamped to 256


def test_silence_and_dc_never_give_nan() -> None:
    for x in (np.zeros(19200), np.full(19200, 0.25), np.zeros(0)):
        y = audio.normalise(x)
        assert np.all(np.isfinite(y)) and not np.any(y)
    assert audio.dbfs(np.zeros(100)) == audio.SILENCE_DBFS
    assert audio.dbfs(np.full(100, 0.5)) == audio.SILENCE_DBFS  # DC is not sound
    assert audio.dbfs(np.zeros(0)) == audio.SILENCE_DBFS


def test_dbfs_of_full_scale_sine_is_minus_3() -> None:
    x = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert audio.dbfs(x) == pytest.approx(-3.01, abs=0.01)


def test_prepare_window_pads_then_normalises() -> None:
    seg = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    w = audio.prepare_window(seg, 19200)
    assert w.shape == (19200,)
    np.testing.assert_allclose(w, audio.normalise(np.pad(seg, (0, 3200))), rtol=1e-6)


def test_to_float_scales_integer_pcm() -> None:
    np.testing.assert_allclose(audio.to_float(np.array([-32768, 0, 16384], np.int16)), [-1, 0, 0.5])
    np.testing.assert_allclose(audio.to_float(np.array([0, 128, 255], np.uint8)), [-1, 0, 127 / 128])


def test_resample_uses_exact_ratios() -> None:
    x = np.random.default_rng(2).standard_normal(44100)
    assert len(audio.resample(x, 44100)) == 16000
    assert len(audio.resample(x[:8000], 8000)) == 16000
