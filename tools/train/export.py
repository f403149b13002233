"""Export a trained checkpoint to ONNX: python -m tools.train.export --checkpoint runs/X/best.pt --out M.onnx.

Graph: input "audio" float32 [batch, samples] (prepared windows, any length >= 1 s), output "p" float32
[batch] = p(anger), the softmax over the 2 classes averaged over output time steps. BatchNorm is folded
into the preceding convolutions. The TorchScript-based exporter (dynamo=False) is used: it names the
dynamic axes and takes about a second. Metadata (metadata_props) carry the windowing, normalisation,
training data, variant, version and the validation thresholds per target false-positive rate.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from anger_stream import audio
from tools.train.fcn import FCN, VARIANTS, AngerProbability, Voice, drop_extra_outputs, with_outputs

VERSION = "0.1.0"
OPSET = 18


def load_checkpoint(path: str | Path, keep: int | None = None) -> tuple[FCN, dict, Voice | None]:
    """The network of a tools.train (or tools.train.voice) checkpoint in eval mode, its metrics and its raised-voice
    term; the network keeps the extra outputs the term reads (or the first `keep`), and drops the rest."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = FCN(with_outputs(VARIANTS[ckpt["variant"]].blocks, 2 + ckpt.get("extra", 0)), dropout=ckpt["dropout"])
    model.load_state_dict(ckpt["state_dict"])
    voice = ckpt.get("voice") and Voice(tuple(ckpt["voice"]["channels"]), ckpt["voice"]["weight"])
    if keep is None:
        keep = max(voice.channels) - 1 if voice else 0
    return drop_extra_outputs(model, keep).eval(), ckpt["metrics"], voice or None


def calibration(metrics: dict) -> list[float] | None:
    """The Platt scaling [scale, bias] a run fitted on its validation windows, if any."""
    return metrics.get("calibration")


def fold_batchnorm(model: FCN) -> FCN:
    """Fold every eval-mode BatchNorm into its convolution (in place) and replace it by Identity."""
    with torch.no_grad():
        for i, bn in enumerate(model.bns):
            if isinstance(bn, nn.BatchNorm1d):
                conv = model.convs[i]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale[:, None, None])
                conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
                model.bns[i] = nn.Identity()
    return model


def export(
    model: FCN,
    out: str | Path,
    metadata: dict[str, str],
    calibration: list[float] | None = None,
    voice: Voice | None = None,
) -> None:
    """Write the ONNX file with dynamic batch and time axes, check it, and attach metadata."""
    wrapper = AngerProbability(fold_batchnorm(model.eval()), calibration, voice).eval()
    example = torch.zeros(2, audio.WINDOW)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated (but still the cleaner one here)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            input_names=["audio"],
            output_names=["p"],
            dynamic_axes={"audio": {0: "batch", 1: "samples"}, "p": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))


def metadata(metrics: dict) -> dict[str, str]:
    """metadata_props of the shipped model, from a training run's metrics."""
    return {
        "sample_rate": str(audio.SAMPLE_RATE),
        "window_s": str(audio.WINDOW_S),
        "hop_s": str(audio.HOP_S),
        "min_audio_s": str(audio.MIN_AUDIO_S),
        "normalisation": "-20 dBFS RMS then x256 (anger_stream.audio.normalise)",
        "training_data": ", ".join(metrics["training_data"]) + " (train speakers, tools.manifest splits)",
        "variant": metrics["variant"],
        "version": VERSION,
        "thresholds": json.dumps(metrics["thresholds"]),
        "calibration": json.dumps(metrics.get("calibration")),
        "voice": json.dumps(metrics.get("voice") and {k: metrics["voice"][k] for k in ("outputs", "weight")}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model, metrics, voice = load_checkpoint(args.checkpoint)
    export(model, args.out, metadata(metrics), calibration(metrics), voice)


if __name__ == "__main__":
    main()
