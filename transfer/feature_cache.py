"""A frozen trunk computes each distinct input image once: its stage outputs are kept and looked up by content.

In `frozen` mode the trunk's weights and batch-norm statistics are fixed, so an image's features never change,
while a short dense run passes over a few hundred training images (and their flips) many times, and the
tasks of one transfer job (detection with several seeds, instance, pose, semantic) see the same images again.
The trunk forward is ~20% of a dense step on the demo's CPU; here it is paid once per distinct image.

The store is process-wide and keyed by the trunk's weights, so the tasks a job runs in turn on one trunk share
it, and a different trunk (another run, or a random init with another seed) starts it afresh. It holds one
trunk's features, up to a memory budget; images beyond it are computed as usual.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of named tensors' names, shapes, dtypes and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in tensors.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureStore:
    """Stage outputs per (trunk, input image) for one trunk at a time, up to `room` bytes."""

    def __init__(self) -> None:
        self.trunk = ""
        self.features: dict[str, dict[str, torch.Tensor]] = {}
        self.room = 0
        self.hits = self.misses = 0

    def use(self, trunk: str, budget_bytes: int) -> None:
        if trunk != self.trunk:
            self.trunk, self.features, self.room = trunk, {}, budget_bytes
            self.hits = self.misses = 0


STORE = FeatureStore()


class CachedTrunk(nn.Module):
    """Wraps a frozen trunk (a module returning a dict of stage outputs, e.g. an `IntermediateLayerGetter`)."""

    def __init__(self, body: nn.Module, budget_mb: float, store: FeatureStore = STORE) -> None:
        super().__init__()
        if any(p.requires_grad for p in body.parameters()):
            raise ValueError("only a frozen trunk's features can be cached: its parameters require grad")
        self.body, self.store, self.budget = body, store, int(budget_mb * 2**20)
        self.trunk = fingerprint(body.state_dict())

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        store = self.store
        store.use(self.trunk, self.budget)
        keys = [fingerprint({"image": image}) for image in images]
        missing: dict[str, int] = {}  # each image not stored yet -> its first row in this batch
        for row, key in enumerate(keys):
            if key not in store.features:
                missing.setdefault(key, row)
        fresh: dict[str, dict[str, torch.Tensor]] = {}
        if missing:
            # plain tensors even under inference_mode: a test image's features may later meet autograd
            with torch.inference_mode(False), torch.no_grad():
                computed = self.body(images[list(missing.values())].clone())
            for row, key in enumerate(missing):
                fresh[key] = {name: out[row].clone() for name, out in computed.items()}
        for key, features in fresh.items():
            size = sum(t.numel() * t.element_size() for t in features.values())
            if size <= store.room:
                store.room -= size
                store.features[key] = features
        store.misses += len(missing)
        store.hits += len(keys) - len(missing)
        rows = [fresh[key] if key in fresh else store.features[key] for key in keys]
        return OrderedDict((name, torch.stack([row[name] for row in rows])) for name in rows[0])
