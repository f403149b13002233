"""What the benchmark reads from an exported ONNX graph: conv shapes, FLOPs per window, the network itself.

FLOPs are counted from the graph, not from tools/train/fcn.py: shapes are inferred for a fixed input length and
every Conv contributes 2 x MACs = 2 x output elements x (input channels / groups) x kernel size. Bias,
ReLU, pooling and the softmax head are ignored (< 0.1% of the work).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from tools.train.fcn import Block


@dataclass(frozen=True)
class ConvShape:
    """One Conv node at a given input length."""

    name: str
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    steps_in: int
    steps_out: int
    group: int = 1

    @property
    def macs(self) -> int:
        return self.steps_out * self.cout * (self.cin // self.group) * self.kernel


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


def with_input_shape(model: onnx.ModelProto, batch: int, samples: int) -> onnx.ModelProto:
    """A copy of the model with a fixed [batch, samples] input and inferred intermediate shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim, (batch, samples), strict=True):
        dim.Clear()
        dim.dim_value = size
    return shape_inference.infer_shapes(fixed, strict_mode=True)


def conv_shapes(model: onnx.ModelProto, samples: int) -> list[ConvShape]:
    """Every Conv of the graph, in order, with its input and output lengths for one window of `samples`."""
    inferred = with_input_shape(model, 1, samples)
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    weights = {t.name: list(t.dims) for t in inferred.graph.initializer}
    out = []
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        a = _attrs(node)
        cout, cin_g, kernel = weights[node.input[1]]
        group = a.get("group", 1)
        out.append(
            ConvShape(
                node.name,
                cin_g * group,
                cout,
                kernel,
                a.get("strides", [1])[0],
                a.get("pads", [0, 0])[0],
                shapes[node.input[0]][-1],
                shapes[node.output[0]][-1],
                group,
            )
        )
    return out


def flops_per_window(model: onnx.ModelProto, samples: int) -> int:
    """Floating-point operations (2 x conv MACs) to score one window of `samples`."""
    return 2 * sum(c.macs for c in conv_shapes(model, samples))


def blocks(model: onnx.ModelProto) -> tuple[tuple[Block, ...], list[np.ndarray]]:
    """The network as tools.train.fcn blocks (BN folded away: `bn` marks conv -> ReLU) and conv weights, biases."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found: list[Block] = []
    params: list[np.ndarray] = []
    for node in model.graph.node:
        a = _attrs(node)
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            pad = a.get("pads", [0, 0])
            if a.get("group", 1) != 1 or pad[0] != pad[1]:
                raise ValueError(f"{node.name}: only ungrouped, symmetric convolutions are supported")
            b = Block(w.shape[1], w.shape[0], w.shape[2], a.get("strides", [1])[0], pad[0], bn=False)
            found.append(b)
            params += [w, inits[node.input[2]]]
        elif node.op_type == "Relu":
            found[-1] = replace(found[-1], bn=True)
        elif node.op_type == "MaxPool":
            found[-1] = replace(found[-1], pool=a["kernel_shape"][0])
    return tuple(found), params


def torch_network(path: str | Path):  # -> tools.train.fcn.AngerProbability (torch imported lazily)
    """The ONNX model's network in PyTorch eager (tools.train.fcn.FCN, BN folded as at export), eval mode."""
    import torch
    from torch import nn

    from tools.train.fcn import FCN, AngerProbability

    found, params = blocks(onnx.load(str(path)))
    fcn = FCN(found, dropout=0.0)
    with torch.no_grad():
        for i, conv in enumerate(fcn.convs):
            conv.weight.copy_(torch.tensor(params[2 * i]))
            conv.bias.copy_(torch.tensor(params[2 * i + 1]))
            fcn.bns[i] = nn.Identity()
    return AngerProbability(fcn).eval()
