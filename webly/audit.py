"""The dedup audit a reviewer reads: `audit/audit.md` with the overlap per benchmark and split, a gallery of
matched pairs, the threshold sweep plot and every transfer task's metrics on the full vs de-duplicated test set.

The gallery shows, side by side with the corpus image each was matched to: the closest pairs (highest margin),
the flagged pairs just above the threshold and the unflagged ones just below it, so a reader can judge by eye
whether the threshold sits between copies and look-alikes. Everything is read from `dedup.json` (and
`calibration.json` when the threshold was calibrated), the corpus shards and the transfer `result.json` files.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pretrain.atomic import atomic_write, atomic_write_text, read_json
from pretrain.shards import Dataset
from transfer.descriptors import iter_shards
from webly.results import PRIMARY, TransferRow, markdown_table

GALLERY_ROWS = 6  # pairs per gallery section
THUMB = 96  # pixels per side of a gallery thumbnail


def split_of(image_id: str, segmentation_splits: dict[str, str]) -> str:
    """The split of a test id: the path part named like a split, or the segmentation listing it is in."""
    parts = image_id.split("/")
    for split in ("train", "val", "test"):
        if split in parts[:-1]:
            return split
    return segmentation_splits.get(Path(image_id).stem, "test")


def _corpus_images(corpus_root: str, keys: set[str]) -> dict[str, bytes]:
    """Encoded corpus images of `keys`, found in one pass over the training shards."""
    found: dict[str, bytes] = {}
    if not keys:
        return found
    skipped: Counter[str] = Counter()
    for key, data in iter_shards(Dataset.open(corpus_root).train_urls(0), skipped):
        if key in keys:
            found[key] = data
            if len(found) == len(keys):
                break
    return found


def _thumb(data: bytes | None) -> Image.Image:
    if data is None:
        return Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    return Image.open(io.BytesIO(data)).convert("RGB").resize((THUMB, THUMB), Image.BILINEAR)


def gallery_sections(dedup: dict[str, Any], rows: int = GALLERY_ROWS) -> dict[str, list[dict[str, Any]]]:
    """The pairs to show: closest (highest margin), just above the margin threshold, just below it."""
    threshold = dedup["thresholds"].get("margin_threshold")
    flagged = [r for r in dedup["flagged"] if r.get("margin") is not None]
    below = [r for r in dedup.get("near_misses", []) if r.get("margin") is not None]
    by_margin = sorted(flagged, key=lambda r: -r["margin"])
    sections = {"closest pairs": by_margin[:rows]}
    if threshold is not None:
        sections["just above the threshold"] = sorted(flagged, key=lambda r: r["margin"])[:rows]
        sections["just below the threshold"] = sorted(below, key=lambda r: -r["margin"])[:rows]
    return sections


def render_gallery(sections: dict[str, list[dict[str, Any]]], benchmark_root: str, corpus_root: str,
                   path: Path) -> Path:
    """One PNG: per section a titled grid of (test image | matched corpus image) pairs with their scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {r["margin_key"] for pairs in sections.values() for r in pairs if r.get("margin_key")}
    corpus = _corpus_images(corpus_root, keys)
    width = max((len(p) for p in sections.values()), default=1) or 1
    fig, axes = plt.subplots(len(sections), width, figsize=(2.3 * width, 1.6 * len(sections)), squeeze=False)
    for row, (title, pairs) in enumerate(sections.items()):
        for col in range(width):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(pairs):
                continue
            record = pairs[col]
            test_path = Path(benchmark_root) / record["id"]
            test = _thumb(test_path.read_bytes() if test_path.is_file() else None)
            pair = np.concatenate([np.asarray(test), np.full((THUMB, 4, 3), 255, np.uint8),
                                   np.asarray(_thumb(corpus.get(record.get("margin_key", ""))))], axis=1)
            ax.imshow(pair)
            ax.set_title(f"m={record['margin']:.2f} s={record.get('similarity', float('nan')):.2f}", fontsize=7)
        axes[row][0].text(-0.05, 0.5, title, transform=axes[row][0].transAxes, ha="right", va="center",
                          fontsize=8, rotation=90)
    fig.suptitle("test image | nearest corpus image (m: margin, s: cosine)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    plt.close(fig)
    return path


def render_sweep(dedup: dict[str, Any], calibration: dict[str, Any] | None, path: Path) -> Path:
    """Precision and recall against the margin threshold: on the planted benchmark copies and, when the
    threshold was calibrated, on the heavy-edit calibration set; the threshold in use as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sweep = (dedup.get("evaluation") or {}).get("sweep", {}).get("margin") or []
    if sweep:
        t = [r["threshold"] for r in sweep]
        ax.plot(t, [r["precision"] for r in sweep], "-", color="C0", label="precision (benchmark copies)")
        ax.plot(t, [r["recall"] for r in sweep], "-", color="C1", label="recall (benchmark copies)")
    if calibration:
        curve = calibration["curve"]
        t = [p["threshold"] for p in curve]
        ax.plot(t, [p["precision"] for p in curve], "--", color="C0", label="precision (calibration, heavy edits)")
        ax.plot(t, [p["recall"] for p in curve], "--", color="C1", label="recall (calibration, heavy edits)")
        ax.axhline(calibration["target_precision"], color="grey", linewidth=0.8, linestyle=":")
    threshold = dedup["thresholds"].get("margin_threshold")
    if threshold is not None:
        ax.axvline(threshold, color="k", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("margin threshold (flag when margin >= threshold)")
    ax.set_ylabel("precision / recall")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return path


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def overlap_rows(dedup: dict[str, Any], benchmark_root: str) -> list[list[Any]]:
    """(benchmark, split, test images, flagged, overlap %) per benchmark and split."""
    listing = Path(benchmark_root) / "segmentation/ImageSets/Segmentation"
    seg = {name: p.stem for p in listing.glob("*.txt") for name in p.read_text().split()} if listing.is_dir() else {}
    flagged: dict[tuple[str, str], int] = {}
    for record in dedup["flagged"]:
        key = (record["benchmark"], split_of(record["id"], seg))
        flagged[key] = flagged.get(key, 0) + 1
    rows = []
    for name, counts in sorted(dedup["per_benchmark"].items()):
        for split, total in sorted(counts.get("splits", {"test": counts["test_images"]}).items()):
            hits = flagged.get((name, split), 0)
            rows.append([name, split, total, hits, round(100.0 * hits / max(total, 1), 2)])
    return rows


def transfer_table(rows: list[TransferRow]) -> list[list[Any]]:
    """Primary metric of every transfer run on the full and the de-duplicated test set, and the change."""
    body = []
    for r in sorted(rows, key=lambda r: (r.task, r.mode, r.depth, r.data_size, r.init)):
        if r.metric == PRIMARY.get(r.task):
            body.append([r.task, r.mode, r.run, r.metric, r.full, r.dedup, r.dedup - r.full])
    return body


def build_audit(dedup_dir: str | Path, corpus_root: str, benchmark_root: str,
                transfer: list[TransferRow] | None = None) -> dict[str, str]:
    """Write `<dedup_dir>/audit/`: audit.md, gallery.png, sweep.png; returns their paths."""
    dedup_dir = Path(dedup_dir)
    dedup = read_json(dedup_dir / "dedup.json")
    calibration_path = dedup_dir / "calibration.json"
    calibration = read_json(calibration_path) if calibration_path.exists() else None
    out = dedup_dir / "audit"
    gallery = render_gallery(gallery_sections(dedup), benchmark_root, corpus_root, out / "gallery.png")
    sweep = render_sweep(dedup, calibration, out / "sweep.png")
    t = dedup["thresholds"]
    lines = ["# De-duplication audit", "",
             f"Corpus `{dedup['corpus_root']}` ({dedup['corpus']['images']} images) against the test sets of "
             f"`{dedup['benchmark_root']}` ({dedup['test_images']} images). Descriptor `{t.get('descriptor')}`, "
             f"margin `{t.get('margin')}` >= **{_num(t.get('margin_threshold'))}**, pHash <= {t.get('hash_threshold')} "
             f"bits; index `{(dedup.get('index') or {}).get('kind', 'flat')}`.", "",
             "## Overlap with the pretraining corpus", "",
             *markdown_table(["benchmark", "split", "images", "flagged", "overlap %"],
                             overlap_rows(dedup, benchmark_root)),
             ""]
    if calibration:
        lines += ["## Calibration (held-out set, planted heavy edits)", "",
                  f"{calibration['copies']} copies and {calibration['negatives']} edited held-out images; threshold "
                  f"chosen for precision >= {calibration['target_precision']}: **{_num(calibration['threshold'])}** "
                  f"(precision {calibration['precision']:.3f}, recall {calibration['recall']:.3f}"
                  f"{'' if calibration['reached'] else '; target not reached, configured threshold kept'}).", "",
                  *markdown_table(["edit", "planted", "found", "recall"],
                          [[e, v["planted"], v["found"], v["recall"]] for e, v in calibration["per_edit"].items()]),
                  ""]
    overall = (dedup.get("evaluation") or {}).get("overall")
    if overall:
        lines += [f"Against the benchmark's planted near-duplicates: precision {overall['precision']:.3f}, "
                  f"recall {overall['recall']:.3f}.", ""]
    lines += ["## Threshold sweep", "", "![sweep](sweep.png)", "",
              "## Gallery: closest pairs, and pairs just above / below the threshold", "", "![gallery](gallery.png)",
              "", "## Transfer metrics: full vs de-duplicated test set", ""]
    body = transfer_table(transfer or [])
    lines += markdown_table(["task", "mode", "trunk", "metric", "full", "dedup", "dedup - full"], body) if body else [
        "No transfer result was found next to this dedup run."]
    report = atomic_write_text(out / "audit.md", "\n".join(lines) + "\n")
    return {"audit": str(report), "gallery": str(gallery), "sweep": str(sweep)}
