"""Fold explicit zero Pad nodes into the convolutions they feed: the same outputs, a node and a copy less each.

    python -m tools.train.fold_pads MODEL.onnx [--out OUT.onnx]

The YAMNet port pads as TensorFlow does ("same": one row and column after the input for stride 2, which
torch's Conv2d cannot express), so the export puts a Pad before each of its 3x3 convolutions. onnxruntime
runs each Pad as a copy of the activations: about a fifth of the two-branch model's time per window. An ONNX
Conv takes begin and end pads of its own, so each such Pad is removed and its spatial pads are added to the
Conv's. The pads are computed by the graph (from constants); they are read once by running it on probes of
several lengths, which must agree (pads that depended on the input could not be folded). A float32 graph
gives the same outputs, bit for bit; `fold` checks them on random windows. In a QDQ int8 graph the Pad
feeds its convolution through a QuantizeLinear and a DequantizeLinear (DQ -> Pad -> Q -> DQ -> Conv): the pair
stays, fed by the Pad's input, and the convolution pads instead; its padding is the zero that the pair made of
the Pad's zeros, so the graph computes the same outputs. (onnxruntime's graph optimisations then remove such a
pair between two quantized convolutions, which they could not while the Pad stood between them: the optimised
int8 model rounds once fewer per layer, and its outputs change; `fold` checks the graph's own outputs.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import helper

PROBE_LENGTHS = (16_000, 19_200, 19_201, 32_000)
"""Samples per probe window: the default window, an odd length, shorter and longer ones."""


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The graph as it is defined: no onnxruntime optimisations."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def pad_values(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Each Pad's pads (by the name of its `pads` input), as the graph computes them; ValueError if they
    depend on the input's length."""
    names = sorted({n.input[1] for n in model.graph.node if n.op_type == "Pad"})
    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None) for n in names)
    session = _session(probe)
    found: dict[str, list[int]] | None = None
    for length in PROBE_LENGTHS:
        values = session.run(names, {session.get_inputs()[0].name: np.zeros((1, length), np.float32)})
        these = {n: v.astype(int).tolist() for n, v in zip(names, values, strict=True)}
        if found is not None and these != found:
            raise ValueError(f"the pads depend on the input's length ({length} samples): cannot fold them")
        found = these
    return found or {}


QDQ = ("QuantizeLinear", "DequantizeLinear")
"""What may stand between a Pad and its convolution in an int8 (QDQ) graph."""


def _conv_fed(pad: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    """The convolution a Pad feeds alone, as the data input: directly, or through a QuantizeLinear and a
    DequantizeLinear with the same scale and zero point (which turn the Pad's zeros into zeros), each feeding
    only the next."""
    node, between = pad, 0
    while len(users := consumers.get(node.output[0], [])) == 1 and users[0].input[0] == node.output[0]:
        user = users[0]
        if user.op_type == "Conv":
            return user
        if between == len(QDQ) or user.op_type != QDQ[between] or (between and user.input[1:] != node.input[1:]):
            return None
        node, between = user, between + 1
    return None


def _foldable(pad: onnx.NodeProto, pads: list[int]) -> bool:
    """A zero constant Pad of a convolution's spatial axes only."""
    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    rank = len(pads) // 2
    return (
        attrs.get("mode", b"constant") == b"constant"
        and (len(pad.input) < 3 or not pad.input[2])  # no constant value: zeros
        and len(pad.input) < 4
        and min(pads) >= 0
        and pads[0] == pads[1] == pads[rank] == pads[rank + 1] == 0
    )


def fold_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of the model with every foldable Pad folded into its Conv, and how many were folded."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = pad_values(out)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in out.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in [n for n in out.graph.node if n.op_type == "Pad"]:
        pads, conv = values[pad.input[1]], _conv_fed(pad, consumers)
        if conv is None or not _foldable(pad, pads):
            continue
        rank = len(pads) // 2
        spatial = pads[2:rank] + pads[rank + 2 :]  # begins, then ends: Conv's own order
        old = next((a for a in conv.attribute if a.name == "pads"), None)
        before = list(old.ints) if old is not None else [0] * len(spatial)
        if old is not None:
            conv.attribute.remove(old)
        conv.attribute.append(helper.make_attribute("pads", [a + b for a, b in zip(before, spatial, strict=True)]))
        consumers[pad.output[0]][0].input[0] = pad.input[0]  # the convolution, or the QuantizeLinear before it
        folded.append(pad)
    for pad in folded:
        out.graph.node.remove(pad)
    onnx.checker.check_model(out, full_check=True)
    return out, len(folded)


def fold(model: onnx.ModelProto, atol: float = 1e-6) -> onnx.ModelProto:
    """The model with its Pads folded, checked to compute the same outputs on random windows (AssertionError;
    as the graph defines them, before onnxruntime's optimisations)."""
    folded, _ = fold_model(model)
    x = (np.random.default_rng(0).standard_normal((4, 19_200)) * 20).astype(np.float32)
    before, after = _session(model), _session(folded)
    name = before.get_inputs()[0].name
    for a, b in zip(before.run(None, {name: x}), after.run(None, {name: x}), strict=True):
        np.testing.assert_allclose(b, a, atol=atol, rtol=0)
    return folded


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.train.fold_pads", description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="an ONNX model (float32, or int8 QDQ)")
    ap.add_argument("--out", type=Path, help="where to write the folded model (default: in place)")
    args = ap.parse_args(argv)
    try:
        model = onnx.load(str(args.model))
        folded = fold(model)
        onnx.save(folded, str(args.out or args.model))
    except (OSError, ValueError, AssertionError, DecodeError, onnx.checker.ValidationError) as exc:
        sys.exit(f"fold_pads: {args.model}: {str(exc).strip().splitlines()[0]}")
    pads = sum(n.op_type == "Pad" for n in model.graph.node)
    left = sum(n.op_type == "Pad" for n in folded.graph.node)
    print(f"{args.model}: folded {pads - left} of {pads} Pad nodes into their convolutions -> {args.out or args.model}")


if __name__ == "__main__":
    main()
