"""Tag vectors: word2vec on the synthetic web's tag lists, vector files, co-occurrence vectors, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pretrain.atomic import read_json
from pretrain.config import HeadConfig
from pretrain.shards import Dataset
from pretrain.tagvectors import TagLists, compute_tag_vectors, load_tag_vectors, read_vector_file
from pretrain.vocab import Vocabulary


@pytest.fixture(scope="module")
def corpus(synth_root: Path) -> tuple[Vocabulary, list[str]]:
    return Vocabulary.load(synth_root / "vocab.tsv"), Dataset.open(synth_root).train_urls()


def test_word2vec_puts_a_concept_near_its_own_attributes(synth_root: Path, corpus, tmp_path: Path) -> None:
    vocab, urls = corpus
    got = load_tag_vectors(HeadConfig(name="embedding"), vocab, urls, [tmp_path], seed=0)
    assert got.cache == "miss" and got.vectors.shape == (len(vocab), 16)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    assert got.sources["direct"] == len(vocab)  # every vocabulary tag occurs in the shards
    concepts = read_json(synth_root / "manifest.json")["synth"]["concepts"]
    own, other = [], []
    for concept in concepts:
        if concept["name"] not in vocab.index:
            continue
        mine = got.vectors[vocab.index[concept["name"]]]
        attributes = {concept["colour"], concept["shape"], concept["texture"]}
        for c in concepts:
            for word in (c["colour"], c["shape"], c["texture"]):
                (own if word in attributes else other).append(float(mine @ got.vectors[vocab.index[word]]))
    assert np.mean(own) > np.mean(other) + 0.15, (np.mean(own), np.mean(other))
    # a second call reads the cache and gets the same vectors
    again = load_tag_vectors(HeadConfig(name="embedding"), vocab, urls, [tmp_path], seed=0)
    assert again.cache == "hit" and np.array_equal(again.vectors, got.vectors)


def test_vector_files_words_and_cooccurrence(corpus, tmp_path: Path) -> None:
    vocab, urls = corpus
    rng = np.random.default_rng(0)
    # the file knows every tag but the two most frequent single words, and no multi-word tag; it knows the
    # words of the multi-word tags, so those get the mean of their words
    single = [t for t in vocab.tags if " " not in t]
    dropped = single[:2]
    words = {w for t in vocab.tags for w in t.split(" ")} - set(dropped)
    vectors = {w: rng.standard_normal(8).astype(np.float32) for w in sorted(words)}
    lines = [f"{len(vectors)} 8"] + [f"{w.upper()} " + " ".join(f"{x:.6f}" for x in v) for w, v in vectors.items()]
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    got = compute_tag_vectors(HeadConfig(name="embedding", vectors_file=str(path)), vocab, urls)
    multi = [t for t in vocab.tags if " " in t]
    assert got.sources == {"direct": len(vocab) - 2 - len(multi), "words": len(multi), "cooccurrence": 2, "random": 0}
    if multi:
        expected = np.mean([vectors[w] for w in multi[0].split(" ")], axis=0)
        assert np.allclose(got.vectors[vocab.index[multi[0]]], expected / np.linalg.norm(expected), atol=1e-5)
    # a dropped tag: the co-occurrence-weighted mean of the (file) vectors of the tags it shares images with
    target = vocab.index[dropped[0]]
    known = np.array([t not in dropped for t in vocab.tags])
    direct = np.stack([vectors[t] if t in vectors else np.mean([vectors[w] for w in t.split(" ")], axis=0)
                       if known[i] else np.zeros(8, np.float32) for i, t in enumerate(vocab.tags)])
    weights = np.zeros(len(vocab))
    for ids in TagLists(urls, vocab).ids():
        if target in ids:
            for other in ids:
                if known[other]:
                    weights[other] += 1
    expected = weights @ direct
    assert np.allclose(got.vectors[target], expected / np.linalg.norm(expected), atol=1e-4)


def test_glove_file_and_bad_lines(tmp_path: Path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("red 0.1 0.2 0.3\nCircle 1 0 0\n")
    got = read_vector_file(glove)
    assert set(got) == {"red", "circle"} and got["circle"].tolist() == [1.0, 0.0, 0.0]
    glove.write_text("red 0.1 0.2 0.3\ncircle 1 0\n")
    with pytest.raises(ValueError, match=r"glove.txt:2: 2 values, the lines before have 3"):
        read_vector_file(glove)
    glove.write_text("red 0.1 abc 0.3\n")
    with pytest.raises(ValueError, match=r"glove.txt:1: expected 'word v1 v2 ...'"):
        read_vector_file(glove)
    with pytest.raises(FileNotFoundError, match="head.vectors_file"):
        read_vector_file(tmp_path / "missing.txt")
