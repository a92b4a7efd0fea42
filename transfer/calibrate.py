"""Calibration of the dedup threshold on a held-out set with planted heavy edits.

The calibration set is made from the corpus itself: `copies` training images, each put through one heavy edit
(transfer/edits.py HEAVY_EDITS: crop to half the area, JPEG q20, downscale to 1/4, colour jitter, overlaid text,
flip; chains such as "crop50+jpeg20" may be listed too, or `chain` K > 1 draws K distinct ones per image, run in
sequence), are the positives; as many held-out images (never in the training shards: new renders of the same
world) put through the same edits are the negatives. Scoring them like
test images gives the precision/recall curve of the margin threshold; the threshold chosen is the one with the
highest recall whose precision reaches the target, and it is recorded with its curve (`calibration.json`).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from pretrain.shards import Dataset
from transfer.config import CalibrationConfig
from transfer.descriptors import iter_shards
from transfer.edits import apply_edit, random_chains

BENCHMARK = "calibration"
CURVE_POINTS = 200  # the recorded curve is thinned to about this many thresholds


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)  # near-lossless: the edit is what degrades the image
    return buffer.getvalue()


def _pick(items: Any, count: int, total: int, offset: int) -> list[tuple[str, bytes]]:
    """`count` samples spread evenly over a stream of `total`, starting at `offset` modulo the stride: sets
    drawn with different offsets are disjoint while count * stride <= total."""
    stride = max(1, total // max(count, 1))
    picked = [item for n, item in enumerate(items) if n % stride == offset % stride]
    return picked[:count]


def calibration_set(
    corpus_root: str, copies: int, edits: Sequence[str], seed: int = 0, chain: int = 1
) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]], Counter[str]]:
    """(id, encoded image) of the planted copies and the edited held-out negatives, the ground truth records
    of the copies, and counts of skipped samples. With `chain` 1, edits cycle over `edits` so each gets the
    same share; with `chain` K > 1, the n-th copy and the n-th negative both go through K distinct steps of
    `edits` drawn at random (transfer/edits.py random_chains). `seed` draws the edits and their parameters and
    offsets the images picked (seeds 0, 1, ... give disjoint sets while the corpus and the held-out set hold
    enough images)."""
    if not edits:
        raise ValueError("dedup.calibration.edits is empty: nothing to plant")
    names = [edits[n % len(edits)] for n in range(copies)]
    if chain != 1:  # drawn from a stream of their own: the edit parameters of chain 1 stay what they always were
        try:
            names = random_chains(edits, chain, copies, np.random.default_rng([seed, abs(chain)]))
        except ValueError as err:
            raise ValueError(f"dedup.calibration.chain={chain}: {err}") from err
    dataset = Dataset.open(corpus_root)
    skipped: Counter[str] = Counter()
    sources = _pick(iter_shards(dataset.train_urls(0), skipped), copies, dataset.train_samples(0), seed)
    heldout = sum(int(s["samples"]) for s in dataset.manifest["heldout"])
    negatives = _pick(iter_shards(dataset.heldout_urls(), skipped), copies, heldout, seed)
    if not negatives:
        raise ValueError(f"{corpus_root}: no held-out images to draw calibration negatives from")
    rng = np.random.default_rng(seed)
    items: list[tuple[str, bytes]] = []
    truth: list[dict[str, Any]] = []
    for kind, samples in (("copy", sources), ("new", negatives)):
        for n, (key, data) in enumerate(samples):
            edit = names[n]
            try:
                image = Image.open(io.BytesIO(data)).convert("RGB")  # full size: the edit decides
            except (OSError, ValueError, SyntaxError):
                skipped["bad_image"] += 1
                continue
            image_id = f"{BENCHMARK}/{kind}/{n:05d}-{edit}.jpg"
            items.append((image_id, _encode(apply_edit(image, edit, rng).image)))
            if kind == "copy":
                truth.append({"id": image_id, "benchmark": BENCHMARK, "corpus_key": key, "edit": edit})
    return items, truth, skipped


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> list[dict[str, float]]:
    """Precision and recall of `scores >= t` for every distinct score t, highest threshold first."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order].astype(np.int64)
    tp, flagged = np.cumsum(hits), np.arange(1, len(ranked) + 1)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last of each run of equal scores
    total = max(int(positive.sum()), 1)
    return [{"threshold": float(ranked[i]), "precision": round(float(tp[i] / flagged[i]), 6),
             "recall": round(float(tp[i] / total), 6), "flagged": int(flagged[i])} for i in np.flatnonzero(last)]


