"""Folding zero Pad nodes into convolutions: the same outputs with fewer nodes, and nothing folded that would
change them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from anger_stream.model import AngerModel, default_model_path  # noqa: E402
from tools.train import fold_pads  # noqa: E402


def _graph(pads: list[onnx.NodeProto], pads_name: str, mode: str = "constant") -> onnx.ModelProto:
    """audio [N, L] -> [N, 1, 1, L] -> Pad -> Conv (2 channels, 1x3, stride 2) -> mean -> p [N]."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(rng.normal(size=(2, 1, 1, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "mean_axes"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["audio", "axes"], ["x4"]),
        *pads,
        helper.make_node("Pad", ["x4", pads_name], ["padded"], mode=mode),
        helper.make_node("Conv", ["padded", "w"], ["y"], strides=[1, 2], pads=[0, 1, 0, 0]),
        helper.make_node("ReduceMean", ["y", "mean_axes"], ["p"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n", "samples"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n"])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _constant_pads(values: list[int]) -> list[onnx.NodeProto]:
    return [helper.make_node("Constant", [], ["pads"], value=numpy_helper.from_array(np.array(values, np.int64)))]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return fold_pads._session(model).run(None, {"audio": x})[0]


def test_a_zero_pad_becomes_the_convolutions_own_and_the_outputs_stay_the_same() -> None:
    model = _graph(_constant_pads([0, 0, 0, 2, 0, 0, 0, 1]), "pads")
    folded, n = fold_pads.fold_model(model)
    assert n == 1 and [node.op_type for node in folded.graph.node].count("Pad") == 0
    conv = next(node for node in folded.graph.node if node.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 3, 0, 1]  # begins, then ends
    x = np.random.default_rng(0).normal(size=(3, 101)).astype(np.float32)
    np.testing.assert_array_equal(_run(folded, x), _run(model, x))
    fold_pads.fold(model)  # the checked version agrees


def _qdq_graph() -> onnx.ModelProto:
    """As `_graph`, int8 QDQ style: audio -> Q -> DQ -> Pad -> Q -> DQ (a scale of its own) -> Conv."""
    model = _graph(_constant_pads([0, 0, 0, 2, 0, 0, 0, 1]), "pads")
    g = model.graph
    g.initializer.extend(
        numpy_helper.from_array(np.array(v, dtype), name)
        for name, v, dtype in (("s1", 0.05, np.float32), ("z1", 128, np.uint8), ("s2", 0.07, np.float32),
                               ("z2", 120, np.uint8))
    )  # fmt: skip
    pad = next(n for n in g.node if n.op_type == "Pad")
    conv = next(n for n in g.node if n.op_type == "Conv")
    at = list(g.node).index(pad)
    g.node.insert(at, helper.make_node("QuantizeLinear", ["x4", "s1", "z1"], ["q1"]))
    g.node.insert(at + 1, helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]))
    pad.input[0] = "d1"
    at = list(g.node).index(conv)
    g.node.insert(at, helper.make_node("QuantizeLinear", ["padded", "s2", "z2"], ["q2"]))
    g.node.insert(at + 1, helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["d2"]))
    conv.input[0] = "d2"
    return model


def test_in_an_int8_graph_the_pad_before_a_quantize_dequantize_pair_is_folded_too() -> None:
    model = _qdq_graph()
    folded, n = fold_pads.fold_model(model)
    assert n == 1 and "Pad" not in [node.op_type for node in folded.graph.node]
    assert [node.op_type for node in folded.graph.node].count("QuantizeLinear") == 2  # the pair stays
    x = np.random.default_rng(0).normal(size=(3, 101)).astype(np.float32)
    np.testing.assert_array_equal(_run(folded, x), _run(model, x))
    fold_pads.fold(model)  # the checked version (the command line's) agrees
    other = _qdq_graph()
    next(node for node in other.graph.node if node.input[:1] == ["q2"]).input[2] = "z1"  # dequantized off zero
    assert fold_pads.fold_model(other)[1] == 0


def test_pads_that_a_convolution_cannot_take_are_left_alone() -> None:
    for model in (_graph(_constant_pads([0, 0, 0, -2, 0, 0, 0, 1]), "pads"),  # a crop
                  _graph(_constant_pads([0, 0, 0, 1, 0, 0, 0, 1]), "pads", mode="reflect")):  # fmt: skip
        folded, n = fold_pads.fold_model(model)
        assert n == 0 and [node.op_type for node in folded.graph.node].count("Pad") == 1


def test_pads_that_depend_on_the_input_length_are_refused() -> None:
    parity = [  # pad the time axis at its end by (samples mod 2)
        helper.make_node("Shape", ["audio"], ["shape"], start=1),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array([2], np.int64))),
        helper.make_node("Mod", ["shape", "two"], ["odd"]),
        helper.make_node("Constant", [], ["zeros"], value=numpy_helper.from_array(np.zeros(7, np.int64))),
        helper.make_node("Concat", ["zeros", "odd"], ["pads"], axis=0),
    ]
    with pytest.raises(ValueError, match="depend on the input's length"):
        fold_pads.fold_model(_graph(parity, "pads"))


def test_the_shipped_two_branch_model_has_no_pad_left() -> None:
    model = onnx.load(str(default_model_path("full")))
    assert not [node.name for node in model.graph.node if node.op_type == "Pad"]
    assert AngerModel("full").has_raised


def test_a_file_that_is_not_a_model_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(SystemExit) as exit_:
        fold_pads.main([str(bad)])
    assert str(exit_.value).startswith(f"fold_pads: {bad}: ") and "\n" not in str(exit_.value)
