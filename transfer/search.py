"""`webly search`: the corpus searched in the tag-vector space of an embedding-head run, as DeViSE served it.

Every training image of the corpus is embedded once (trunk + projection, transfer.embedder) by the corpus pass of
transfer.descriptors, which caches the vectors by corpus and model fingerprint; the vectors go into FAISS
indexes of transfer.index (exact inner product, or IVF-PQ beyond `index.flat_max_images`). Three kinds of query:

- text: one or more tag words, the mean of their tag vectors, ranked by the head's own score e . v (held-out
  zero-shot tags work too);
- image (reverse search): an image file or a corpus key, ranked by cosine in the tag-vector space mixed with
  de-duplication's tiny-image descriptor (`search.instance_weight`), so an edited copy finds its original first
  and semantically close images follow;
- gallery completion: the mean of several images' joined vectors (the gallery's own corpus images left out).

Results go to `results.json` (rank, key, score, the result's tags) and `contact_sheet.png` (query, then results).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from pretrain.atomic import atomic_write, atomic_write_json
from pretrain.loader import IMAGE_KEYS
from pretrain.shards import Dataset
from transfer.config import DedupConfig, IndexConfig, SearchConfig
from transfer.descriptors import CACHE_NAME, TinyImage, corpus_descriptors, describe
from transfer.embedder import Embedder
from transfer.index import ViewIndex, load_or_build, unit_rows
from transfer.views import FULL_VIEW


@dataclass
class SearchIndex:
    """Two FAISS indexes over the corpus: `text` holds the head's points e (inner product = the head's tag score),
    `image` the unit points joined with the instance descriptor, weighted so that an inner product is
    (1 - w) cos(e, e') + w cos(tiny, tiny')."""

    embedder: Embedder
    corpus: str
    keys: list[str]
    text: ViewIndex
    image: ViewIndex
    instance: TinyImage
    instance_weight: float
    summary: dict[str, Any]

    @classmethod
    def build(cls, embedder: Embedder, corpus_root: str | Path, cache_dir: str | Path,
              settings: IndexConfig | None = None, batch_size: int = 256, progress: bool = True,
              instance_weight: float = 0.7) -> SearchIndex:
        """Embed and describe the corpus (or read both from the cache) and index them."""
        if not 0.0 <= instance_weight <= 1.0:
            raise ValueError(f"search.instance_weight={instance_weight}: must be in [0, 1]")
        settings, cache_dir = settings or IndexConfig(), Path(cache_dir)
        dedup = DedupConfig()  # the instance descriptor is de-duplication's, with its settings
        instance = TinyImage(dedup.tiny_size, dedup.chroma_weight)
        embed, parts, info = embedder.describer(), {}, {}
        for describer in (embed, instance):
            found, info[describer.kind] = corpus_descriptors(corpus_root, cache_dir / CACHE_NAME, None, describer,
                                                             [FULL_VIEW], embedder.image_size, batch_size, progress)
            parts[describer.kind] = found.vectors
        if not found.keys:
            raise ValueError(f"{corpus_root}: no corpus image could be embedded ({dict(found.skipped)})")
        spec = {"corpus": info["embed"]["fingerprint"], "embed": embed.spec}
        text, text_info = load_or_build(cache_dir, {**spec, "index": "text"}, parts["embed"], 1, settings)
        joined = join(parts["embed"], parts["tiny"], instance_weight)
        image, image_info = load_or_build(cache_dir, {**spec, "index": "image", "tiny": instance.spec,
                                                      "weight": instance_weight}, joined, 1, settings)
        return cls(embedder, str(corpus_root), found.keys, text, image, instance, instance_weight,
                   {"descriptors": info, "text_index": text_info, "image_index": image_info})

    def _search(self, index: ViewIndex, query: np.ndarray, k: int, exclude: set[str]) -> list[dict[str, Any]]:
        scores, ids = index.search(index.reduce(query), min(k + len(exclude), len(self.keys)))
        hits = [(self.keys[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        hits = [(key, score) for key, score in hits if key not in exclude][:k]
        return [{"rank": rank, "key": key, "score": round(score, 6)} for rank, (key, score) in enumerate(hits, 1)]

    def search_text(self, words: list[str], k: int) -> list[dict[str, Any]]:
        """The k corpus images the head scores highest for the tags (mean score), best first."""
        return self._search(self.text, self.embedder.embed_text(words), k, set())

    def search_images(self, items: list[tuple[str, bytes]], k: int, exclude: set[str] | None = None
                      ) -> list[dict[str, Any]]:
        """The k corpus images nearest to the mean of the encoded images' joined vectors (one image: reverse
        search; several: gallery completion), without the keys in `exclude`."""
        embedded = describe(items, None, self.embedder.describer(), [FULL_VIEW], self.embedder.image_size,
                            batch_size=len(items), progress=False, strict=True).vectors
        described = describe(items, None, self.instance, [FULL_VIEW], self.embedder.image_size,
                             batch_size=len(items), progress=False, strict=True).vectors
        query = join(embedded, described, self.instance_weight).mean(axis=0, keepdims=True)
        return self._search(self.image, query, k, exclude or set())


def join(embedded: np.ndarray, described: np.ndarray, weight: float) -> np.ndarray:
    """[sqrt(1 - w) unit(e), sqrt(w) unit(tiny)]: inner products mix the two cosines with weights 1 - w and w."""
    return np.concatenate([np.sqrt(1 - weight) * unit_rows(embedded), np.sqrt(weight) * unit_rows(described)], axis=1)


def fetch_samples(corpus_root: str | Path, keys: list[str]) -> dict[str, dict[str, Any]]:
    """{key: {"image": encoded bytes, "tags": raw tags}} of corpus training images, read from the shards; the
    scan stops once every key is found."""
    wanted, found = set(keys), {}
    urls = Dataset.open(corpus_root).train_urls(0)
    for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)({"url": u} for u in urls):
        key = sample["__key__"]
        if key in wanted:
            try:
                tags = json.loads(sample.get("json", b"{}")).get("tags", [])
            except ValueError:
                tags = []
            found[key] = {"image": next((sample[k] for k in IMAGE_KEYS if k in sample), b""), "tags": tags}
            if len(found) == len(wanted):
                break
    return found


def query_images(items: list[str], corpus_root: str | Path) -> list[tuple[str, bytes, bool]]:
    """(name, encoded image, whether it is a corpus key) of each query item: an image file or a corpus key."""
    files = {item: Path(item) for item in items if Path(item).is_file()}
    keys = [item for item in items if item not in files]
    fetched = fetch_samples(corpus_root, keys) if keys else {}
    missing = [k for k in keys if k not in fetched]
    if missing:
        raise ValueError(f"search: {missing} are neither image files nor training keys of {corpus_root}")
    return [(item, files[item].read_bytes(), False) if item in files else (item, fetched[item]["image"], True)
            for item in items]


def _thumb(data: bytes, side: int) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image.resize((side, side), Image.BILINEAR)


def contact_sheet(title: str, queries: list[tuple[str, bytes]], results: list[dict[str, Any]],
                  images: dict[str, bytes], side: int = 96, columns: int = 5) -> Image.Image:
    """The query images (if any) in the first row under a title line, then the results, captioned rank, score
    and key."""
    caption, pad = 24, 6
    cell = (side + pad, side + caption)
    rows = -(-len(results) // columns) + (1 if queries else 0)
    sheet = Image.new("RGB", (columns * cell[0] + pad, 20 + rows * cell[1] + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title[:120], fill="black")
    tiles = [(f"query {name[-18:]}", data) for name, data in queries[:columns]]
    row_offset = 1 if queries else 0
    for position, (label, data) in enumerate(tiles):
        _place(sheet, draw, _thumb(data, side), label, position, 0, cell, pad, "blue")
    for position, result in enumerate(results):
        label = f"#{result['rank']} {result['score']:.3f}\n{result['key']}"
        row, col = divmod(position, columns)
        _place(sheet, draw, _thumb(images[result["key"]], side), label, col, row + row_offset, cell, pad, "black")
    return sheet


def _place(sheet: Image.Image, draw: ImageDraw.ImageDraw, tile: Image.Image, label: str, col: int, row: int,
           cell: tuple[int, int], pad: int, colour: str) -> None:
    x, y = pad + col * cell[0], 20 + row * cell[1]
    sheet.paste(tile, (x, y))
    draw.text((x, y + tile.size[1] + 1), label, fill=colour)


def query_name(cfg: SearchConfig) -> str:
    """A folder name for the query: its kind and a slug of its text or items."""
    kind, what = ("text", cfg.text) if cfg.text else ("image", cfg.image) if cfg.image else (
        "gallery", "+".join(Path(g).stem for g in cfg.gallery))
    return f"{kind}-{re.sub(r'[^A-Za-z0-9]+', '-', what).strip('-')[:60] or 'query'}"


def run_search(cfg: SearchConfig, corpus_root: str | Path, out_dir: str | Path, cache_dir: str | Path,
               progress: bool = True) -> dict[str, Any]:
    """Run the one query `cfg` holds against the corpus; writes results.json and contact_sheet.png in out_dir."""
    given = [name for name, value in (("text", cfg.text), ("image", cfg.image), ("gallery", cfg.gallery)) if value]
    if len(given) != 1:
        raise ValueError("search: give exactly one of search.text, search.image, search.gallery "
                         f"(got {given or 'none'})")
    if not cfg.run:
        raise ValueError("search.run is empty: name a finished pretraining run with head=embedding")
    if cfg.k < 1:
        raise ValueError(f"search.k={cfg.k}: ask for at least one result")
    embedder = Embedder.from_run(cfg.run)
    index = SearchIndex.build(embedder, corpus_root, cache_dir, cfg.index, cfg.batch_size, progress,
                              cfg.instance_weight)
    queries: list[tuple[str, bytes]] = []
    if cfg.text:
        words = [w.strip() for w in cfg.text.split(",") if w.strip()]
        results = index.search_text(words, cfg.k)
        query: dict[str, Any] = {"kind": "text", "tags": words,
                                 "zero_shot": [w for w in words if embedder.tag_ids([w])[0] in embedder.heldout]}
    else:
        items = [cfg.image] if cfg.image else list(cfg.gallery)
        loaded = query_images(items, corpus_root)
        queries = [(name, data) for name, data, _ in loaded]
        results = index.search_images(queries, cfg.k, {name for name, _, is_key in loaded if is_key})
        query = {"kind": given[0], "items": items}
    samples = fetch_samples(corpus_root, [r["key"] for r in results])
    for result in results:
        result["tags"] = samples[result["key"]]["tags"]
    out_dir = Path(out_dir)
    title = f"{query['kind']}: {cfg.text or ', '.join(query.get('items', []))}  ({Path(cfg.run).name})"
    sheet = contact_sheet(title, queries, results, {k: v["image"] for k, v in samples.items()}, cfg.thumb)
    sheet_path = atomic_write(out_dir / "contact_sheet.png", lambda handle: sheet.save(handle, format="PNG"))
    payload = {"query": query, "run": str(cfg.run), "corpus": str(corpus_root), "k": cfg.k, "results": results,
               "index": index.summary, "contact_sheet": str(sheet_path),
               "skipped": dict(index.summary["descriptors"]["embed"].get("skipped", {}))}
    atomic_write_json(out_dir / "results.json", payload)
    return {**payload, "json": str(out_dir / "results.json")}
