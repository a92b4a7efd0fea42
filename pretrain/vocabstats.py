"""Vocabulary statistics: how much of all tag occurrences the top-K tags cover, and the long tail as a plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.atomic import atomic_write, atomic_write_json

COVERAGE_KS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
STATS_FILE = "vocab_stats.json"
PLOT_FILE = "vocab_longtail.png"


def sorted_counts(tag_counts: Mapping[str, int]) -> np.ndarray:
    """All counts, most frequent first."""
    counts = np.fromiter(tag_counts.values(), dtype=np.int64, count=len(tag_counts))
    return -np.sort(-counts)


def coverage_at(counts: np.ndarray, total: int, ks: Sequence[int] = COVERAGE_KS) -> dict[str, float]:
    """{K: fraction of the `total` occurrences that the K most frequent tags hold}, for K up to the tag count."""
    cumulative = np.cumsum(counts)
    out = {}
    for k in ks:
        if k <= len(counts):
            out[str(k)] = round(float(cumulative[k - 1]) / total, 6) if total else 0.0
    return out


def plot_long_tail(counts: np.ndarray, total: int, vocab_size: int, path: Path) -> Path:
    """Rank-frequency on log-log axes, with the cumulative coverage on a second axis and the vocabulary cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = np.arange(1, len(counts) + 1)
    step = max(1, len(counts) // 20_000)  # a million points draw slowly and look the same
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(ranks[::step], counts[::step], color="tab:blue", label="occurrences of the tag at this rank")
    ax.set_xlabel("tag rank")
    ax.set_ylabel("occurrences")
    ax.axvline(vocab_size, color="grey", linestyle="--", label=f"vocabulary ({vocab_size} tags)")
    cover = ax.twinx()
    cover.semilogx(ranks[::step], np.cumsum(counts)[::step] / max(total, 1), color="tab:orange",
                   label="coverage of all occurrences")
    cover.set_ylim(0, 1)
    cover.set_ylabel("coverage by the top-K")
    handles = ax.get_legend_handles_labels()[0] + cover.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title("tag frequencies: the long tail")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return path


def write_vocab_stats(root: Path, tag_counts: Mapping[str, int], total: int, vocab_size: int,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`vocab_stats.json` (coverage by the top-K, tail sizes) and `vocab_longtail.png` in the dataset root."""
    counts = sorted_counts(tag_counts)
    stats = {
        "occurrences": int(total),
        "distinct_tags_counted": len(counts),
        "coverage_at_k": coverage_at(counts, total),
        "tags_seen_once": int((counts == 1).sum()),
        "tags_seen_under_10": int((counts < 10).sum()),
        "plot": PLOT_FILE,
        **(extra or {}),
    }
    if len(counts):
        plot_long_tail(counts, total, vocab_size, root / PLOT_FILE)
    atomic_write_json(root / STATS_FILE, stats)
    return stats
