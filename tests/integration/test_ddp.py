"""DDP on the CPU (gloo, 2 processes): the same steps as one process at twice the batch, disjoint data per rank,
and a run killed with SIGKILL that resumes to the weights of an uninterrupted run.

Processes are real: spawned with torch.multiprocessing, joined through env:// like torchrun's workers.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.checkpoint import list_checkpoints
from pretrain.config import HeadConfig, ModelConfig, OptimConfig
from pretrain.ddp import average_sparse_grad, wrap_ddp
from pretrain.loader import Batch, TaggedImageStream
from pretrain.models import build_model
from pretrain.optim import build_optimizer, build_scheduler, build_sparse_optimizer
from pretrain.shards import Dataset
from pretrain.step import TrainStep
from pretrain.vocab import Vocabulary
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir

NUM_TAGS, BATCH, STEPS = 30, 8, 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_env(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))


def _fixed_batches(accumulate: int, ranks: int, rank: int) -> list[list[Batch]]:
    """STEPS steps of one fixed global batch of BATCH images (to be memorised), cut into this rank's micro-batches."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=generator)
    tag_ids = torch.randint(0, NUM_TAGS, (BATCH, 3), generator=generator)
    tag_ids[::2, 2] = -1  # some images have fewer tags
    per_rank = BATCH // ranks
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    micro = per_rank // accumulate
    batches = [Batch(images[mine][i * micro:(i + 1) * micro], tag_ids[mine][i * micro:(i + 1) * micro],
                     keys=[""] * micro) for i in range(accumulate)]
    return [batches] * STEPS