def choose_threshold(curve: list[dict[str, float]], target_precision: float) -> dict[str, float] | None:
    """The point of highest recall whose precision is >= the target (ties: the higher threshold); None when
    no threshold reaches the target."""
    ok = [p for p in curve if p["precision"] >= target_precision]
    if not ok:
        return None
    return max(ok, key=lambda p: (p["recall"], p["threshold"]))


def thin(curve: list[dict[str, float]], points: int = CURVE_POINTS) -> list[dict[str, float]]:
    """At most about `points` of the curve, evenly spaced, first and last kept (enough to plot it)."""
    if len(curve) <= points:
        return curve
    keep = sorted(set(np.linspace(0, len(curve) - 1, points).round().astype(int).tolist()))
    return [curve[i] for i in keep]


def calibrate(ids: list[str], margin: np.ndarray, truth: list[dict[str, Any]], target_precision: float,
              fallback: float) -> dict[str, Any]:
    """The calibration record: the chosen threshold (or `fallback` when the target is out of reach), its
    precision and recall, recall per edit at it, and the thinned curve."""
    copies = {r["id"] for r in truth}
    positive = np.array([i in copies for i in ids])
    curve = pr_curve(margin, positive)
    chosen = choose_threshold(curve, target_precision)
    threshold = chosen["threshold"] if chosen else fallback
    flagged = margin >= threshold
    per_edit: dict[str, dict[str, Any]] = {}
    for record in truth:
        row = per_edit.setdefault(record["edit"], {"planted": 0, "found": 0})
        row["planted"] += 1
        row["found"] += int(flagged[ids.index(record["id"])])
    for row in per_edit.values():
        row["recall"] = round(row["found"] / row["planted"], 6)
    tp = int((flagged & positive).sum())
    return {
        "target_precision": target_precision,
        "reached": chosen is not None,
        "threshold": threshold,
        "precision": round(tp / max(int(flagged.sum()), 1), 6) if flagged.any() else 1.0,
        "recall": round(tp / max(int(positive.sum()), 1), 6),
        "copies": int(positive.sum()),
        "negatives": int((~positive).sum()),
        "per_edit": dict(sorted(per_edit.items())),
        "curve": thin(curve),
    }


def run_calibration(corpus_root: str, cfg: CalibrationConfig, fallback: float, progress: bool,
                    describe: Callable[[list[tuple[str, bytes]]], np.ndarray],
                    margins: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Plant the calibration set, describe it (`describe`: items -> query vectors), score it (`margins`:
    vectors -> one margin per image) and choose the threshold; returns the record of `calibrate`."""
    started = time.perf_counter()
    items, truth, skipped = calibration_set(corpus_root, cfg.copies, cfg.edits, cfg.seed, cfg.chain)
    margin = margins(describe(items))
    record = calibrate([image_id for image_id, _ in items], margin, truth, cfg.target_precision, fallback)
    if progress:
        print(f"[dedup] calibration: threshold {record['threshold']} (precision {record['precision']:.3f}, "
              f"recall {record['recall']:.3f}) on {len(items)} images", flush=True)
    return {**record, "edits": list(cfg.edits), "chain": cfg.chain, "seed": cfg.seed, "skipped": dict(skipped),
            "seconds": round(time.perf_counter() - started, 2)}
