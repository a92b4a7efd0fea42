"""Fixtures of the unit tests: tiny encoded images and a reader of webdataset shards."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds
from PIL import Image


def encode_image(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 10),
                 fmt: str = "JPEG") -> bytes:
    """A tiny solid-colour image with a contrasting square, encoded as `fmt`."""
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (2, 2, 6, 6))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    """Every sample of one tar shard, as webdataset groups it (raw bytes per extension)."""
    return list(wds.tarfile_to_samples()([{"url": str(path)}]))


def shard_tags(path: str | Path) -> dict[str, list[str]]:
    """key -> raw `tags` of every sample of a shard (the sidecar JSON as written)."""
    return {s["__key__"]: json.loads(s["json"])["tags"] for s in read_shard(path)}


@pytest.fixture
def jpeg() -> Callable[..., bytes]:
    return encode_image