def _train_fixed(head: str, rank: int, world_size: int, accumulate: int) -> tuple[list[float], dict]:
    """STEPS SGD steps of a tiny model on fixed data; BN frozen (eval mode) so that the batch split is exact."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(ModelConfig("t", 10, 8), HeadConfig(head, num_sampled=12), NUM_TAGS, seed=3)
    model.eval()
    optim_cfg = OptimConfig(lr=0.05, warmup_steps=2)
    optimizers = [build_optimizer(model, optim_cfg)]
    sparse = build_sparse_optimizer(model, optim_cfg)
    optimizers += [sparse] if sparse is not None else []
    schedulers = [build_scheduler(opt, optim_cfg, STEPS) for opt in optimizers]
    ddp, average_sparse_grads = wrap_ddp(model, torch.device("cpu")) if world_size > 1 else (None, None)
    step = TrainStep(ddp or model, optimizers, schedulers, torch.device("cpu"), sync_context=ddp,
                     on_step_start=getattr(model.head, "draw_negatives", None), after_backward=average_sparse_grads)
    losses = []
    for micro in _fixed_batches(accumulate, world_size, rank):
        loss = step(micro)
        if ddp is not None:
            dist.all_reduce(loss)
            loss /= world_size
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _fixed_worker(rank: int, world_size: int, port: int, head: str, accumulate: int, out: str) -> None:
    _torchrun_env(rank, world_size, port)
    dist.init_process_group("gloo")
    losses, weights = _train_fixed(head, rank, world_size, accumulate)
    if rank == 0:
        torch.save({"losses": losses, "weights": weights}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("head", ["softmax", "sampled_softmax"])
def test_two_ranks_step_like_one_process_at_twice_the_batch(tmp_path: Path, head: str) -> None:
    # tolerance: float32 summation order differs (two half-batch means averaged vs one mean); 1e-5 relative
    reference_losses, reference = _train_fixed(head, 0, 1, accumulate=1)
    accumulated_losses, accumulated = _train_fixed(head, 0, 1, accumulate=2)
    out = tmp_path / "rank0.pt"
    mp.start_processes(_fixed_worker, args=(2, _free_port(), head, 2, str(out)), nprocs=2, start_method="spawn")
    ddp = torch.load(out, weights_only=True)

    assert reference_losses[-1] < reference_losses[0]  # it trains at all
    assert ddp["losses"] == pytest.approx(reference_losses, rel=1e-5)  # 2 ranks x 2 micro-batches of 2 images
    assert accumulated_losses == pytest.approx(reference_losses, rel=1e-5)  # 1 process, 2 micro-batches of 4
    for key, tensor in reference.items():
        torch.testing.assert_close(ddp["weights"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(accumulated[key], tensor, rtol=1e-4, atol=1e-5, msg=key)


def _sparse_worker(rank: int, world_size: int, port: int, out: str) -> None:
    _torchrun_env(rank, world_size, port)
    dist.init_process_group("gloo")
    table = torch.nn.Embedding(6, 2, sparse=True)
    if rank == 0:  # rank 0 touches rows 1 (twice) and 4; rank 1 touches nothing
        table(torch.tensor([1, 4, 1])).sum().backward()
    average_sparse_grad(table.weight)
    torch.save(table.weight.grad.to_dense(), f"{out}.{rank}")
    dist.destroy_process_group()


def test_sparse_gradients_average_when_ranks_touch_different_rows(tmp_path: Path) -> None:
    # uneven row counts (one rank none at all) are what gloo's own sparse all-reduce trips on
    out = str(tmp_path / "grad")
    mp.start_processes(_sparse_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    expected = torch.zeros(6, 2)
    expected[1], expected[4] = 1.0, 0.5  # (2 + 0) / 2 and (1 + 0) / 2
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(f"{out}.{rank}", weights_only=True), expected)


def _keys_worker(rank: int, world_size: int, port: int, root: str, out: str) -> None:
    _torchrun_env(rank, world_size, port)
    dist.init_process_group("gloo")
    dataset = Dataset.open(root)
    vocab = Vocabulary.load(dataset.root / "vocab.tsv")
    # batches of 1 and no shuffle buffer: each batch's skip count covers the samples just before its key
    stream = TaggedImageStream(dataset.train_urls(0), vocab, 1, 32, train=True, seed=5, shuffle_buffer=1)
    per_rank = dataset.train_samples(0) // world_size  # one pass over this rank's half of the shards
    keys: list[str] = []
    seen = 0
    for batch in stream:
        seen += sum(batch.skipped.values())  # samples without a vocabulary tag
        if seen >= per_rank:
            break
        keys += batch.keys
        seen += 1
    torch.save({"keys": keys, "skipped": seen - len(keys)}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ranks_read_disjoint_samples(tmp_path: Path, synth_root: Path) -> None:
    out = str(tmp_path / "keys")
    mp.start_processes(_keys_worker, args=(2, _free_port(), str(synth_root), out), nprocs=2, start_method="spawn")
    read = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    rank0, rank1 = (set(r["keys"]) for r in read)
    assert len(rank0) > 100 and len(rank1) > 100
    assert not rank0 & rank1
    # together, one pass is the whole corpus (less the samples skipped for having no vocabulary tag)
    assert len(rank0 | rank1) + read[0]["skipped"] + read[1]["skipped"] == Dataset.open(synth_root).train_samples(0)


def _pretrain_worker(rank: int, world_size: int, port: int, cfg) -> None:
    _torchrun_env(rank, world_size, port)
    pretrain_job(cfg)


def _launch(cfg, world_size: int = 2) -> list[mp.Process]:
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_pretrain_worker, args=(r, world_size, port, cfg)) for r in range(world_size)]
    for proc in procs:
        proc.start()
    return procs


def _join(procs: list[mp.Process], timeout_s: float = 300) -> None:
    for proc in procs:
        proc.join(timeout_s)
        assert proc.exitcode == 0, f"rank exited with {proc.exitcode}"


@pytest.mark.parametrize("head", ["sampled_softmax"])
def test_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path: Path, synth_root: Path,
                                                                     head: str) -> None:
    common = ("train.steps=24", "train.steps_per_epoch=9", "train.checkpoint_every=4", "train.batch_size=8",
              "data.image_size=32", f"head={head}", "head.num_sampled=16", "train.keep_last=0")
    straight = tiny_config(tmp_path / "a", synth_root, *common)
    killed = tiny_config(tmp_path / "b", synth_root, *common)
    _join(_launch(straight))

    ckpt_dir = pretrain_run_dir(killed) / "checkpoints"
    procs = _launch(killed)
    deadline = time.monotonic() + 300
    while not any(p.name >= "step_00000008.pt" for p in list_checkpoints(ckpt_dir)):
        assert time.monotonic() < deadline and all(p.is_alive() for p in procs), "no checkpoint at step 8"
        time.sleep(0.05)
    for proc in procs:  # no chance to clean up, as with a node failure
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.join()
    last = list_checkpoints(ckpt_dir)[-1]
    assert last.name < "step_00000024.pt"  # it really was stopped mid-way

    _join(_launch(killed))
    final_a = torch.load(pretrain_run_dir(straight) / "checkpoints" / "step_00000024.pt", weights_only=True)
    final_b = torch.load(ckpt_dir / "step_00000024.pt", weights_only=True)
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key
    assert final_a["ranks"] == final_b["ranks"] and len(final_a["ranks"]) == 2
    assert torch.equal(final_a["sampler"]["generator"], final_b["sampler"]["generator"])
