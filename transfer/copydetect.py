"""A copy-detection descriptor trained by webly on the pretraining corpus itself, in the spirit of SSCD.

Pixel descriptors and pretrained trunks are not invariant to the heavy edits copies go through (half the image
cropped away, text on top, a mirror, strong recolouring). SSCD (Pizzi et al. 2022) learns that invariance
directly: two strongly edited views of one corpus image are pulled together and every other image in the batch,
new renders of the same world included, is pushed away (InfoNCE), with a differential-entropy (KoLeo) term that
spreads the descriptors over the sphere so that unrelated images stay far apart. Here a small convnet is trained
on CPU on a sample of the corpus (seconds to a couple of minutes); the edits are those of `transfer/edits.py`,
so the training views come from the same families as the calibration copies but with other random draws.

The weights are saved with a fingerprint of the corpus and of the settings; a later run with both unchanged
loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pretrain.atomic import atomic_write
from pretrain.images import decode_rgb, to_float
from transfer.config import CopyNetConfig
from transfer.edits import apply_edit

FORMAT = "webly-copydetect/1"


def gem(features: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over H x W (Radenović et al.): p = 1 is average, large p tends to max."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class CopyNet(nn.Module):
    """4 strided conv stages (BN, ReLU), GeM pooling, a linear projection, L2 normalisation."""

    def __init__(self, width: int, dim: int, gem_p: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage in range(4):
            out = width * 2**stage
            layers += [nn.Conv2d(channels, out, 3, stride=2 if stage else 1, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Conv2d(out, out, 3, stride=2 if stage < 3 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.gem_p = gem_p
        self.project = nn.Linear(channels, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(gem(self.body(images), self.gem_p)), dim=1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over 2B unit vectors: row i of `a` matches row i of `b`, all others are negatives."""
    both = torch.cat([a, b])
    logits = both @ both.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def koleo(vectors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (negated): small when every vector's nearest neighbour is far."""
    with torch.no_grad():
        sims = vectors @ vectors.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    distances = (vectors - vectors[nearest]).norm(dim=1)
    return -torch.log(distances + eps).mean()


def _edited_view(image: np.ndarray, rng: np.random.Generator, cfg: CopyNetConfig) -> np.ndarray:
    steps = rng.choice(cfg.edits, size=int(rng.integers(1, cfg.max_edits + 1)), replace=False)
    from PIL import Image  # local: only the training loop needs PIL images

    out = apply_edit(Image.fromarray(image), "+".join(str(s) for s in steps), rng,
                     size=(cfg.input_size, cfg.input_size))
    return np.asarray(out.image, dtype=np.uint8)


def fingerprint(cfg: CopyNetConfig, corpus: str) -> str:
    return hashlib.sha256(json.dumps({"cfg": asdict(cfg), "corpus": corpus}, sort_keys=True).encode()).hexdigest()


def sample_corpus(items: Any, count: int, side: int) -> np.ndarray:
    """The first `count` decodable images of an iterator of (key, encoded bytes), at side x side, as uint8."""
    from PIL import Image

    images = []
    for _, data in items:
        try:
            images.append(np.asarray(decode_rgb(data, side).resize((side, side), Image.BILINEAR), dtype=np.uint8))
        except (OSError, ValueError, SyntaxError):
            continue
        if len(images) >= count:
            break
    if len(images) < 2:
        raise ValueError(f"copy-detection training needs >= 2 decodable corpus images, found {len(images)}")
    return np.stack(images)


def train_copynet(images: np.ndarray, cfg: CopyNetConfig, progress: bool = False) -> tuple[CopyNet, dict[str, Any]]:
    """Train a CopyNet on N x H x W x 3 uint8 `images` (H, W >= input_size); returns it (eval mode) and a log."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = CopyNet(cfg.width, cfg.dim, cfg.gem_p)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    batch = min(cfg.batch_size, len(images))
    started, losses = time.perf_counter(), []
    net.train()
    for step in range(cfg.steps):
        pick = rng.choice(len(images), size=batch, replace=False)
        views = [[_edited_view(images[i], rng, cfg) for i in pick] for _ in range(2)]
        a, b = (net(to_float(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2))) for v in views)
        loss = info_nce(a, b, cfg.temperature) + cfg.entropy_weight * koleo(torch.cat([a, b]))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step % 50 == 0 or step == cfg.steps - 1):
            print(f"[copydetect] step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.3f}", flush=True)
    net.eval()
    seconds = time.perf_counter() - started
    return net, {"seconds": round(seconds, 2), "first_loss": round(losses[0], 4),
                 "last_loss": round(float(np.mean(losses[-20:])), 4), "images": len(images)}


def load_or_train(path: str | Path, cfg: CopyNetConfig, corpus: str, items: Any,
                  progress: bool = False) -> tuple[CopyNet, dict[str, Any]]:
    """The net saved at `path` when it was trained with `cfg` on corpus fingerprint `corpus`, else a new one
    trained on `items` ((key, bytes) of corpus images) and saved there atomically."""
    path, key = Path(path), fingerprint(cfg, corpus)
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == FORMAT and state.get("fingerprint") == key:
                net = CopyNet(cfg.width, cfg.dim, cfg.gem_p)
                net.load_state_dict(state["model"])
                return net.eval(), {**json.loads(state["log"]), "cache": "hit"}
        except (OSError, RuntimeError, KeyError, ValueError):
            pass  # unreadable or another format: train again
    side = max(cfg.input_size, 64)
    images = sample_corpus(items, cfg.train_images, side)
    net, log = train_copynet(images, cfg, progress)
    state = {"format": FORMAT, "fingerprint": key, "model": net.state_dict(), "log": json.dumps(log)}
    atomic_write(path, lambda handle: torch.save(state, handle))
    return net, {**log, "cache": "miss"}


def describe_batch(net: CopyNet, views: np.ndarray) -> np.ndarray:
    """B x s x s x 3 views (uint8 or float 0..255) -> B x dim float32 unit vectors."""
    batch = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        return net(to_float(batch)).numpy().astype(np.float32)


def parameters(net: CopyNet) -> int:
    return sum(p.numel() for p in net.parameters())
