"""The paper's fully convolutional network on raw 16 kHz audio, its variants, and SoundNet-8 transfer.

A network is a stack of 1-D conv blocks (conv -> BN -> ReLU -> optional max pool). The last block is the
classifier: a plain conv with bias to 2 classes (no BN, no ReLU), preceded by dropout. Output: logits
[batch, 2, steps]; `AngerProbability` turns them into p(anger) = softmax over classes averaged over steps.

Variants (see `VARIANTS`):
- S: the paper's network from scratch, widths 32/64/128/16/2 (215,826 parameters).
- T3: SoundNet-8 conv1-3 (16/32/64, same kernels as the paper) + BN transferred, conv1-2 frozen;
  the paper's pool-8 after conv3 and head conv4 64->16 k8 s2, conv5 16->2 k2.
- T3f1: as T3 with only conv1 frozen.
- T5: SoundNet-8 conv1-5 with SoundNet-8 pooling (8, 8, -, -, 4) transferred, conv1-2 frozen; head
  conv6 256->16 k1 + dropout + conv7 16->2 k2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Block:
    """One conv layer: conv(cin->cout, kernel, stride, padding) [-> BN -> ReLU] [-> max pool]."""

    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    pool: int = 1
    bn: bool = True


@dataclass(frozen=True)
class Variant:
    """An architecture plus how many leading layers come from SoundNet-8 and how many are frozen."""

    blocks: tuple[Block, ...]
    transfer: int = 0
    frozen: int = 0


def paper_blocks(w1: int, w2: int, w3: int, w4: int = 16) -> tuple[Block, ...]:
    """The paper's 5-layer FCN with configurable widths."""
    return (
        Block(1, w1, 64, 2, 32, pool=8),
        Block(w1, w2, 32, 2, 16, pool=8),
        Block(w2, w3, 16, 2, 8, pool=8),
        Block(w3, w4, 8, 2, 4),
        Block(w4, 2, 2, 1, 0, bn=False),
    )


SOUNDNET8_BLOCKS = (
    Block(1, 16, 64, 2, 32, pool=8),
    Block(16, 32, 32, 2, 16, pool=8),
    Block(32, 64, 16, 2, 8),
    Block(64, 128, 8, 2, 4),
    Block(128, 256, 4, 2, 2, pool=4),
)

VARIANTS: dict[str, Variant] = {
    "S": Variant(paper_blocks(32, 64, 128)),
    "T3": Variant(paper_blocks(16, 32, 64), transfer=3, frozen=2),
    "T3f1": Variant(paper_blocks(16, 32, 64), transfer=3, frozen=1),
    "T5": Variant(SOUNDNET8_BLOCKS + (Block(256, 16, 1, 1, 0), Block(16, 2, 2, 1, 0, bn=False)), transfer=5, frozen=2),
}


class FCN(nn.Module):
    """Fully convolutional anger network: [batch, samples] -> logits [batch, 2, steps]."""

    def __init__(self, blocks: tuple[Block, ...], dropout: float = 0.5, frozen: int = 0) -> None:
        super().__init__()
        self.blocks = blocks
        self.frozen = frozen
        self.convs = nn.ModuleList(nn.Conv1d(b.cin, b.cout, b.kernel, b.stride, b.padding) for b in blocks)
        self.bns = nn.ModuleList(nn.BatchNorm1d(b.cout) if b.bn else nn.Identity() for b in blocks)
        self.dropout = nn.Dropout(dropout)
        for layer in range(frozen):
            for p in (*self.convs[layer].parameters(), *self.bns[layer].parameters()):
                p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> FCN:
        """Set train/eval mode; BN of frozen layers always stays in eval mode (fixed statistics)."""
        super().train(mode)
        for layer in range(self.frozen):
            self.bns[layer].eval()
        return self

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.unsqueeze(1)
        last = len(self.blocks) - 1
        for i, (block, conv, bn) in enumerate(zip(self.blocks, self.convs, self.bns, strict=True)):
            if i == last:
                x = self.dropout(x)
            x = conv(x)
            if block.bn:
                x = torch.relu(bn(x))
            if block.pool > 1:
                x = nn.functional.max_pool1d(x, block.pool)
        return x


