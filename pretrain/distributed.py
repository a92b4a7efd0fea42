"""Joining a DDP process group, wherever the processes came from.

- torchrun (or any launcher that exports RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK): used as is;
- submitit tasks (`launcher.tasks_per_node`, `launcher.nodes` > 1): submitit's TorchDistributedEnvironment
  derives those variables from the Slurm / local job (master = first node, port from the job id);
- a caller that already initialised torch.distributed (tests with torch.multiprocessing): its group is used;
- otherwise a single process, no group.

The loader slices the shards by `torch.distributed` rank (pretrain.loader), so every rank reads its own data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the group, so it also tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _submitit_environment() -> bool:
    """Export torchrun's variables from submitit's job environment when running as a multi-task submitit job."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return False
    try:
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks <= 1:
            return False
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except RuntimeError:  # not inside a submitit job after all
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"train.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_distributed(backend: str = "auto") -> ProcessInfo:
    """Join (or find) the process group of this run; a single process when no launcher set one up."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return ProcessInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not _submitit_environment():
        return ProcessInfo()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch with torchrun or submitit")
    chosen = resolve_backend(backend)
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(chosen, rank=rank, world_size=world_size)
    return ProcessInfo(rank, world_size, local_rank, owns_group=True)


def close_distributed(info: ProcessInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: ProcessInfo) -> torch.device:
    """One GPU per process (by local rank) when there are GPUs, else the CPU."""
    return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def all_gather_objects(info: ProcessInfo, obj: object) -> list[object]:
    """`obj` from every rank, in rank order (just [obj] in a single process)."""
    if not info.distributed:
        return [obj]
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(info: ProcessInfo, value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks (for logging the global loss)."""
    if not info.distributed:
        return float(value.item())
    total = value.detach().float().clone()
    dist.all_reduce(total)
    return float(total.item()) / info.world_size
