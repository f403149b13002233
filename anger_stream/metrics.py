"""Ranking metrics for a binary detector: AUROC, DeLong variance and test, ROC curve, thresholds at an FPR.

DeLong et al. (1988) via the fast midrank algorithm of Sun & Xu (2014), IEEE Signal Processing Letters
21(11): O(n log n) per score vector. Labels are 1 (positive, anger) and 0; higher scores mean anger.
numpy and the standard library only: `calibrate` uses it at run time, the evaluation tools import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import erfc, sqrt
from statistics import NormalDist

import numpy as np


def rankdata(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) along `axis`, as scipy.stats.rankdata."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    order = np.argsort(x, axis=-1, kind="mergesort")
    ranked = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        values = x[index][order[index]]
        bounds = np.flatnonzero(np.diff(values)) + 1  # where a run of equal values begins
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(values)]])
        mid = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of ranks start+1..end
        ranked[index][order[index]] = mid
    return np.moveaxis(ranked, -1, axis)


def _split(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) scores, shape (k, m) and (k, n); checks that both classes are present."""
    y = np.asarray(y)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[-1] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {scores.shape[-1]} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    return pos, neg


def delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of k score vectors (shape (k, n) or (n,)) and their DeLong covariance matrix (k, k)."""
    pos, neg = _split(y, scores)
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # per positive: share of negatives ranked below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives ranked above it
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (m n), ties count one half)."""
    pos, neg = _split(y, scores)
    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos[0], neg[0]]))
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def auroc_ci(y: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, lower, upper): normal-approximation interval with the DeLong variance, clipped to [0, 1]."""
    aucs, cov = delong(y, scores)
    half = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(max(cov[0, 0], 0.0))
    auc = float(aucs[0])
    return auc, max(auc - half, 0.0), min(auc + half, 1.0)


def delong_test(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[float, float, float]:
    """(AUROC a, AUROC b, two-sided p) of DeLong's test for two correlated AUROCs on the same examples.

    Identical score vectors give p = 1.
    """
    aucs, cov = delong(y, np.vstack([scores_a, scores_b]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15:
        p = 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        p = erfc(abs(diff) / np.sqrt(var) / sqrt(2))  # two-sided normal tail
    return float(aucs[0]), float(aucs[1]), p


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): operating points `score >= threshold`, from (0, 0) to (1, 1)."""
    pos, neg = _split(y, scores)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([pos[0], neg[0]]))[::-1]])
    m, n = pos.shape[1], neg.shape[1]
    tpr = (m - np.searchsorted(np.sort(pos[0]), thresholds, side="left")) / m
    fpr = (n - np.searchsorted(np.sort(neg[0]), thresholds, side="left")) / n
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class Operating:
    """An operating point: predict anger when score >= threshold."""

    target_fpr: float
    threshold: float
    fpr: float
    tpr: float


def rates(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-positive rate, true-positive rate) of predicting anger when score >= threshold."""
    pos, neg = _split(y, scores)
    return float(np.mean(neg[0] >= threshold)), float(np.mean(pos[0] >= threshold))


def threshold_at_fpr(y: np.ndarray, scores: np.ndarray, target_fpr: float) -> Operating:
    """The lowest threshold whose false-positive rate does not exceed target_fpr (the highest TPR there)."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    fpr, tpr, thresholds = roc_curve(y, scores)
    i = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])  # fpr is non-decreasing; index 0 has fpr 0
    return Operating(target_fpr, float(thresholds[i]), float(fpr[i]), float(tpr[i]))
