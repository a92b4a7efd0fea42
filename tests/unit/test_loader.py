"""The streaming loader: shard slots, batch layout, determinism, mid-epoch positioning, one pass over held-out."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.config import DataConfig, ShardsConfig, SynthConfig, VocabConfig
from pretrain.loader import Batch, TaggedImageStream, make_loader, shard_stream
from pretrain.shards import Dataset
from pretrain.synthweb.dataset import write_synthweb
from pretrain.tags import normalize_tags
from pretrain.vocab import Vocabulary
from tests.unit.conftest import read_shard

BATCH = 16
CROP = 32


@pytest.fixture(autouse=True)
def _single_process_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """webdataset reads the rank and worker from these variables first: keep them out of the tests."""
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------- shard_stream

URLS = [f"shard-{i}" for i in range(8)]


def _slots(seed: int, epoch: int, ranks: int = 2, workers: int = 2, take: int = 2) -> dict[tuple[int, int], list]:
    """What each (rank, worker) reads first, with the loader's slot numbering rank * workers + worker."""
    return {
        (rank, worker): list(itertools.islice(
            shard_stream(URLS, seed, epoch, rank * workers + worker, ranks * workers), take))
        for rank in range(ranks) for worker in range(workers)
    }


def test_first_pass_slots_are_disjoint_and_cover_all_shards() -> None:
    for seed, epoch in [(0, 0), (1, 0), (0, 3), (17, 5)]:
        first = _slots(seed, epoch)
        assert all(len(v) == 2 for v in first.values())
        read = [u for v in first.values() for u in v]
        assert sorted(read) == sorted(URLS), (seed, epoch)


def test_every_pass_is_a_partition_and_passes_reshuffle() -> None:
    streams = [shard_stream(URLS, 0, 0, slot, 4) for slot in range(4)]
    passes = []
    for _ in range(4):
        this_pass = [list(itertools.islice(s, 2)) for s in streams]
        assert sorted(u for part in this_pass for u in part) == sorted(URLS)
        passes.append(this_pass)
    assert len({json.dumps(p) for p in passes}) > 1  # the assignment to slots changes between passes


def test_same_seed_and_epoch_give_the_same_order() -> None:
    def take(seed: int, epoch: int, slot: int) -> list[str]:
        return list(itertools.islice(shard_stream(URLS, seed, epoch, slot, 4), 20))

    assert take(3, 2, 1) == take(3, 2, 1)
    assert [take(3, 2, s) for s in range(4)] != [take(3, 3, s) for s in range(4)]  # another epoch
    assert [take(3, 2, s) for s in range(4)] != [take(4, 2, s) for s in range(4)]  # another seed


def test_single_slot_reads_every_shard_once_per_pass() -> None:
    stream = shard_stream(URLS, 5, 0, 0, 1)
    for _ in range(3):
        assert sorted(itertools.islice(stream, 8)) == sorted(URLS)


def test_fewer_shards_than_slots_still_yields_endlessly() -> None:
    urls = ["a", "b", "c"]
    for slot in range(4):
        drawn = list(itertools.islice(shard_stream(urls, 0, 0, slot, 4), 50))
        assert len(drawn) == 50
        assert set(drawn) <= set(urls)
        assert drawn == list(itertools.islice(shard_stream(urls, 0, 0, slot, 4), 50))
    assert list(itertools.islice(shard_stream(["only"], 0, 0, 1, 2), 3)) == ["only"] * 3


# ------------------------------------------------------------------------------------------ TaggedImageStream


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Vocabulary]:
    """240 training images in 4 shards of 60, 90 held-out images in 2 shards, 40 px."""
    root = tmp_path_factory.mktemp("loader-synthweb")
    data = DataConfig(
        root=str(root), image_size=40,
        synth=SynthConfig(num_images=240, heldout_images=90, image_size=40, num_concepts=12),
        shards=ShardsConfig(samples_per_shard=60, subsets=[0.5, 1.0], vocab=VocabConfig(min_count=3)),
    )
    write_synthweb(data, processes=1)
    dataset = Dataset.open(root)
    return dataset, Vocabulary.load(root / "vocab.tsv")


def _stream(synth, *, train: bool = True, seed: int = 0, epoch: int = 0, skip: int = 0) -> TaggedImageStream:
    dataset, vocab = synth
    urls = dataset.train_urls() if train else dataset.heldout_urls()
    stream = TaggedImageStream(urls, vocab, BATCH, CROP, train=train, seed=seed, shuffle_buffer=40)
    stream.set_position(epoch, skip)
    return stream


def _take(stream: TaggedImageStream, n: int, workers: int = 0) -> list[Batch]:
    return list(itertools.islice(iter(make_loader(stream, workers)), n))


def _encoded_tags(urls: list[str], vocab: Vocabulary) -> dict[str, list[int]]:
    return {s["__key__"]: vocab.encode(normalize_tags(json.loads(s["json"])["tags"]))
            for url in urls for s in read_shard(url)}


