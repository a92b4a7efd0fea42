"""`webly shards`: a folder of images with sidecar tag files -> webdataset shards, vocabulary and manifest.

A sidecar sits next to its image with the same stem: `photo.txt` (one tag per line) or `photo.json` (an object
with a `tags` list; other fields are kept as metadata). Images without a usable sidecar are counted, not
fatal; their keys are listed in the manifest so nothing is lost silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.config import ShardsConfig
from pretrain.dupes import clusters_of, hash_all, keep_mask, summarise
from pretrain.shards import ShardJob, finalize_dataset, write_shards

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def find_images(folder: Path) -> list[Path]:
    """Every image below `folder`, in a fixed (sorted) order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"shards.input={str(folder)!r}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_sidecar(image: Path) -> tuple[list[str] | None, dict[str, Any], tuple[str, str] | None]:
    """(tags, extra metadata, problem) from the image's .json or .txt sidecar; tags None when unusable.

    A problem is (kind, message) with kind `no_sidecar` or `bad_sidecar`.
    """
    as_json, as_txt = image.with_suffix(".json"), image.with_suffix(".txt")
    if as_json.exists():
        try:
            meta = json.loads(as_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            return None, {}, ("bad_sidecar", f"{as_json}: not valid JSON ({err})")
        if not isinstance(meta, dict) or not isinstance(meta.get("tags"), list):
            return None, {}, ("bad_sidecar", f"{as_json}: expected an object with a 'tags' list")
        tags = [str(t) for t in meta.pop("tags")]
        return tags, meta, None
    if as_txt.exists():
        lines = as_txt.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line.strip() for line in lines if line.strip()], {}, None
    return None, {}, ("no_sidecar", f"{image}: no sidecar (.txt or .json)")


Entry = tuple[str, list[str], dict[str, Any]]  # (path relative to the folder, tags, sidecar metadata)


def folder_samples(folder: str, entries: list[Entry], first_index: int) -> Iterator[dict[str, Any]]:
    """Samples of one shard, from entries whose sidecars were read when the shards were planned."""
    root = Path(folder)
    for offset, (rel, tags, meta) in enumerate(entries):
        image = root / rel
        ext = image.suffix.lower().lstrip(".").replace("jpeg", "jpg")
        yield {
            "__key__": f"{first_index + offset:09d}",
            ext: image.read_bytes(),
            "json": {"tags": tags, "meta": {**meta, "source": "folder", "path": rel}},
        }


def _is_heldout(rel: str, fraction: float) -> bool:
    digest = hashlib.sha1(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _jobs(folder: Path, entries: list[Entry], prefix: str, per_shard: int, offset: int) -> list[ShardJob]:
    return [
        ShardJob(f"{prefix}-{i // per_shard:06d}.tar",
                 functools.partial(folder_samples, str(folder), entries[i : i + per_shard], offset + i))
        for i in range(0, len(entries), per_shard)
    ]


def _duplicates(folder: Path, entries: list[Entry], mode: str) -> tuple[dict[str, Any] | None, list[Entry]]:
    """Duplicate clusters (identical pHash) among `entries`; with mode "drop", only the first of each is kept."""
    if mode not in ("off", "count", "drop"):
        raise ValueError(f"shards.duplicates={mode!r}: expected off, count or drop")
    if mode == "off":
        return None, entries
    codes, ok = hash_all((folder / rel).read_bytes() for rel, _, _ in entries)
    clusters = clusters_of(codes, ok)
    summary = {**summarise(clusters, len(entries)), "examples": [[entries[i][0] for i in c] for c in clusters[:20]]}
    if mode == "drop":
        keep = keep_mask(clusters, len(entries))
        entries = [e for e, k in zip(entries, keep, strict=True) if k]
        summary["dropped"] = int((~keep).sum())
    return summary, entries


def ingest_folder(root: str | Path, cfg: ShardsConfig, processes: int = 1) -> dict[str, Any]:
    """Shard every tagged image of `cfg.input` into dataset root `root`; returns the manifest."""
    folder, root = Path(cfg.input), Path(root)
    images = find_images(folder)
    if not images:
        raise ValueError(f"shards.input={cfg.input!r}: no .jpg/.jpeg/.png/.webp image found")
    problems: Counter[str] = Counter()
    usable: list[Entry] = []
    untagged: list[str] = []
    for image in images:
        rel = str(image.relative_to(folder))
        tags, meta, problem = read_sidecar(image)
        if tags is None and problem is not None:
            problems[problem[0]] += 1
            untagged.append(rel)
        else:
            usable.append((rel, tags, meta))
    duplicates, usable = _duplicates(folder, usable, cfg.duplicates)
    train = [e for e in usable if not _is_heldout(e[0], cfg.heldout_fraction)]
    heldout = [e for e in usable if _is_heldout(e[0], cfg.heldout_fraction)]
    if not train:
        raise ValueError(f"{folder}: no image with a usable sidecar tag file")
    per_shard = cfg.samples_per_shard
    train_stats = write_shards(root / "shards", _jobs(folder, train, "train", per_shard, 0), processes)
    held_stats = write_shards(root / "shards", _jobs(folder, heldout, "heldout", per_shard, len(train)), processes,
                              desc="held-out shards") if heldout else []
    report = {"images_found": len(images), "skipped": dict(problems), "untagged": untagged[:1000],
              "duplicates": duplicates}
    return finalize_dataset(root, train_stats, held_stats, cfg, source=f"folder:{folder.resolve()}",
                            extra={"ingest": report})
