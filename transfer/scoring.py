"""Scoring a flagged set against planted near-duplicates: precision/recall overall, per benchmark, per edit,
per rule, and threshold sweeps (the curves behind the audit's sweep plot)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from transfer.config import DedupConfig

HASH_SWEEP = list(range(17))  # 0 .. 16 bits
MARGIN_SWEEP = [round(0.025 * i, 3) for i in range(40)]  # 0.000 .. 0.975
SIMILARITY_SWEEP = [round(0.80 + 0.01 * i, 2) for i in range(20)]  # 0.80 .. 0.99: absolute s1, for comparison


def benchmark_of(image_id: str) -> str:
    return image_id.split("/", 1)[0]


def scores(flagged: set[str], truth: set[str]) -> dict[str, Any]:
    """Precision, recall, F1 of a flagged set. Conventions: nothing flagged has precision 1 (no false
    positive); nothing to find has recall 1; F1 is 0 when precision + recall is 0."""
    tp, fp, fn = len(flagged & truth), len(flagged - truth), len(truth - flagged)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
            "tp": tp, "fp": fp, "fn": fn}


def _scored(ids: list[str], mask: np.ndarray, truth: set[str]) -> dict[str, Any]:
    """Scores overall and per benchmark of the ids selected by `mask`."""
    flagged = {i for i, m in zip(ids, mask, strict=True) if m}
    result: dict[str, Any] = {"overall": scores(flagged, truth), "per_benchmark": {}}
    for name in sorted({benchmark_of(i) for i in ids}):
        result["per_benchmark"][name] = scores({i for i in flagged if benchmark_of(i) == name},
                                               {i for i in truth if benchmark_of(i) == name})
    return result


def _sweep(ids: list[str], values: np.ndarray, thresholds: list, truth: set[str], below: bool) -> list[dict]:
    rows = []
    for threshold in thresholds:
        mask = values <= threshold if below else values >= threshold
        row = scores({i for i, m in zip(ids, mask, strict=True) if m}, truth)
        rows.append({"threshold": threshold, "flagged": int(mask.sum()), **row})
    return rows


def evaluate(
    ids: list[str], hash_distance: np.ndarray | None, margin: np.ndarray | None, similarity: np.ndarray | None,
    flagged: np.ndarray, cfg: DedupConfig, truth_records: list[dict[str, Any]], matched_keys: dict[str, str],
) -> dict[str, Any]:
    """Score the flagged set, each rule alone at its threshold, recall per edit, and threshold sweeps, against
    the planted near-duplicates. Ground-truth ids that are not test images are listed, not scored."""
    known = set(ids)
    truth = {r["id"] for r in truth_records if r["id"] in known}
    result: dict[str, Any] = {
        "ground_truth": len(truth),
        "missing_ids": sorted({r["id"] for r in truth_records} - known),
        **_scored(ids, flagged, truth),
        "hash_only": None, "margin_only": None, "per_edit": {}, "sweep": {},
    }
    found = {i for i, m in zip(ids, flagged, strict=True) if m}
    by_edit: dict[str, list[str]] = defaultdict(list)
    for record in truth_records:
        if record["id"] in known:
            by_edit[str(record.get("edit", "?"))].append(record["id"])
    for edit, members in sorted(by_edit.items()):
        hits = len(found.intersection(members))
        result["per_edit"][edit] = {"planted": len(members), "found": hits, "recall": round(hits / len(members), 6)}
    if hash_distance is not None:
        result["hash_only"] = _scored(ids, hash_distance <= cfg.hash_threshold, truth)
        result["sweep"]["hash"] = _sweep(ids, hash_distance, HASH_SWEEP, truth, below=True)
    if margin is not None and similarity is not None:
        result["margin_only"] = _scored(ids, margin >= cfg.margin_threshold, truth)
        result["sweep"]["margin"] = _sweep(ids, margin, MARGIN_SWEEP, truth, below=False)
        result["sweep"]["similarity"] = _sweep(ids, similarity, SIMILARITY_SWEEP, truth, below=False)
    # Did a correctly flagged copy match the very corpus image it was made from?
    true_keys = {r["id"]: r.get("corpus_key") for r in truth_records}
    hits = [i for i in matched_keys if i in truth and true_keys.get(i)]
    correct = sum(matched_keys[i] == true_keys[i] for i in hits)
    result["corpus_key_accuracy"] = round(correct / len(hits), 6) if hits else None
    return result