EPS = 1e-6


def logit(p: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)), with p kept inside [EPS, 1 - EPS]."""
    p = p.clamp(EPS, 1 - EPS)
    return torch.log(p) - torch.log1p(-p)


@dataclass(frozen=True)
class Voice:
    """A raised-voice term in the anger score: `weight` times the mean over steps of the mean of the
    network's `channels` (its learnt copies of a teacher's z-scored raised-voice logits)."""

    channels: tuple[int, ...]
    weight: float


class AngerProbability(nn.Module):
    """p(anger) per input: softmax over the 2 classes, averaged over output time steps. With a `voice` term
    or a calibration [scale, bias] (Platt scaling): sigmoid(scale * score + bias), where score = logit(p),
    plus the voice term when there is one (scale 1, bias 0 without a calibration)."""

    def __init__(self, fcn: FCN, calibration: list[float] | None = None, voice: Voice | None = None) -> None:
        super().__init__()
        self.fcn = fcn
        self.calibration = calibration
        self.voice = voice

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        outputs = self.fcn(audio)
        p = torch.softmax(outputs[:, :2], dim=1)[:, 1].mean(dim=-1)
        if self.calibration is None and self.voice is None:
            return p
        score = logit(p)
        if self.voice is not None:
            score = score + self.voice.weight * outputs[:, list(self.voice.channels)].mean(dim=(1, 2))
        scale, bias = self.calibration or (1.0, 0.0)
        return torch.sigmoid(scale * score + bias)


def load_soundnet(model: FCN, path: str | Path, layers: int) -> None:
    """Copy SoundNet-8 conv{i}/bn{i} weights and BN statistics (PyTorch layout npz) into layers 1..layers."""
    weights = np.load(path)
    with torch.no_grad():
        for i in range(layers):
            conv, bn = model.convs[i], model.bns[i]
            conv.weight.copy_(torch.from_numpy(weights[f"conv{i + 1}.weight"]))
            conv.bias.copy_(torch.from_numpy(weights[f"conv{i + 1}.bias"]))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(torch.from_numpy(weights[f"bn{i + 1}.{name}"]))


def with_outputs(blocks: tuple[Block, ...], outputs: int) -> tuple[Block, ...]:
    """The blocks with the classifier widened to `outputs` channels (2 classes + extra targets)."""
    *body, head = blocks
    return (*body, replace(head, cout=outputs))


def build(variant: str, pretrained: str | Path | None = None, dropout: float = 0.5, extra: int = 0) -> FCN:
    """A network of a named variant, with `extra` output channels beside the 2 classes (training-time
    targets such as a teacher's logits); transfer variants need the SoundNet-8 npz path."""
    spec = VARIANTS[variant]
    model = FCN(with_outputs(spec.blocks, 2 + extra), dropout=dropout, frozen=spec.frozen)
    if spec.transfer:
        if pretrained is None:
            raise ValueError(f"variant {variant} needs --pretrained (SoundNet-8 conv1-5 npz)")
        load_soundnet(model, pretrained, spec.transfer)
    return model


def drop_extra_outputs(model: FCN, keep: int = 0) -> FCN:
    """A copy of the network with only the 2 class outputs and the first `keep` extra ones (what is exported)."""
    head = model.convs[-1]
    if head.out_channels == 2 + keep:
        return model
    slim = FCN(with_outputs(model.blocks, 2 + keep), dropout=model.dropout.p, frozen=model.frozen)
    last = f"convs.{len(model.blocks) - 1}."
    state = {k: v[: 2 + keep] if k.startswith(last) else v for k, v in model.state_dict().items()}
    slim.load_state_dict(state)
    return slim.train(model.training)


def n_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (trainable or frozen; BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
