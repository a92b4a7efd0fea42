"""The frozen-trunk feature cache (transfer/feature_cache.py): one trunk's demo transfers with it off and on.

    .venv/bin/python bench/feature_cache.py DEMO_DIR                  # after `make demo` (or `webly demo`) there
    .venv/bin/python bench/feature_cache.py DEMO_DIR --trunk synthweb-s1-tiny

Both variants run at the same time, in one process each (one thread, one core each), so the machine's drift
in speed hits both alike. Each runs the demo's transfer configs of the trunk in turn, as a transfer job does,
without writing into the experiment; prints seconds and the primary metric per task, the cache's hits and
misses, and the ratio of the totals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

PRIMARY = ("top1", "AP", "mIoU")


def run_variant(demo_dir: str, trunk: str, cache_mb: float) -> dict:
    os.chdir(demo_dir)
    from transfer.feature_cache import STORE
    from transfer.run import excluded_ids, repeated_runs
    from webly.config import compose
    from webly.experiment import experiment_dir, pretrain_cells, transfer_configs

    cfg = compose(["experiment=demo"])
    groups = transfer_configs(cfg, pretrain_cells(cfg), experiment_dir(cfg) / "dedup" / "dedup.json")
    group = next((g for g in groups if os.path.basename(g[0].run_dir).startswith(trunk)), None)
    if group is None:
        raise SystemExit(f"{demo_dir}: no demo transfer of a trunk named {trunk}*")
    tasks, started = {}, time.perf_counter()
    for run in group:
        run = dataclasses.replace(run, threads=1, dense=dataclasses.replace(run.dense, feature_cache_mb=cache_mb))
        begun = time.perf_counter()
        metrics = repeated_runs(run, excluded_ids(run.dedup))["metrics"]["full"]
        tasks[run.task] = {"seconds": round(time.perf_counter() - begun, 1),
                           "metric": round(next(metrics[k] for k in PRIMARY if k in metrics), 4)}
    return {"cache_mb": cache_mb, "tasks": tasks, "seconds": round(time.perf_counter() - started, 1),
            "hits": STORE.hits, "misses": STORE.misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir")
    parser.add_argument("--trunk", default="synthweb-s3-tiny18", help="run name prefix of the trunk")
    parser.add_argument("--variant", type=float, help=argparse.SUPPRESS)  # a child process: this cache_mb only
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args.demo_dir, args.trunk, args.variant)))
        return
    children = [subprocess.Popen([sys.executable, __file__, args.demo_dir, "--trunk", args.trunk,
                                  "--variant", str(mb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for mb in (0.0, 1024.0)]
    results = []
    for child in children:
        out, err = child.communicate()
        if child.returncode:
            raise SystemExit(f"a variant failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    off, on = results
    print(f"{'task':15} {'off s':>7} {'on s':>7}  metric off / on")
    for task in off["tasks"]:
        a, b = off["tasks"][task], on["tasks"][task]
        print(f"{task:15} {a['seconds']:7.1f} {b['seconds']:7.1f}  {a['metric']:.4f} / {b['metric']:.4f}")
    print(f"{'total':15} {off['seconds']:7.1f} {on['seconds']:7.1f}  on/off {on['seconds'] / off['seconds']:.3f}; "
          f"cache hits {on['hits']}, misses {on['misses']}")


if __name__ == "__main__":
    main()
