"""`webly shards`: a folder of images with sidecar tag files -> webdataset shards, vocabulary and manifest.

A sidecar sits next to its image with the same stem: `photo.txt` (one tag per line) or `photo.json` (an object
with a `tags` list; other fields are kept as metadata). Images without a usable sidecar are counted, not
fatal; their keys are listed in the manifest so nothing is lost silently. Image files that cannot be read or
are not images are counted per shard (`unreadable`). Shards are resumable: a re-run keeps finished shards.

The helpers here (held-out split by hash, reading an image file, shard jobs) are shared by the YFCC100M source.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pretrain.config import ShardsConfig
from pretrain.dupes import clusters_of, hash_all, keep_mask, summarise
from pretrain.shards import SKIP_KEY, ShardJob, ShardStats, count_totals, finalize_dataset, write_shards
from pretrain.tagcount import tag_counter

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


def read_image_file(path: Path) -> tuple[str, bytes] | None:
    """(webdataset extension, bytes) of an image file, or None when it cannot be read or is no image.

    Only the header is parsed (cheap); a file truncated after its header is caught by the loader's decode.
    """
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(kind or "")
    return (ext, data) if ext else None


def folder_samples(folder: str, entries: list[Entry], first_index: int) -> Iterator[dict[str, Any]]:
    """Samples of one shard, from entries whose sidecars were read when the shards were planned."""
    root = Path(folder)
    for offset, (rel, tags, meta) in enumerate(entries):
        image = read_image_file(root / rel)
        if image is None:
            yield {SKIP_KEY: "unreadable"}
            continue
        yield {
            "__key__": f"{first_index + offset:09d}",
            image[0]: image[1],
            "json": {"tags": tags, "meta": {**meta, "source": "folder", "path": rel}},
        }


def is_heldout(name: str, fraction: float) -> bool:
    """A deterministic function of the name alone: adding inputs never moves one across the split."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def shard_jobs(
    source: str, items: Sequence[Any], prefix: str, per_shard: int, first_index: int,
    samples: Callable[..., Iterator[dict[str, Any]]], *args: Any,
) -> list[ShardJob]:
    """One resumable job per `per_shard` items: `samples(*args, items_of_the_shard, first_key_index)`.

    The fingerprint names the source and hashes the shard's items, so a re-run over changed input rewrites
    the shards whose input changed and keeps the others.
    """
    jobs = []
    for i in range(0, len(items), per_shard):
        chunk = items[i : i + per_shard]  # an array slice stays compact: 8 bytes an item, also when pickled
        content = chunk.tobytes() if isinstance(chunk, array) else json.dumps(chunk, sort_keys=True).encode("utf-8")
        digest = hashlib.sha1(f"{source}|{first_index + i}|".encode() + content)
        jobs.append(ShardJob(f"{prefix}-{i // per_shard:06d}.tar",
                             functools.partial(samples, *args, chunk, first_index + i), digest.hexdigest()))
    return jobs


def write_splits(
    root: Path, cfg: ShardsConfig, train_jobs: list[ShardJob], heldout_jobs: list[ShardJob], processes: int,
    source: str, report: dict[str, Any],
) -> dict[str, Any]:
    """Write both splits (tag counts of the training shards streamed into the bounded counter), then finalise."""
    counter = tag_counter(cfg.vocab)
    train = write_shards(root / "shards", train_jobs, processes, counter=counter)
    heldout: list[ShardStats] = []
    if heldout_jobs:
        heldout = write_shards(root / "shards", heldout_jobs, processes, desc="held-out shards")
    totals = count_totals([*train, *heldout])
    report = {**report, "written": totals["samples"], "skipped": {**report.get("skipped", {}), **totals["skipped"]},
              "shards_kept_from_earlier_run": totals["kept_from_earlier_run"]}
    return finalize_dataset(root, train, heldout, cfg, source=source, extra={"ingest": report}, counter=counter)


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
    train = [e for e in usable if not is_heldout(e[0], cfg.heldout_fraction)]
    heldout = [e for e in usable if is_heldout(e[0], cfg.heldout_fraction)]
    if not train:
        raise ValueError(f"{folder}: no image with a usable sidecar tag file")
    source, per_shard = f"folder:{folder.resolve()}", cfg.samples_per_shard
    train_jobs = shard_jobs(source, train, "train", per_shard, 0, folder_samples, str(folder))
    heldout_jobs = shard_jobs(source, heldout, "heldout", per_shard, len(train), folder_samples, str(folder))
    report = {"images_found": len(images), "skipped": dict(problems), "untagged": untagged[:1000],
              "duplicates": duplicates}
    return write_splits(root, cfg, train_jobs, heldout_jobs, processes, source, report)
