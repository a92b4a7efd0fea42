"""The manifest of a pipeline stage's run directory: what ran, on what, with which config, and whether it is done.

Written atomically at the start (status "running") and the end ("done" or "failed"). A stage whose manifest
says done for the same config hash is skipped on a re-run, so an interrupted experiment resumes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_json, read_json


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def code_version() -> str:
    """The git commit of the code (with '+dirty' if modified), or the package version outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("webly")
        except PackageNotFoundError:
            return "unknown"


def write_manifest(run_dir: str | Path, stage: str, status: str, config: dict[str, Any], *,
                   filename: str = "manifest.json", **fields: Any) -> Path:
    """Record a stage's status; `filename` differs where the folder has a manifest of its own (a dataset)."""
    path = Path(run_dir) / filename
    previous = read_json(path) if path.exists() else {}
    manifest = {
        **previous,
        "stage": stage,
        "status": status,
        "config": config,
        "config_hash": config_hash(config),
        "code_version": code_version(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    return atomic_write_json(path, manifest)


def is_done(run_dir: str | Path, config: dict[str, Any], filename: str = "manifest.json") -> bool:
    path = Path(run_dir) / filename
    if not path.exists():
        return False
    manifest = read_json(path)
    return manifest.get("status") == "done" and manifest.get("config_hash") == config_hash(config)
