"""anger_stream.metrics against sklearn and a brute-force DeLong written here from the 1988 definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from anger_stream import metrics


def _psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kernel of the Mann-Whitney statistic: 1 if positive x ranks above negative y, 1/2 on ties."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _brute_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O(m n) structural components (DeLong, DeLong & Clarke-Pearson 1988, eqs. for V10, V01, S10, S01)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    kernels = [_psi(p, q) for p, q in zip(pos, neg, strict=True)]
    aucs = np.array([k.mean() for k in kernels])
    v10 = np.array([k.mean(axis=1) for k in kernels])  # per positive
    v01 = np.array([k.mean(axis=0) for k in kernels])  # per negative
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = (rng.random(300) < 0.3).astype(int)
    a = y * 0.8 + rng.normal(size=300)
    b = np.round(a + rng.normal(scale=0.8, size=300), 1)  # correlated with a, with ties
    return y, np.vstack([a, b])


def test_auroc_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, scores = data
    for s in scores:
        assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_delong_matches_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, scores = data
    aucs, cov = metrics.delong(y, scores)
    ref_aucs, ref_cov = _brute_delong(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-15)


def test_ci_contains_estimate(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, scores = data
    auc, lo, hi = metrics.auroc_ci(y, scores[0])
    assert lo < auc < hi
    assert hi - lo == pytest.approx(2 * 1.959964 * np.sqrt(_brute_delong(y, scores[:1])[1][0, 0]), rel=1e-5)


def test_delong_test(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, (a, b) = data
    assert metrics.delong_test(y, a, a)[2] == 1.0
    auc_a, auc_b, p = metrics.delong_test(y, a, b)
    aucs, cov = _brute_delong(y, np.vstack([a, b]))
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    assert (auc_a, auc_b) == pytest.approx(tuple(aucs))
    # a far better model on the same examples is significantly better
    assert metrics.delong_test(y, y + 0.01 * a, a)[2] < 1e-6


def test_roc_curve_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, (_, b) = data
    fpr, tpr, _ = metrics.roc_curve(y, b)
    ref_fpr, ref_tpr, _ = roc_curve(y, b, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_threshold_at_fpr() -> None:
    y = np.array([0] * 10 + [1] * 4)
    s = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.85, 0.95, 0.95])
    op = metrics.threshold_at_fpr(y, s, 0.1)  # one negative (0.9) may be above threshold
    assert (op.threshold, op.fpr, op.tpr) == (0.85, 0.1, 0.75)
    op = metrics.threshold_at_fpr(y, s, 0.2)
    assert (op.threshold, op.fpr, op.tpr) == (0.8, 0.2, 0.75)
    assert metrics.threshold_at_fpr(y, s, 0.0).threshold == 0.95
    assert metrics.rates(y, s, 0.85) == (0.1, 0.75)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.auroc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="labels"):
        metrics.auroc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        metrics.auroc([0, 1, 1], [0.2, 0.3])


def test_rankdata_matches_scipy() -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(3, 200)), 1)  # many ties
    np.testing.assert_allclose(metrics.rankdata(x, axis=1), rankdata(x, axis=1))
    np.testing.assert_allclose(metrics.rankdata(x[0]), rankdata(x[0]))
    np.testing.assert_allclose(metrics.rankdata(x.T, axis=0), rankdata(x.T, axis=0))
