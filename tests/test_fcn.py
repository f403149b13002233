"""The FCN: parameter count, fully convolutional shapes, SoundNet-8 transfer and freezing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.train.fcn import FCN, VARIANTS, AngerProbability, build, n_parameters

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SOUNDNET = SHARED / "pretrained" / "soundnet8_conv1-5.npz"


@pytest.fixture(scope="module")
def fake_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An npz with SoundNet-8 conv1-5 names and shapes, random values."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i, b in enumerate(VARIANTS["T5"].blocks[:5], start=1):
        arrays[f"conv{i}.weight"] = rng.normal(size=(b.cout, b.cin, b.kernel)).astype(np.float32)
        for name in ("conv{}.bias", "bn{}.weight", "bn{}.bias", "bn{}.running_mean"):
            arrays[name.format(i)] = rng.normal(size=b.cout).astype(np.float32)
        arrays[f"bn{i}.running_var"] = rng.uniform(0.5, 2, size=b.cout).astype(np.float32)
    path = tmp_path_factory.mktemp("soundnet") / "fake.npz"
    np.savez(path, **arrays)
    return path


def assert_transferred(model: FCN, npz: Path, layers: int) -> None:
    weights = np.load(npz)
    for i in range(layers):
        conv, bn = model.convs[i], model.bns[i]
        for key, tensor in {
            f"conv{i + 1}.weight": conv.weight,
            f"conv{i + 1}.bias": conv.bias,
            **{f"bn{i + 1}.{n}": getattr(bn, n) for n in ("weight", "bias", "running_mean", "running_var")},
        }.items():
            np.testing.assert_array_equal(tensor.detach().numpy(), weights[key], err_msg=key)


def test_paper_network_has_215826_parameters() -> None:
    assert n_parameters(build("S")) == 215_826


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fully_convolutional(variant: str, fake_npz: Path) -> None:
    model = build(variant, fake_npz).eval()
    for samples in (16_000, 16_001, 19_200, 48_000):
        with torch.no_grad():
            logits = model(torch.randn(3, samples))
            p = AngerProbability(model)(torch.randn(3, samples))
        assert logits.shape[:2] == (3, 2) and logits.shape[2] >= 1
        assert p.shape == (3,) and bool(((p >= 0) & (p <= 1)).all())


@pytest.mark.parametrize("variant", ["T3", "T5"])
def test_transfer_copies_npz_exactly(variant: str, fake_npz: Path) -> None:
    assert_transferred(build(variant, fake_npz), fake_npz, VARIANTS[variant].transfer)


@pytest.mark.shared
def test_transfer_real_soundnet() -> None:
    if not SOUNDNET.is_file():
        pytest.skip(f"SoundNet-8 weights not found at {SOUNDNET} (set ANGER_SHARED)")
    assert_transferred(build("T3", SOUNDNET), SOUNDNET, 3)


def test_frozen_layers_do_not_change(fake_npz: Path) -> None:
    torch.manual_seed(0)
    model = build("T3", fake_npz).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    logits = model(torch.randn(4, 19_200) * 25)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])[:, None].expand(-1, 2))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        layer = int(key.split(".")[1])
        if key.endswith("num_batches_tracked"):
            continue
        changed = not torch.equal(before[key], after[key])
        assert changed == (layer >= 2), key  # conv1-2 and their BN (weights and statistics) are frozen
