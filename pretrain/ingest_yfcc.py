"""`webly shards data.shards.source=yfcc`: the YFCC100M dataset file + a folder of photos -> shards.

The dataset file is tab-separated, one line per photo or video, 23 columns in the public order (below). User
tags are comma-separated and URL-encoded (`new+york,san%20francisco`); titles and descriptions are
URL-encoded too. A photo is the file `{photos}/{id}.jpg` (or `{id}.{extension original}`, or `{id}`).

Planning streams the file once and keeps only the byte offset of each usable line (8 bytes a photo), so a
100M-line file plans in a few GB at most; the shard writers re-read their lines. Videos and malformed lines
are counted while planning; missing and unreadable photos are counted per shard.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from pretrain.config import ShardsConfig
from pretrain.ingest import is_heldout, read_image_file, shard_jobs, write_splits
from pretrain.shards import SKIP_KEY

COLUMNS = (
    "photo_id", "user_nsid", "user_nickname", "date_taken", "date_uploaded", "capture_device", "title",
    "description", "user_tags", "machine_tags", "longitude", "latitude", "accuracy", "page_url", "download_url",
    "license_name", "license_url", "server_id", "farm_id", "secret", "secret_original", "extension_original",
    "marker",
)
MAX_EXAMPLES = 20  # malformed lines quoted in the manifest


def parse_line(line: bytes) -> dict[str, str]:
    """One line of the dataset file as {column: raw value}; ValueError when the column count is wrong."""
    fields = line.rstrip(b"\r\n").decode("utf-8", errors="replace").split("\t")
    if len(fields) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} tab-separated columns, got {len(fields)}")
    return dict(zip(COLUMNS, fields, strict=True))


def split_tags(field: str) -> list[str]:
    """A comma-separated, URL-encoded tag field -> the decoded tags (commas inside a tag are encoded)."""
    return [unquote_plus(t) for t in field.split(",") if t]


def photo_path(photos: Path, row: dict[str, str]) -> Path | None:
    for name in (f"{row['photo_id']}.jpg", f"{row['photo_id']}.{row['extension_original']}", row["photo_id"]):
        if (photos / name).is_file():
            return photos / name
    return None


def yfcc_samples(metadata: str, photos: str, offsets: Sequence[int], first_index: int) -> Iterator[dict[str, Any]]:
    """Samples of one shard: the lines at `offsets`, their photos read from `photos`."""
    folder = Path(photos)
    with open(metadata, "rb") as handle:
        for i, offset in enumerate(offsets):
            handle.seek(offset)
            row = parse_line(handle.readline())  # planning checked the line
            path = photo_path(folder, row)
            image = read_image_file(path) if path is not None else None
            if image is None:
                yield {SKIP_KEY: "missing_photo" if path is None else "unreadable"}
                continue
            meta = {
                "source": "yfcc100m", "photo_id": row["photo_id"], "user": row["user_nsid"],
                "title": unquote_plus(row["title"]), "description": unquote_plus(row["description"]),
                "machine_tags": split_tags(row["machine_tags"]), "date_taken": row["date_taken"],
                "longitude": row["longitude"], "latitude": row["latitude"], "license": row["license_name"],
                "page_url": row["page_url"],
            }
            yield {"__key__": f"{first_index + i:09d}", image[0]: image[1],
                   "json": {"tags": split_tags(row["user_tags"]), "meta": meta}}


def plan_yfcc(metadata: Path, heldout_fraction: float) -> tuple[array, array, dict[str, Any]]:
    """(train offsets, held-out offsets, counts) from one streaming pass over the dataset file."""
    train, heldout = array("q"), array("q")
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    lines = 0
    with open(metadata, "rb") as handle:
        offset = 0
        for lineno, line in enumerate(handle, start=1):
            lines += 1
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                row = parse_line(line)
            except ValueError as err:
                skipped["bad_line"] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{metadata}:{lineno}: {err}")
                continue
            if row["marker"] == "1":
                skipped["video"] += 1
                continue
            (heldout if is_heldout(row["photo_id"], heldout_fraction) else train).append(start)
    report = {"lines": lines, "photos": len(train) + len(heldout), "skipped": dict(skipped), "bad_lines": examples}
    return train, heldout, report


def ingest_yfcc(root: str | Path, cfg: ShardsConfig, processes: int = 1) -> dict[str, Any]:
    """Shard the YFCC100M-format file `cfg.input` with photos from `cfg.photos` into `root`; returns the manifest."""
    metadata, root = Path(cfg.input), Path(root)
    if not metadata.is_file():
        raise FileNotFoundError(f"shards.input={cfg.input!r}: not a file (the YFCC100M dataset file)")
    photos = Path(cfg.photos)
    if not photos.is_dir():
        raise FileNotFoundError(f"shards.photos={cfg.photos!r}: not a folder (the photos, named by id)")
    train, heldout, report = plan_yfcc(metadata, cfg.heldout_fraction)
    if not train:
        problem = f" (first problem: {report['bad_lines'][0]})" if report["bad_lines"] else ""
        raise ValueError(f"{metadata}: no photo line in the YFCC100M layout{problem}")
    source, per_shard = f"yfcc100m:{metadata.resolve()}", cfg.samples_per_shard
    args = (yfcc_samples, str(metadata), str(photos))
    inputs = f"{source}|photos:{photos.resolve()}"  # a shard is redone when either changes
    train_jobs = shard_jobs(inputs, train, "train", per_shard, 0, *args)
    heldout_jobs = shard_jobs(inputs, heldout, "heldout", per_shard, len(train), *args)
    return write_splits(root, cfg, train_jobs, heldout_jobs, processes, source, report)
