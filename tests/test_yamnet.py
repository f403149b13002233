"""The PyTorch port of YAMNet against the TFLite model it is read from, on real windows of every corpus.

The port runs every layer in float32 with the TFLite file's dequantised weights; the interpreter quantises
activations on the fly (its DFT, mel and pointwise layers take int8 inputs), which moves quiet log-mel bins by
up to several units. So: each convolution layer, fed the interpreter's own input, within 2 % (relative L2);
end to end, the raised-voice and speech scores within 0.01 on average and 0.25 at worst, and the embedding
correlated at >= 0.9 for the median window.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")

from tools.manifest import load_manifest  # noqa: E402
from tools.train import yamnet  # noqa: E402
from tools.train.data import decode, windows  # noqa: E402
from tools.train.teacher import CLASSES, Teacher  # noqa: E402

CORPORA = ("ravdess", "ased", "nemo", "emodb")
CONV_OUTPUTS = range(94, 121)
"""Indices of the interpreter's tensors after conv1 and each depthwise / pointwise convolution."""
LOG_MEL = 89


@pytest.fixture(scope="module")
def tflite(shared: Path) -> Path:
    path = shared / "pretrained" / "yamnet" / "yamnet.tflite"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    return path


def corpus_windows(shared: Path, corpus: str, n: int = 12) -> np.ndarray:
    """n prepared run-time windows from clips spread over a corpus."""
    clips = load_manifest(shared / "data" / corpus / "manifest.csv", None)
    return np.concatenate([windows(decode(c.path)) for c in clips[:: max(1, len(clips) // 6)][:6]])[:n]


def test_each_layer_matches_the_interpreter(shared: Path, tflite: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(tflite), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    port = yamnet.load(tflite, "centre")
    layers = [port.conv1, *port.blocks]
    for corpus in CORPORA:
        x = corpus_windows(shared, corpus, 2)[-1]
        patch = x[1_800 : 1_800 + yamnet.PATCH] / yamnet.SCALE
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], patch[None].astype(np.float32))
        interpreter.invoke()
        h = torch.from_numpy(interpreter.get_tensor(LOG_MEL))[None, None]
        with torch.no_grad():
            for layer, index in zip(layers, CONV_OUTPUTS, strict=True):
                ref = torch.from_numpy(interpreter.get_tensor(index)).permute(0, 3, 1, 2)
                assert layer(h).shape == ref.shape
                assert float((layer(h) - ref).norm() / ref.norm()) < 0.02, (corpus, index)
                h = ref


def test_scores_and_embedding_match_the_teacher(shared: Path, tflite: Path) -> None:
    teacher = Teacher(tflite, embedding=True)
    port = yamnet.load(tflite, "three")
    for corpus in CORPORA:
        x = corpus_windows(shared, corpus)
        ref = np.stack([teacher.targets(w) for w in x])
        with torch.no_grad():
            embedding, logits = (t.numpy() for t in port(torch.from_numpy(x)))
        scores = 1 / (1 + np.exp(-logits[:, list(CLASSES)]))
        ref_scores = 1 / (1 + np.exp(-ref[:, : len(CLASSES)]))
        diff = np.abs(scores - ref_scores)
        assert diff.mean() < 0.01 and diff.max() < 0.25, corpus
        corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(embedding, ref[:, len(CLASSES) :], strict=True)]
        assert np.median(corr) >= 0.9, corpus


def test_window_mode_covers_any_length(tflite: Path) -> None:
    port = yamnet.load(tflite, "window")
    with torch.no_grad():
        for samples in (16_000, 19_200, 32_000):
            embedding, logits = port(torch.randn(2, samples) * 25)
            assert embedding.shape == (2, yamnet.EMBEDDING) and logits.shape == (2, yamnet.CLASSES)
            assert torch.isfinite(logits).all()
