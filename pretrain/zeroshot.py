"""Zero-shot tags: which tags are held out of training, and how well the embedding head predicts them anyway.

Held-out tags are never positives nor negatives in training (pretrain.embedding_head); their vectors come from
the tag lists like every other (word2vec sees text, not the image model's targets), so the head can only reach
them through the vector space, as DeViSE reaches unseen ImageNet classes. Evaluation ranks the held-out tags for
every held-out image that carries at least one of them and reports precision, recall and F1 at k (F1 of the
mean precision and mean recall), with the chance level of a random ranking beside each: precision |T|/H,
recall k/H for an image with |T| of the H held-out tags.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import HeadConfig
from pretrain.heads import multi_hot
from pretrain.images import to_float
from pretrain.loader import TaggedImageStream, make_loader
from pretrain.tags import normalize_tag
from pretrain.vocab import OOV_TAG, Vocabulary

POOLS = ("auto", "concepts", "vocab")
SELECTION_SEED = "zeroshot"  # the held-out set depends on the corpus only: every run of a grid holds out the same


def heldout_tags(cfg: HeadConfig, vocab: Vocabulary, manifest: dict[str, Any], root: str | Path = "") -> list[int]:
    """Vocabulary ids of the tags `cfg` holds out (zeroshot_tags, or zeroshot_count drawn from zeroshot_pool)."""
    if cfg.zeroshot_tags:
        ids = []
        for tag in cfg.zeroshot_tags:
            index = vocab.index.get(normalize_tag(tag))
            if index is None:
                raise ValueError(f"head.zeroshot_tags: {tag!r} is not in the vocabulary ({Path(root) / 'vocab.tsv'})")
            ids.append(index)
        return sorted(set(ids))
    if cfg.zeroshot_count <= 0:
        return []
    rng = random.Random(f"{SELECTION_SEED}-{len(vocab)}")
    concepts = manifest.get("synth", {}).get("concepts")
    pool = cfg.zeroshot_pool if cfg.zeroshot_pool != "auto" else "concepts" if concepts else "vocab"
    if pool == "concepts":
        if not concepts:
            raise ValueError(f"head.zeroshot_pool=concepts needs a synthweb corpus ({Path(root) / 'manifest.json'} "
                             "lists no synth.concepts); use head.zeroshot_pool=vocab or head.zeroshot_tags")
        if cfg.zeroshot_count > len(concepts):
            raise ValueError(f"head.zeroshot_count={cfg.zeroshot_count}: the corpus has {len(concepts)} concepts")
        picked = rng.sample(concepts, cfg.zeroshot_count)
        words = [w for c in picked for w in (c["name"], *c["synonyms"])]  # the whole concept: name and synonyms
        return sorted({vocab.index[w] for w in words if w in vocab.index})
    if pool == "vocab":
        candidates = [i for i, tag in enumerate(vocab.tags) if tag != OOV_TAG]
        if cfg.zeroshot_count >= len(candidates):
            raise ValueError(f"head.zeroshot_count={cfg.zeroshot_count}: the vocabulary has {len(candidates)} tags")
        return sorted(rng.sample(candidates, cfg.zeroshot_count))
    raise ValueError(f"head.zeroshot_pool={cfg.zeroshot_pool!r}: choose one of {', '.join(POOLS)}")


def precision_recall_f1(scores: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """P/R/F1 at k of N x H scores against N x H 0/1 targets (rows without a target left out), and chance."""
    rows = targets.any(axis=1)
    scores, targets = scores[rows], targets[rows].astype(bool)
    if not len(scores):
        return {"images": 0}
    heldout = scores.shape[1]
    k = min(k, heldout)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(targets, top, axis=1).sum(axis=1)
    true = targets.sum(axis=1)
    precision, recall = float(np.mean(hits / k)), float(np.mean(hits / true))
    chance_p, chance_r = float(np.mean(true) / heldout), k / heldout

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    return {"precision": precision, "recall": recall, "f1": f1(precision, recall), "chance_precision": chance_p,
            "chance_recall": chance_r, "chance_f1": f1(chance_p, chance_r), "images": int(len(scores))}


@torch.no_grad()
def evaluate_zeroshot(model: torch.nn.Module, urls: list[str], vocab: Vocabulary, heldout: list[int],
                      image_size: int, batch_size: int = 128, device: torch.device | str = "cpu",
                      k: int = 5) -> dict[str, float]:
    """`zeroshot/*` metrics of a tagging model on the held-out shards: the held-out tags ranked among themselves."""
    stream = TaggedImageStream(urls, vocab, batch_size, image_size, train=False)
    was_training = model.training
    model.eval()
    columns = torch.as_tensor(heldout, dtype=torch.int64)
    scores, targets = [], []
    for batch in make_loader(stream, num_workers=0):
        if len(batch.keys):
            scores.append(model(to_float(batch.images.to(device))).float().cpu()[:, columns].numpy())
            targets.append(multi_hot(batch.tag_ids, len(vocab))[:, columns].numpy())
    model.train(was_training)
    if not scores:
        return {"zeroshot/tags": len(heldout), "zeroshot/images": 0}
    metrics = precision_recall_f1(np.concatenate(scores), np.concatenate(targets), k)
    return {"zeroshot/tags": len(heldout), "zeroshot/k": k,
            **{f"zeroshot/{name}_at_{k}" if name != "images" else "zeroshot/images": value
               for name, value in metrics.items()}}
