"""Tag vectors for the embedding head: word2vec on the corpus's tag lists, or a word2vec / GloVe text file.

As in Attalos (im2vec), each image's tag list is one context: gensim's word2vec runs over the lists with a
window as wide as the longest list (and no window shrinking), so every pair of tags of an image counts. A vector
file (word2vec text format with its `count dim` header, or GloVe's headerless one) can be used instead; a
multi-word tag missing from it takes the mean of its words' vectors. A vocabulary tag with no vector either way
(below word2vec's reach, or absent from the file) gets one from co-occurrence: the mean of the vectors of the
tags it shares images with, weighted by how often. Only a tag that co-occurs with nothing gets a seeded random
vector. Vectors come out L2-normalised, and are cached by a fingerprint of the vocabulary, shards and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from scipy import sparse

from pretrain.atomic import atomic_write
from pretrain.config import HeadConfig
from pretrain.shards import stamp_files
from pretrain.tags import normalize_tag, normalize_tags, raw_sample_tags
from pretrain.vocab import OOV_TAG, Vocabulary

VERSION = 1  # bump when the recipe changes, so old caches are not reused
AUTO_TOKENS = 1_000_000  # head.vectors_epochs=0: passes enough for this many tag occurrences
IN_MEMORY_IMAGES = 2_000_000  # tag lists held in memory for word2vec's passes up to this many images


@dataclass
class TagVectors:
    vectors: np.ndarray  # V x D float32, unit rows, in vocabulary order
    sources: dict[str, int] = field(default_factory=dict)  # how many tags got their vector which way
    cache: str = ""  # hit | miss


class TagLists:
    """The vocabulary tags of every training image, one list per image; iterable again and again (word2vec
    makes several passes) without holding the corpus in memory."""

    def __init__(self, urls: Sequence[str], vocab: Vocabulary) -> None:
        self.urls, self.vocab = list(urls), vocab

    def ids(self) -> Iterator[list[int]]:
        for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)({"url": u} for u in self.urls):
            raw = raw_sample_tags(sample)
            ids = [i for i in self.vocab.encode(normalize_tags(raw or [])) if i != self.vocab.oov_index]
            if ids:
                yield ids

    def __iter__(self) -> Iterator[list[str]]:
        for ids in self.ids():
            yield [self.vocab.tags[i] for i in ids]


def _fingerprint(cfg: HeadConfig, vocab: Vocabulary, urls: Sequence[str], seed: int) -> str:
    digest = hashlib.sha256(json.dumps({"version": VERSION, "tags": vocab.tags, "seed": seed,
                                        "file": cfg.vectors_file, "dim": cfg.vectors_dim,
                                        "epochs": cfg.vectors_epochs}).encode())
    stamp_files(digest, urls)
    if cfg.vectors_file:
        stat = Path(cfg.vectors_file).stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def auto_epochs(tokens: int) -> int:
    """Passes for about AUTO_TOKENS tag occurrences in all, between 5 (web scale) and 300 (a small corpus, where
    word2vec's default 5 leaves the vectors nearly where they started)."""
    return int(np.clip(np.ceil(AUTO_TOKENS / max(tokens, 1)), 5, 300))


def train_word2vec(lists: TagLists, dim: int, epochs: int, seed: int) -> dict[str, np.ndarray]:
    """word2vec (skip-gram, negative sampling) over the tag lists, each list one whole context."""
    from gensim.models import Word2Vec

    logging.getLogger("gensim").setLevel(logging.WARNING)
    held: list[list[str]] = []
    corpus: Iterable[list[str]] = held
    lengths = []
    for tags in lists:  # a corpus that fits is held in memory: word2vec's passes then skip the tar reading
        lengths.append(len(tags))
        if corpus is held:
            held.append(tags)
            if len(held) > IN_MEMORY_IMAGES:
                corpus, held = lists, []
    # one worker: gensim is deterministic for a seed only single-threaded
    model = Word2Vec(vector_size=dim, window=max(max(lengths, default=1), 2), min_count=1, sg=1, negative=5,
                     workers=1, seed=seed, shrink_windows=False)
    model.build_vocab(corpus_iterable=corpus)
    model.train(corpus_iterable=corpus, total_examples=model.corpus_count, epochs=epochs or auto_epochs(sum(lengths)))
    return {word: model.wv[word] for word in model.wv.index_to_key}


def read_vector_file(path: str | Path) -> dict[str, np.ndarray]:
    """Vectors of a word2vec text file (`count dim` header) or a GloVe file (none), keyed by normalised word."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head.vectors_file={str(path)!r}: no such file")
    vectors: dict[str, np.ndarray] = {}
    dim = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            parts = line.rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec's header
            if len(parts) < 2:
                continue
            try:
                values = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'word v1 v2 ...', got {line[:80]!r}") from None
            dim = dim or len(values)
            if len(values) != dim:
                raise ValueError(f"{path}:{lineno}: {len(values)} values, the lines before have {dim}")
            vectors.setdefault(normalize_tag(parts[0]), values)
    if not vectors:
        raise ValueError(f"{path}: no vectors found")
    return vectors


def cooccurrence_fill(missing: list[int], lists: TagLists, vectors: np.ndarray, known: np.ndarray) -> list[int]:
    """Give each tag in `missing` the co-occurrence-weighted mean of the known vectors it shares images with;
    returns the tags that co-occur with no known tag (left as they are)."""
    if not missing:
        return []
    rows, cols = [], []
    for image, ids in enumerate(lists.ids()):
        rows += [image] * len(ids)
        cols += ids
    incidence = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                  shape=(max(rows, default=-1) + 1, len(vectors)))
    counts = (incidence[:, missing].T @ incidence).toarray()  # len(missing) x V co-occurrence counts
    counts[:, ~known] = 0.0  # only tags with a vector of their own vote
    weights = counts.sum(axis=1, keepdims=True)
    lonely = [tag for tag, w in zip(missing, weights[:, 0], strict=True) if w == 0]
    filled = counts @ vectors / np.maximum(weights, 1.0)
    for row, tag in enumerate(missing):
        if weights[row, 0] > 0:
            vectors[tag] = filled[row]
    return lonely


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def compute_tag_vectors(cfg: HeadConfig, vocab: Vocabulary, urls: Sequence[str], seed: int = 0) -> TagVectors:
    lists = TagLists(urls, vocab)
    source = read_vector_file(cfg.vectors_file) if cfg.vectors_file else train_word2vec(
        lists, cfg.vectors_dim, cfg.vectors_epochs, seed)
    dim = len(next(iter(source.values())))
    vectors = np.zeros((len(vocab), dim), np.float32)
    known = np.zeros(len(vocab), bool)
    sources = {"direct": 0, "words": 0, "cooccurrence": 0, "random": 0}
    for index, tag in enumerate(vocab.tags):
        words = tag.split(" ")
        if tag in source:
            vectors[index], known[index] = source[tag], True
            sources["direct"] += 1
        elif len(words) > 1 and all(w in source for w in words):
            vectors[index], known[index] = np.mean([source[w] for w in words], axis=0), True
            sources["words"] += 1
    missing = [i for i in range(len(vocab)) if not known[i]]
    lonely = cooccurrence_fill(missing, lists, vectors, known)
    sources["cooccurrence"] = len(missing) - len(lonely)
    rng = np.random.default_rng([seed, len(vocab)])
    for index in lonely:  # e.g. <oov>, or a tag absent from this subset's shards
        vectors[index] = rng.standard_normal(dim)
    sources["random"] = len(lonely)
    if OOV_TAG in vocab.index:
        sources["oov_bucket"] = 1
    return TagVectors(_unit(vectors), sources)


def load_tag_vectors(cfg: HeadConfig, vocab: Vocabulary, urls: Sequence[str], cache_dirs: Sequence[str | Path],
                     seed: int = 0) -> TagVectors:
    """The tag vectors `cfg` asks for, from the first cache folder holding them, else computed and saved in the
    first folder that can be written."""
    name = f"tag_vectors-{_fingerprint(cfg, vocab, urls, seed)}.npz"
    for folder in cache_dirs:
        path = Path(folder) / name
        try:
            with np.load(path, allow_pickle=False) as npz:
                if npz["tags"].tolist() == vocab.tags:
                    return TagVectors(npz["vectors"], json.loads(str(npz["sources"])), "hit")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
    result = compute_tag_vectors(cfg, vocab, urls, seed)
    result.cache = "miss"
    for folder in cache_dirs:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(folder) / name, lambda handle: np.savez(
                handle, vectors=result.vectors, tags=np.array(vocab.tags, dtype=str),
                sources=np.array(json.dumps(result.sources))))
            break
        except OSError:  # a read-only dataset root: try the next folder
            continue
    return result
