"""The two-branch graph computes what the selection computed: the ONNX model's p and raised equal the numpy
fusion of the FCN's logit, the head and YAMNet's raised-voice logits on the same windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")

from anger_stream.model import AngerModel  # noqa: E402
from tools.train import two_branch, yamnet  # noqa: E402
from tools.train.data import decode, windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_the_graph_equals_the_fusion_it_was_chosen_by(shared: Path, tmp_path: Path) -> None:
    tflite = shared / "pretrained" / "yamnet" / "yamnet.tflite"
    if not tflite.is_file():
        pytest.skip(f"needs {tflite}")
    fcn = REPO / "models" / "anger_fcn.onnx"
    x = np.concatenate([windows(decode(shared / "data" / c)) for c in ("ravdess/Actor_22/03-01-05-02-02-01-22.flac",
                                                                         "emodb/03a01Wa.flac")])  # fmt: skip
    yam = yamnet.load(tflite, "centre")
    with torch.no_grad():
        embedding, logits = (t.numpy() for t in yam(torch.from_numpy(x)))
    p_fcn = AngerModel(fcn).predict(x)
    f = two_branch.Features(np.zeros(len(x)), np.array(["c"] * len(x)), two_branch._logit(p_fcn), embedding,
                            logits[:, list(two_branch.KEEP)].astype(np.float64))  # fmt: skip
    rng = np.random.default_rng(0)
    head = two_branch.Head(rng.normal(0, 0.01, f.head_input.shape[1]), 0.3)
    fusion = two_branch.Fusion(0.5, 0.25, -12.0, 1.5, 0.9, -0.1, -9.0, 1.6)
    model = two_branch.merge(fcn, two_branch.TwoBranch(yam, head, fusion).eval(), {"variant": "test"})
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    loaded = AngerModel(path)
    assert loaded.has_raised and loaded.metadata["variant"] == "test"
    p, raised = loaded.score(x)
    # onnxruntime's and torch's float32 convolutions differ in the last digits, which YAMNet's logits amplify
    np.testing.assert_allclose(p, fusion.p(f, head), atol=2e-3)
    np.testing.assert_allclose(raised, fusion.raised(f), atol=2e-3)
    assert np.ptp(p) > 0.1 and np.ptp(raised) > 0.01  # the windows differ: a constant output would not pass
