"""Tag-prediction metrics on the held-out shards: precision@1 and mean average precision over tags."""

from __future__ import annotations

import numpy as np


def precision_at_1(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of images whose highest-scoring tag is one of their tags (N x V scores, N x V 0/1 targets)."""
    if len(scores) == 0:
        return float("nan")
    top = scores.argmax(axis=1)
    return float(targets[np.arange(len(top)), top].mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one tag: mean over its positives of the precision at their rank (ties broken by order)."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    precision_at_hit = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_hit * hits).sum() / n_pos)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the tags that have at least one positive image."""
    aps = [average_precision(scores[:, j], targets[:, j]) for j in range(scores.shape[1]) if targets[:, j].any()]
    return float(np.mean(aps)) if aps else float("nan")
