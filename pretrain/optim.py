"""Optimiser and learning-rate schedule: SGD with momentum or AdamW, linear warm-up then cosine decay.

Sparse embeddings (the sampled-softmax head) get an optimiser of their own: plain SGD on the rows a step
touched, with no state, so neither memory nor update cost grows with the number of tags. Both follow the same
schedule. With `optim.reference_batch` the base lr scales linearly with the global batch (Goyal et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.config import OptimConfig
from pretrain.sparse_sgd import SparseRowSGD


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights of embeddings with sparse gradients: updated row by row, never by a dense optimiser."""
    return [p for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse for p in m.parameters()
            if p.requires_grad]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-d parameters), as in Goyal et al. 2017."""
    sparse = {id(p) for p in sparse_parameters(model)}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad and id(param) not in sparse:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    """The linear scaling rule: lr x global_batch / reference_batch; reference_batch 0 leaves lr alone."""
    return lr * global_batch / reference_batch if reference_batch > 0 else lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int = 0) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    lr = scaled_lr(cfg.lr, global_batch, cfg.reference_batch)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]))
    raise ValueError(f"optim.name={cfg.name!r}: choose sgd or adamw")


def build_sparse_optimizer(model: nn.Module, cfg: OptimConfig, sparse_lr: float = 0.0,
                           global_batch: int = 0) -> torch.optim.Optimizer | None:
    """Plain SGD on the touched rows of the sparse embeddings (pretrain.sparse_sgd: no momentum, no weight decay,
    so no per-row state; bf16 tables rounded stochastically); None if there are none.

    `sparse_lr` 0 takes optim.lr / (1 - optim.momentum), the step size SGD with momentum settles to.
    """
    params = sparse_parameters(model)
    if not params:
        return None
    lr = sparse_lr or cfg.lr / max(1e-8, 1.0 - cfg.momentum)
    return SparseRowSGD(params, lr=scaled_lr(lr, global_batch, cfg.reference_batch))


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at `step`: linear from 1/warmup to 1, then a cosine down to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
