"""Held-out evaluation of a tagging model: precision@1 and mAP of its tag scores on the held-out shards."""

from __future__ import annotations

import numpy as np
import torch

from pretrain.heads import multi_hot
from pretrain.images import to_float
from pretrain.loader import TaggedImageStream, make_loader
from pretrain.metrics import mean_average_precision, precision_at_1
from pretrain.vocab import Vocabulary


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    urls: list[str],
    vocab: Vocabulary,
    image_size: int,
    batch_size: int = 128,
    max_batches: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Score every held-out image once (central crops) and compare with its observed tags."""
    stream = TaggedImageStream(urls, vocab, batch_size, image_size, train=False)
    was_training = model.training
    model.eval()
    scores, targets = [], []
    for i, batch in enumerate(make_loader(stream, num_workers=0)):
        if max_batches and i >= max_batches:
            break
        if len(batch.keys) == 0:
            continue
        logits = model(to_float(batch.images.to(device)))
        scores.append(logits.float().cpu().numpy())
        targets.append(multi_hot(batch.tag_ids, len(vocab)).numpy().astype(bool))
    model.train(was_training)
    if not scores:
        raise ValueError(f"no usable held-out sample in {len(urls)} shard(s)")
    all_scores, all_targets = np.concatenate(scores), np.concatenate(targets)
    return {
        "eval/precision_at_1": precision_at_1(all_scores, all_targets),
        "eval/mAP": mean_average_precision(all_scores, all_targets),
        "eval/images": int(len(all_scores)),
    }
