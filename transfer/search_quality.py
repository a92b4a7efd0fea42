"""How well search works on a synthetic web, whose shards record the concepts drawn in each image: text-query
precision against that record, and reverse search of edited corpus images. The integration test and
`bench/search.py` both measure through here, so the bench's numbers are the test's quantities at other scales."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pretrain.shards import Dataset
from transfer.edits import EDITS, apply_edit
from transfer.search import SearchIndex, fetch_samples


def drawn_concepts(corpus_root: str | Path) -> dict[str, set[int]]:
    """{training key: indices of the concepts drawn in the image, tagged or not}, from the synthweb metadata."""
    urls = Dataset.open(corpus_root).train_urls()
    return {s["__key__"]: set(json.loads(s["json"])["meta"]["concepts"])
            for s in wds.tarfile_to_samples()({"url": u} for u in urls)}


def concept_images(drawn: dict[str, set[int]]) -> Counter[int]:
    """{concept index: how many corpus images it is drawn in}."""
    return Counter(concept for concepts in drawn.values() for concept in concepts)


def text_precision(index: SearchIndex, name: str, concept: int, drawn: dict[str, set[int]], k: int = 10) -> float:
    """precision@k of the text query `name`: the share of its results in which `concept` is drawn."""
    return float(np.mean([concept in drawn[hit["key"]] for hit in index.search_text([name], k)]))


def reverse_firsts(index: SearchIndex, corpus_root: str | Path, keys: list[str],
                   edits: tuple[str, ...] = EDITS) -> dict[str, int]:
    """{edit: how many of the `keys` images, edited so (`transfer.edits`, seeded by position) and searched as new
    PNG images, find their original first}."""
    samples = fetch_samples(corpus_root, keys)
    firsts = dict.fromkeys(edits, 0)
    for n, key in enumerate(keys):
        original = Image.open(io.BytesIO(samples[key]["image"])).convert("RGB")
        for edit in edits:
            encoded = io.BytesIO()
            apply_edit(original, edit, np.random.default_rng([n, 7])).image.save(encoded, format="PNG")
            firsts[edit] += index.search_images([("copy", encoded.getvalue())], 1)[0]["key"] == key
    return firsts
