"""The streaming loader: webdataset shards -> uint8 image batches with tag indices, deterministic and resumable.

Every (rank, worker) reads its own slice of a seeded shard order, cycling through it pass after pass
(resampled shards), so the stream never runs dry and each rank gets the same number of batches. An epoch is a
fixed number of steps. Given (seed, epoch) the stream is a pure function of the shard files, so a resumed run
rebuilds the epoch and drops the batches it had already consumed.

Corrupt samples (undecodable image, unparsable JSON, no tag in the vocabulary, no image at all, unreadable
tar) are skipped and counted; each batch carries the counts gathered since the previous batch of its worker,
so the trainer's totals are exact whatever the number of workers.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pretrain.images import center_crop, decode_rgb, random_resized_crop
from pretrain.resample import TAG_IDS_KEY, resample, tag_factors
from pretrain.tags import normalize_tags, raw_sample_tags
from pretrain.vocab import Vocabulary

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("bad_image", "bad_json", "no_known_tag", "missing_image", "bad_shard")


def shard_stream(
    urls: Sequence[str], seed: int, epoch: int, slot: int, num_slots: int
) -> Iterator[str]:
    """Endless shard urls for one reader slot (rank x worker): disjoint slices of a reshuffled order per pass.

    With fewer shards than slots, slices cannot be disjoint; each slot then draws shards with replacement.
    """
    for pass_index in range(1 << 62):
        order = list(urls)
        random.Random(f"shards-{seed}-{epoch}-{pass_index}").shuffle(order)
        if len(order) >= num_slots:
            yield from order[slot::num_slots]
        else:
            yield random.Random(f"resample-{seed}-{epoch}-{pass_index}-{slot}").choice(order)


@dataclass
class Batch:
    images: torch.Tensor  # N x 3 x S x S uint8 (channels-last in memory)
    tag_ids: torch.Tensor  # N x K int64 indices into the vocabulary, padded with -1
    keys: list[str]
    skipped: Counter[str] = field(default_factory=Counter)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.tag_ids.pin_memory(), self.keys, self.skipped)


def collate(images: list[np.ndarray], tag_ids: list[list[int]], keys: list[str], skipped: Counter[str]) -> Batch:
    width = max(len(t) for t in tag_ids)
    padded = torch.full((len(tag_ids), width), -1, dtype=torch.int64)
    for row, ids in enumerate(tag_ids):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return Batch(pixels, padded, keys, skipped)


class TaggedImageStream(IterableDataset):
    """Batches of (uint8 crop, tag ids) from webdataset shards.

    `train=True`: endless, shuffled, augmented; the caller takes `steps_per_epoch` batches per epoch.
    `train=False`: each shard once, in order, central crops; the last batch may be short.
    """

    def __init__(
        self,
        urls: Sequence[str],
        vocab: Vocabulary,
        batch_size: int,
        image_size: int,
        *,
        train: bool = True,
        seed: int = 0,
        min_scale: float = 0.35,
        shuffle_buffer: int = 500,
        resample_alpha: float = 1.0,
    ) -> None:
        if not urls:
            raise ValueError("the loader was given no shards")
        self.urls = list(urls)
        self.vocab = vocab
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.min_scale = min_scale
        self.shuffle_buffer = shuffle_buffer
        # label resampling q(tag) ∝ count^α (pretrain/resample.py); α = 1 leaves the stream untouched
        self.resample_alpha = resample_alpha
        self.tag_factors = tag_factors(vocab.counts, resample_alpha) if train and resample_alpha != 1 else None
        self.epoch = 0
        self.skip_batches = 0

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Start the next iteration at `epoch`, after the first `batches_done` batches (over all workers)."""
        self.epoch = epoch
        self.skip_batches = batches_done

    def _slot(self) -> tuple[int, int, int, int]:
        """(reader slot, number of slots, this worker's role, workers) for this process.

        A DataLoader takes batches from its workers round-robin starting at worker 0. After `skip_batches`
        batches the next one is due from worker `skip_batches % W`, so worker w of a resumed iterator plays
        the role of worker (w + skip_batches) % W of the original one.
        """
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        role = (worker + self.skip_batches) % num_workers
        return rank * num_workers + role, world_size * num_workers, role, num_workers

    def _samples(self, slot: int, num_slots: int, skipped: Counter[str]) -> Iterator[dict[str, Any]]:
        def count_bad_shard(exn: Exception) -> bool:
            skipped["bad_shard"] += 1
            return True  # go on with the next shard

        if self.train:
            urls: Iterator[str] = shard_stream(self.urls, self.seed, self.epoch, slot, num_slots)
        else:
            urls = iter(self.urls[slot::num_slots])
        samples = wds.tarfile_to_samples(handler=count_bad_shard)({"url": u} for u in urls)
        if self.tag_factors is not None:
            draws = random.Random(f"resample-{self.seed}-{self.epoch}-{slot}")
            samples = resample(samples, self.vocab, self.tag_factors, draws)
        if self.train:
            rng = random.Random(f"shuffle-{self.seed}-{self.epoch}-{slot}")
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        return samples

    def _decode(self, sample: dict[str, Any], rng: random.Random, skipped: Counter[str]):
        """(HWC uint8 crop, tag ids) of one sample, or None after counting why it was skipped."""
        tag_ids = sample.get(TAG_IDS_KEY)  # already encoded by the resampling stage
        if tag_ids is None:
            raw_tags = raw_sample_tags(sample)  # the json sidecar's tags, or those of an img2dataset caption
            if raw_tags is None:
                skipped["bad_json"] += 1
                return None
            tag_ids = self.vocab.encode(normalize_tags(raw_tags))
        if not tag_ids:
            skipped["no_known_tag"] += 1
            return None
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None:
            skipped["missing_image"] += 1
            return None
        try:
            image = decode_rgb(data, 2 * self.image_size)
        except (OSError, ValueError, SyntaxError):
            skipped["bad_image"] += 1
            return None
        if self.train:
            return random_resized_crop(image, self.image_size, rng, self.min_scale), tag_ids
        return center_crop(image, self.image_size), tag_ids

    def __iter__(self) -> Iterator[Batch]:
        slot, num_slots, role, num_workers = self._slot()
        # this role produces batches role, role + W, ... of the epoch; skip the ones already consumed
        to_skip = max(0, (self.skip_batches - role + num_workers - 1) // num_workers)
        rng = random.Random(f"augment-{self.seed}-{self.epoch}-{slot}")
        skipped: Counter[str] = Counter()
        images: list[np.ndarray] = []
        tag_ids: list[list[int]] = []
        keys: list[str] = []
        for sample in self._samples(slot, num_slots, skipped):
            decoded = self._decode(sample, rng, skipped)
            if decoded is None:
                continue
            images.append(decoded[0])
            tag_ids.append(decoded[1])
            keys.append(sample["__key__"])
            if len(images) == self.batch_size:
                batch = collate(images, tag_ids, keys, skipped)
                images, tag_ids, keys, skipped = [], [], [], Counter()
                if to_skip:
                    to_skip -= 1
                    continue
                yield batch
        if images:
            yield collate(images, tag_ids, keys, skipped)
        elif skipped and not self.train:
            yield Batch(torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8),
                        torch.empty(0, 1, dtype=torch.int64), [], skipped)


def make_loader(stream: TaggedImageStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ready-made batches: workers hand over uint8 tensors, the main process only moves them."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
    )
