"""YAMNet (AudioSet sound events, Apache-2.0) in PyTorch, its weights read from the shared TFLite file.

The TFLite model (`yamnet.tflite`, see the README beside it) holds the whole of YAMNet: a log-mel front end
(25 ms Hann frames every 10 ms, a 512-point DFT as two int8 matrices, magnitude, 64 mel bands 125-7500 Hz,
log(mel + 0.001)) and a MobileNet-v1 (a 3x3 convolution and 13 depthwise-separable blocks, TF "same" padding,
BatchNorm folded, ReLU), global average pooling to a 1024-d embedding and a 521-class logistic layer. Its
weights are int8 (a scale per tensor or per output channel) where the converter quantised them; here they are
dequantised once and every layer runs in float32, so the port differs from the TFLite interpreter only by the
interpreter's dynamic activation quantisation (`tests/test_yamnet.py` states the tolerance on real windows).

Three ways to cover a run-time window (1.2 s: 118 frames) with YAMNet's 96-frame (0.96 s) patches, `PATCHES`:
"three" - the patches at 0, 1,800 and 3,600 samples, embeddings and scores averaged (as the training-time
teacher); "centre" - the one patch at 1,800 samples; "window" - the whole window as one image (the network is
convolutional up to the pooling; about 1.2 patches of compute).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING = 1024
CLASSES = 521
RAISED = {6: "Shout", 7: "Bellow", 8: "Whoop", 9: "Yell", 11: "Screaming"}
"""YAMNet's raised-voice classes by index."""
SPEECH = 0
FRAME, STEP, PAD = 400, 160, 56
"""Frame length and step in samples; the TFLite front end centres each frame in the 512-point DFT."""
PATCH = 15_600
"""Samples of one 96-frame patch (0.975 s)."""
PATCHES = {"three": (0, 1_800, 3_600), "centre": (1_800,), "window": None}
SCALE = 256.0
"""Prepared windows are at SoundNet's scale (full scale 256); YAMNet takes [-1, 1]."""
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
"""Strides of the 13 depthwise-separable blocks (layers 2-14)."""
_TF = "yamnet_frames/"


