"""tools.train.quantize on a hand-built network: static QDQ int8 runs, stays close to float32, keeps metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from test_bench import WINDOW, fcn_onnx

from anger_stream.model import AngerModel
from tools.train import quantize


def test_static_int8_tracks_float32(tmp_path: Path) -> None:
    model = fcn_onnx((16, 32, 64))
    model.metadata_props.add(key="variant", value="T3")
    src, out = tmp_path / "fcn.onnx", tmp_path / "fcn.int8.onnx"
    onnx.save(model, str(src))
    rng = np.random.default_rng(0)
    windows = (25.6 * rng.standard_normal((64, WINDOW))).astype(np.float32)
    quantize.quantize(src, out, "static", windows)
    q = AngerModel(out)
    assert q.metadata["variant"] == "T3" and q.metadata["quantization"].startswith("int8 static")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = windows[:8]
    np.testing.assert_allclose(q.predict(x), AngerModel(src).predict(x), atol=0.05)


def test_keep_float_names_the_first_convolutions(tmp_path: Path) -> None:
    from tools.train.export import export
    from tools.train.fcn import build

    src = tmp_path / "fcn.onnx"
    export(build("S"), src, {})  # an exported network names its nodes
    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"]
    assert len(set(convs)) == len(convs) > 2
    assert quantize.first_convs(src, 2) == convs[:2]