def test_batches_are_uint8_images_and_padded_tag_ids(synth) -> None:
    dataset, vocab = synth
    expected_ids = _encoded_tags(dataset.train_urls(), vocab)
    batches = _take(_stream(synth), 4)
    padded_rows = 0
    for batch in batches:
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.uint8
        assert tuple(batch.images.shape) == (BATCH, 3, CROP, CROP)
        assert batch.tag_ids.dtype == torch.int64
        assert batch.tag_ids.shape[0] == BATCH and len(batch.keys) == BATCH
        assert int(batch.tag_ids.min()) >= -1
        assert int(batch.tag_ids.max()) < len(vocab)
        assert batch.tag_ids.shape[1] == max(len(expected_ids[k]) for k in batch.keys)  # no wider than needed
        for row, key in zip(batch.tag_ids.tolist(), batch.keys, strict=True):
            ids = expected_ids[key]
            assert ids, key  # only samples with an in-vocabulary tag are batched
            assert row == ids + [-1] * (len(row) - len(ids))  # ids in encode order, then the padding
            padded_rows += len(row) > len(ids)
    assert padded_rows > 0
    keys = [k for b in batches for k in b.keys]
    assert len(set(keys)) == len(keys)


def test_the_stream_is_a_function_of_seed_and_epoch(synth) -> None:
    first = _take(_stream(synth, seed=7, epoch=2), 5)
    second = _take(_stream(synth, seed=7, epoch=2), 5)
    for a, b in zip(first, second, strict=True):
        assert a.keys == b.keys
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.tag_ids, b.tag_ids)
    assert [b.keys for b in _take(_stream(synth, seed=7, epoch=3), 2)] != [b.keys for b in first[:2]]
    assert [b.keys for b in _take(_stream(synth, seed=8, epoch=2), 2)] != [b.keys for b in first[:2]]


def _assert_same_batches(got: list[Batch], want: list[Batch]) -> None:
    assert [b.keys for b in got] == [b.keys for b in want]
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.tag_ids, b.tag_ids)


@pytest.mark.parametrize(
    ("workers", "k"),
    [
        (0, 1),
        (0, 4),
        (2, 2),
        (2, 4),
        (2, 1),
        (2, 3),
        (2, 5),
    ],
)
def test_set_position_starts_exactly_at_batch_k(synth, workers: int, k: int) -> None:
    reference = _take(_stream(synth, seed=1, epoch=1), k + 4, workers)
    positioned = _take(_stream(synth, seed=1, epoch=1, skip=k), 4, workers)
    _assert_same_batches(positioned, reference[k:])


def test_set_position_resets_between_iterations(synth) -> None:
    stream = _stream(synth, seed=1, epoch=1)
    reference = _take(stream, 3)
    stream.set_position(1, 2)
    assert _take(stream, 1)[0].keys == reference[2].keys
    stream.set_position(1, 0)
    assert [b.keys for b in _take(stream, 3)] == [b.keys for b in reference]


@pytest.mark.parametrize("workers", [0, 2])
def test_heldout_reads_every_usable_sample_exactly_once(synth, workers: int) -> None:
    dataset, vocab = synth
    expected = _encoded_tags(dataset.heldout_urls(), vocab)
    usable = [k for k, ids in expected.items() if ids]
    batches = list(make_loader(_stream(synth, train=False), workers))
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(usable)
    skipped = sum((b.skipped for b in batches), Counter())
    assert skipped == Counter({"no_known_tag": len(expected) - len(usable)} if len(usable) < len(expected) else {})
    for batch in batches:
        assert len(batch.keys) <= BATCH
        for row, key in zip(batch.tag_ids.tolist(), batch.keys, strict=True):
            assert [i for i in row if i >= 0] == expected[key]
    if workers == 0:  # one reader: the shards' own order, full batches but the last
        assert keys == [k for k in expected if expected[k]]
        assert [len(b.keys) for b in batches[:-1]] == [BATCH] * (len(batches) - 1)


def test_heldout_images_are_central_crops(synth) -> None:
    dataset, _ = synth
    raw = {s["__key__"]: s["jpg"] for url in dataset.heldout_urls() for s in read_shard(url)}
    batch = _take(_stream(synth, train=False), 1)[0]
    for image, key in zip(batch.images, batch.keys[:3], strict=False):
        with Image.open(io.BytesIO(raw[key])) as source:
            assert source.size == (40, 40)
            want = np.array(source.convert("RGB").resize((CROP, CROP), Image.BILINEAR, box=(0, 0, 40, 40)))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(want))


def test_ranks_split_the_heldout_shards(synth, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, _ = synth
    per_shard = [[s["__key__"] for s in read_shard(u)] for u in dataset.heldout_urls()]
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        keys = [k for b in _take(_stream(synth, train=False), 100) for k in b.keys]
        assert set(keys) <= set(per_shard[rank])
        seen.append(set(keys))
    assert not seen[0] & seen[1]


def test_a_stream_needs_shards(synth) -> None:
    _, vocab = synth
    with pytest.raises(ValueError, match="the loader was given no shards"):
        TaggedImageStream([], vocab, BATCH, CROP)
