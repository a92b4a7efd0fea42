"""One optimiser step: micro-batches forward and backward (DDP-synchronised on the last), then every optimiser.

Gradient accumulation: the loss of each of A micro-batches is divided by A and DDP all-reduces only on the
last one (`no_sync` before), so A micro-batches of B on P processes step like one batch of A x B x P.
Mixed precision: bf16 autocast (no loss scaling needed, unlike fp16); the heads compute their losses in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from pretrain.images import to_float

if TYPE_CHECKING:  # the loader pulls in webdataset; a step (and bench/gpu_step.py) needs only torch
    from pretrain.loader import Batch

PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16` (any device) and for `auto` on a GPU; None: full fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class TrainStep:
    """Runs the step of a (possibly DDP-wrapped, possibly compiled) model whose forward returns the loss."""

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler], device: torch.device,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                 sync_context: nn.Module | None = None, on_step_start: Callable[[], None] | None = None,
                 after_backward: Callable[[], None] | None = None) -> None:
        self.model = model  # what the forward runs through (DDP wrapper, compiled or not)
        self.optimizers, self.schedulers = list(optimizers), list(schedulers)
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        self.sync_context = sync_context  # the DDP module whose no_sync() skips the all-reduce
        self.on_step_start = on_step_start  # e.g. the sampled head's draw of this step's negatives
        self.after_backward = after_backward  # e.g. averaging the sparse gradients DDP does not see

    def images(self, batch: Batch) -> torch.Tensor:
        images = to_float(batch.images.to(self.device, non_blocking=True))
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def __call__(self, batches: Sequence[Batch]) -> torch.Tensor:
        """One optimiser step over `batches` (the micro-batches); returns their mean loss, detached."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.on_step_start is not None:
            self.on_step_start()
        total = torch.zeros((), device=self.device)
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            skip_sync = self.sync_context.no_sync() if self.sync_context is not None and not last else nullcontext()
            with skip_sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                    enabled=self.amp_dtype is not None):
                    loss = self.model(self.images(batch), batch.tag_ids.to(self.device, non_blocking=True))
                (loss / len(batches)).backward()
            total += loss.detach().float()
        if self.after_backward is not None:
            self.after_backward()
        for optimizer in self.optimizers:
            optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()
        return total / len(batches)
