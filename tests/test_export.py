"""ONNX export: names, dynamic axes, metadata, and ONNX Runtime == PyTorch."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from anger_stream import audio
from anger_stream.model import AngerModel
from tools.train.data import WINDOW, decode, windows
from tools.train.export import export
from tools.train.fcn import FCN, VARIANTS, AngerProbability, Voice, build, drop_extra_outputs

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
META = {"variant": "T3", "thresholds": json.dumps({"0.01": 0.9, "0.05": 0.7, "0.10": 0.5})}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[AngerProbability, Path]:
    """A freshly initialised T3-shaped network with non-trivial BN statistics, and its ONNX file."""
    torch.manual_seed(0)
    model = FCN(VARIANTS["T3"].blocks)
    with torch.no_grad():
        for bn in model.bns[:-1]:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    reference = AngerProbability(copy.deepcopy(model)).eval()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export(model, path, META)
    return reference, path


def assert_same(reference: AngerProbability, session: AngerModel, x: np.ndarray) -> None:
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = session.predict(x)
    assert got.shape == (len(x),) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_graph_interface_and_metadata(exported: tuple[AngerProbability, Path]) -> None:
    proto = onnx.load(str(exported[1]))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "audio" and [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "samples"]
    assert out.name == "p" and [d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch"]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    model = AngerModel(exported[1])
    assert model.metadata == META
    assert model.meta_json("thresholds") == {"0.01": 0.9, "0.05": 0.7, "0.10": 0.5}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("samples", [16_000, 19_200, 48_000])
def test_onnx_matches_torch_on_random_input(exported: tuple[AngerProbability, Path], batch: int, samples: int) -> None:
    x = audio.prepare_window(np.random.default_rng(samples + batch).normal(size=(batch, samples)), samples)
    assert_same(exported[0], AngerModel(exported[1]), x)


@pytest.mark.shared
def test_onnx_matches_torch_on_speech(exported: tuple[AngerProbability, Path]) -> None:
    clip = SHARED / "data" / "ravdess" / "Actor_01" / "03-01-05-02-01-01-01.flac"
    if not clip.is_file():
        pytest.skip(f"RAVDESS clip not found at {clip} (set ANGER_SHARED)")
    x = windows(decode(clip))
    assert x.shape[1] == WINDOW and len(x) > 1
    assert_same(exported[0], AngerModel(exported[1]), x)


def test_raised_voice_term_is_exported_with_the_outputs_it_reads(tmp_path: Path) -> None:
    """A teacher-trained network (extra outputs) with a raised-voice term and calibration: the ONNX graph keeps
    only the outputs the term reads and equals torch; the term changes the scores."""
    torch.manual_seed(1)
    model = build("S", extra=6 + 4).eval()
    voice = Voice((4, 5, 6), 0.4)
    calibration = [0.8, -0.3]
    reference = AngerProbability(copy.deepcopy(model), calibration, voice).eval()
    slim = drop_extra_outputs(model, keep=max(voice.channels) - 1)
    assert slim.convs[-1].out_channels == 2 + 5
    path = tmp_path / "voice.onnx"
    export(slim, path, META, calibration, voice)
    x = audio.prepare_window(np.random.default_rng(3).normal(size=(4, 19_200)), 19_200)
    assert_same(reference, AngerModel(path), x)
    without = AngerProbability(copy.deepcopy(model), calibration).eval()
    with torch.no_grad():
        assert not torch.allclose(without(torch.from_numpy(x)), reference(torch.from_numpy(x)))
