"""Vocabulary at scale: a 1M-tag vocabulary from a generated stream of 20M tag occurrences (Zipf), with the
streaming counter of `pretrain/tagcount.py`; reports wall time and peak RSS (the target is under 2 GB).

    .venv/bin/python bench/vocab.py                      # bounded counter (max_tracked = 2M), the defaults
    .venv/bin/python bench/vocab.py --max-tracked 0      # exact counting, for comparison

The stream is drawn in chunks (tags `t<rank>`, rank ~ Zipf(s) over a universe of `--universe` tags) and fed to
the counter chunk by chunk, as `webly shards` feeds it shard by shard; then the vocabulary (top-K), vocab.tsv,
vocab_stats.json and the long-tail plot are written as for a dataset.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from pretrain.tagcount import TagCounter
from pretrain.vocab import build_vocabulary
from pretrain.vocabstats import write_vocab_stats


def zipf_chunks(occurrences: int, universe: int, exponent: float, chunk: int, seed: int):
    """Lists of tag strings whose ranks follow p(r) ∝ r^-exponent over `universe` ranks."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, universe + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    for start in range(0, occurrences, chunk):
        ranks = np.searchsorted(cdf, rng.random(min(chunk, occurrences - start)))
        yield [f"t{r}" for r in ranks.tolist()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--occurrences", type=int, default=20_000_000)
    parser.add_argument("--universe", type=int, default=5_000_000, help="distinct tags the stream can draw")
    parser.add_argument("--exponent", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=1_000_000)
    parser.add_argument("--max-tracked", type=int, default=2_000_000, help="0: exact counting")
    parser.add_argument("--chunk", type=int, default=500_000, help="occurrences per counter update")
    parser.add_argument("--out", default="", help="where vocab.tsv etc. go (default: a temporary folder)")
    args = parser.parse_args()

    baseline = peak_rss_mb()
    start = time.perf_counter()
    counter = TagCounter(args.max_tracked)
    for tags in zipf_chunks(args.occurrences, args.universe, args.exponent, args.chunk, seed=0):
        counter.update(tags)
    counted = time.perf_counter()
    vocab = build_vocabulary(counter.counts, min_count=1, top_k=args.top_k, total=counter.total)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-vocab-"))
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.tsv")
    stats = write_vocab_stats(out, counter.counts, counter.total, len(vocab))
    end = time.perf_counter()
    result = {
        "occurrences": counter.total, "universe": args.universe, "exponent": args.exponent,
        "max_tracked": args.max_tracked, "peak_tracked_tags": counter.peak_tracked, "tracked_at_end": len(counter),
        "prunes": counter.prunes, "max_undercount": counter.max_undercount,
        "vocab_size": len(vocab), "count_at_last_rank": vocab.counts[-1],
        "coverage_at_k": stats["coverage_at_k"],
        "seconds_counting": round(counted - start, 1), "seconds_total": round(end - start, 1),
        "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(baseline),
        "python": platform.python_version(), "output": str(out),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
