"""DistributedDataParallel for a model whose head has sparse embeddings (the sampled-softmax head).

DDP would reduce sparse gradients through the backend's sparse all-reduce. Gloo's is unreliable: two ranks in CI
died with "malloc(): unaligned tcache chunk detected" inside it (compare pytorch/pytorch#87497, #111422, which
fail when ranks touch different numbers of rows), and it is a code path few people run. So the sparse
parameters are hidden from DDP, and after the last backward of a step their gradients are averaged here with
plain dense collectives: every rank's touched rows (ids and values, padded to the largest count) are
all-gathered and summed. The cost per step is world size x touched rows x width, whatever the vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrain.optim import sparse_parameters


def _all_gather_padded(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's `tensor` (counts[r] rows on rank r), concatenated in rank order."""
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:n] for rows, n in zip(gathered, counts, strict=True)])


def average_sparse_grad(param: nn.Parameter) -> None:
    """Replace param.grad (sparse COO over rows) by its mean over all ranks, as DDP does for dense gradients."""
    world_size = dist.get_world_size()
    if param.grad is None:  # a rank that touched no row still takes part in the collectives
        grad = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.int64, device=param.device),
                                       param.new_empty((0, *param.shape[1:])), param.shape)
    else:
        grad = param.grad.coalesce()
    rows, values = grad.indices()[0], grad.values().float()  # bf16 tables: gathered and averaged in fp32
    count = torch.tensor([rows.numel()], device=param.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts_list = [int(c.item()) for c in counts]
    all_rows = _all_gather_padded(rows, counts_list)
    all_values = _all_gather_padded(values, counts_list) / world_size
    param.grad = torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values, param.shape).coalesce().to(param.dtype)


def wrap_ddp(model: nn.Module, device: torch.device) -> tuple[DistributedDataParallel, Callable[[], None] | None]:
    """The DDP wrapper of `model`, and the hook that averages its sparse gradients (None if it has none); call
    the hook after the step's last backward, before the optimisers step."""
    sparse = sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    ignored = [name for name, param in model.named_parameters() if id(param) in sparse_ids]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if not sparse:
        return ddp, None
    for param in sparse:  # DDP broadcasts rank 0's weights at wrap time, but not the ignored ones
        dist.broadcast(param.data, src=0)

    def average() -> None:
        for param in sparse:
            average_sparse_grad(param)

    return ddp, average
