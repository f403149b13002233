"""Checked once, at start: detector parameters, sample rates, the audio the Python API takes, and the model
(a probe window at load, every output at run time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import onnx_model, peak_nodes
from onnx import helper

from anger_stream import AngerDetector, AngerModel, DetectorConfig, ModelError, StreamSet
from anger_stream.detector import check_rate


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models that load but do not give one probability per window, and one that gives NaN for loud input."""
    d = tmp_path_factory.mktemp("models")
    return {
        # the first two samples of every window: two outputs per window
        "two_outputs": onnx_model(
            d / "two.onnx",
            [helper.make_node("Slice", ["audio", "starts", "ends", "axes"], ["p"])],
            ["batch", 2],
            {"starts": [0], "ends": [2], "axes": [1]},
        ),
        # 82.7 for every window: not a probability
        "not_probability": onnx_model(
            d / "big.onnx",
            [
                *peak_nodes(),
                helper.make_node("Mul", ["peak", "zero"], ["z"]),
                helper.make_node("Add", ["z", "c"], ["p"]),
            ],
            ["batch"],
            {"zero": 0.0, "c": 82.7},
        ),
        # sqrt(1 - peak/60): 1 for the (silent) probe, NaN once a window's peak passes 60 (noise, speech)
        "nan_when_loud": onnx_model(
            d / "nan.onnx",
            [
                *peak_nodes(),
                helper.make_node("Div", ["peak", "sixty"], ["r"]),
                helper.make_node("Sub", ["one", "r"], ["q"]),
                helper.make_node("Sqrt", ["q"], ["p"]),
            ],
            ["batch"],
            {"sixty": 60.0, "one": 1.0},
        ),
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"hop_s": 1e-5},
        {"hop_s": 0.0},
        {"hop_s": 2.0},
        {"window_s": float("inf")},
        {"window_s": 1e9},
        {"min_dbfs": float("nan")},
        {"min_dbfs": float("-inf")},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"patience": 0},
        {"patience": 2.5},
        {"hysteresis": -0.1},
        {"threshold": True},
    ],
    ids=str,
)
def test_bad_parameters_are_refused_with_their_name(settings: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        DetectorConfig(**settings)


def test_the_smallest_hop_and_longest_window_are_accepted() -> None:
    assert DetectorConfig(hop_s=1 / 16000).hop == 1
    assert DetectorConfig(window_s=10.0).window == 160000


@pytest.mark.parametrize("rate", [7999.5, 0, -8000, True, 383999, 47999, 10**7, float("nan"), "8000"], ids=str)
def test_unusable_sample_rates_are_refused(rate: object) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        check_rate(rate)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000, 8000.0, np.int32(16000)])
def test_usual_sample_rates_are_accepted(rate: object) -> None:
    assert check_rate(rate) == int(rate)


def test_rates_are_checked_where_the_api_takes_them() -> None:
    model = AngerModel()
    with pytest.raises(ValueError, match="sample rate"):
        AngerDetector(model, sample_rate=7999.5)
    detector = AngerDetector(model)
    with pytest.raises(ValueError, match="sample rate"):
        detector.feed(np.zeros(100, np.float32), 383999)
    with pytest.raises(ValueError, match="sample rate"):
        detector.score(np.zeros(100, np.float32), 0)
    with pytest.raises(ValueError, match="sample rate"):
        StreamSet(model, workers=1).add("call", 47999)


def test_stereo_is_mixed_down_the_same_way_everywhere() -> None:
    rng = np.random.default_rng(3)
    stereo = (0.1 * rng.standard_normal((3 * 16000, 2))).astype(np.float32)
    mono = stereo.mean(axis=1)
    detector = AngerDetector()
    expected = detector.score(mono)
    assert len(expected) == 4  # 3 s: windows at 0, 0.6, 1.2, 1.8 s (the last ones cut short)
    np.testing.assert_allclose(detector.score(stereo), expected, atol=1e-6)
    fed = [e.p for e in detector.feed(stereo) + detector.flush() if hasattr(e, "angry")]
    np.testing.assert_allclose(np.array(fed, dtype=float), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("samples", "words"),
    [
        (np.zeros((2, 48000), np.float32), "(channels, frames)"),
        (np.zeros((4, 100, 2), np.float32), "1-D (mono) or 2-D"),
        (np.zeros(48000, np.complex64), "complex64"),
        (np.zeros(48000, bool), "bool"),
        (np.array(["a"] * 10), "<U1"),
    ],
    ids=["transposed", "3-D", "complex", "bool", "strings"],
)
def test_audio_the_api_cannot_take_is_refused_clearly(samples: np.ndarray, words: str) -> None:
    detector = AngerDetector()
    for call in (detector.feed, detector.score, detector.analyse):
        with pytest.raises(ValueError) as err:
            call(samples)
        assert words in str(err.value)


def test_packaged_models_by_name() -> None:
    assert AngerModel("int8").path.name == "anger_full.int8.onnx"
    assert AngerModel("fast-int8").path.name == "anger_fcn.int8.onnx"
    assert AngerModel("fp32").path == AngerModel().path == AngerModel("full").path
    assert AngerModel().has_raised and not AngerModel("fast").has_raised


def test_models_without_one_probability_per_window_are_refused_at_load(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="2 outputs for 1 window|4 outputs for 2 windows"):
        AngerModel(models["two_outputs"])
    with pytest.raises(ModelError, match="82.7"):
        AngerModel(models["not_probability"])


def test_nan_from_the_model_at_run_time_is_an_error(models: dict[str, Path]) -> None:
    detector = AngerDetector(models["nan_when_loud"])  # the silent probe gives 1.0
    noise = (0.1 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)
    with pytest.raises(ModelError, match="nan"):
        detector.score(noise)