def read_tflite(path: str | Path) -> dict[str, np.ndarray]:
    """Every weight of the TFLite YAMNet as float32 (int8 tensors dequantised), by a short name."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    tensors = {}
    for t in interpreter.get_tensor_details():
        parts = t["name"].split(";")
        if parts[-1].endswith("_dequantize"):
            continue
        # a folded depthwise kernel is named after its BatchNorm first, then itself: key it by itself
        tensors[parts[1] if len(parts) > 1 and parts[1].endswith("/depthwise") else parts[0]] = t

    def read(name: str) -> np.ndarray:
        t = tensors[_TF + name]
        value = interpreter.get_tensor(t["index"]).astype(np.float32)
        q = t["quantization_parameters"]
        if t["dtype"] == np.int8:  # per tensor, or per channel along quantized_dimension
            shape = [1] * value.ndim
            shape[q["quantized_dimension"]] = -1
            value = (value - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)
        return value.astype(np.float32)

    w = {
        "window": read("tf_op_layer_Mul/Mul/y")[0],
        "cos": read("tf_op_layer_MatMul/MatMul"),
        "sin": read("tf_op_layer_MatMul_1/MatMul_1"),
        "mel": read("tf_op_layer_MatMul_2/MatMul_2"),
        "mel_offset": read("tf_op_layer_MatMul_2/MatMul_21"),
        "conv1.weight": read("layer1/conv/Conv2D"),
        "conv1.bias": read("layer1/conv/bn/FusedBatchNormV3"),
        "dense.weight": read("dense/MatMul"),
        "dense.bias": read("dense/BiasAdd/ReadVariableOp/resource"),
    }
    for layer in range(2, 15):
        for kind in ("depthwise", "pointwise"):
            kernel = "depthwise" if kind == "depthwise" else "Conv2D"
            w[f"layer{layer}.{kind}.weight"] = read(f"layer{layer}/{kind}_conv/{kernel}")
            w[f"layer{layer}.{kind}.bias"] = read(f"layer{layer}/{kind}_conv/bn/FusedBatchNormV3")
    return w


class LogMel(nn.Module):
    """YAMNet's front end: [batch, samples] prepared audio -> [batch, 1, frames, 64] log-mel image (kept in
    float32 when the model is quantised: its nodes are named after this module)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        # the DFT of a Hann-windowed 400-sample frame centred in 512 points: only columns PAD:PAD+400 meet
        # non-zero samples; cos and sin rows stacked as one strided convolution over the waveform
        window = torch.from_numpy(weights["window"])
        dft = np.concatenate([weights["cos"], weights["sin"]])[:, PAD : PAD + FRAME]
        self.register_buffer("dft", (torch.from_numpy(dft) * window)[:, None, :] / SCALE)
        self.register_buffer("mel", torch.from_numpy(weights["mel"]))
        self.register_buffer("mel_offset", torch.from_numpy(weights["mel_offset"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(x[:, None, :], self.dft, stride=STEP)  # [batch, 2 x 257, frames]
        half = spec.shape[1] // 2
        magnitude = torch.sqrt(spec[:, :half] ** 2 + spec[:, half:] ** 2)
        mel = torch.einsum("mf,bft->btm", self.mel, magnitude) + self.mel_offset
        return torch.log(mel)[:, None]


class _Same(nn.Module):
    """A 3x3 convolution with TF "same" padding for even input sizes (stride 2 pads one row/column after)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, groups=groups)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(F.pad(x, self.pad)))


class YAMNet(nn.Module):
    """YAMNet on prepared run-time windows [batch, samples] (SoundNet scale): (embedding [batch, 1024],
    logits [batch, 521]), over the window as `patches` says (a key of PATCHES)."""

    def __init__(self, weights: dict[str, np.ndarray], patches: str = "window") -> None:
        super().__init__()
        self.offsets = PATCHES[patches]
        self.log_mel = LogMel(weights)
        self.conv1 = _Same(1, 32, 2)
        blocks, c = [], 32
        for layer, stride in enumerate(STRIDES, start=2):
            c_out = weights[f"layer{layer}.pointwise.weight"].shape[0]
            blocks += [_Same(c, c, stride, groups=c), nn.Sequential(nn.Conv2d(c, c_out, 1), nn.ReLU())]
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dense = nn.Linear(EMBEDDING, CLASSES)
        self._load(weights)

    def _load(self, w: dict[str, np.ndarray]) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a))

        with torch.no_grad():
            self.conv1.conv.weight.copy_(t(w["conv1.weight"].transpose(0, 3, 1, 2)))  # OHWI -> OIHW
            self.conv1.conv.bias.copy_(t(w["conv1.bias"]))
            for i, layer in enumerate(range(2, 15)):
                dw, pw = self.blocks[2 * i].conv, self.blocks[2 * i + 1][0]
                dw.weight.copy_(t(w[f"layer{layer}.depthwise.weight"].transpose(3, 0, 1, 2)))  # 1HWC -> C1HW
                dw.bias.copy_(t(w[f"layer{layer}.depthwise.bias"]))
                pw.weight.copy_(t(w[f"layer{layer}.pointwise.weight"].transpose(0, 3, 1, 2)))
                pw.bias.copy_(t(w[f"layer{layer}.pointwise.bias"]))
            self.dense.weight.copy_(t(w["dense.weight"]))
            self.dense.bias.copy_(t(w["dense.bias"]))

    def image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, 1, frames, 64] -> (embedding, logits)."""
        embedding = self.blocks(self.conv1(image)).mean(dim=(2, 3))
        return embedding, self.dense(embedding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.offsets is None:
            return self.image(self.log_mel(x))
        parts = [self.image(self.log_mel(x[:, o : o + PATCH])) for o in self.offsets]
        embedding = torch.stack([e for e, _ in parts]).mean(dim=0)
        # scores averaged over patches, as the teacher does, then back to logits
        p = torch.stack([torch.sigmoid(lg) for _, lg in parts]).mean(dim=0).clamp(1e-6, 1 - 1e-6)
        return embedding, torch.log(p / (1 - p))


def load(path: str | Path, patches: str = "window") -> YAMNet:
    """The port of the TFLite YAMNet at `path`, eval mode."""
    return YAMNet(read_tflite(path), patches).eval()
