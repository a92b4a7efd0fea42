"""Row-wise SGD for sparse tables: stochastic rounding of bf16 rows, exact fp32 updates, resumable noise, and a
bf16 sampled head that learns as the fp32 one does."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import HeadConfig
from pretrain.heads import build_head
from pretrain.sparse_sgd import SparseRowSGD, stochastic_round_bf16


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour() -> None:
    value = 1.0 + 2**-10  # between the bf16 neighbours 1 and 1 + 2^-7, an eighth of the way up
    for sign in (1.0, -1.0):
        rounded = stochastic_round_bf16(torch.full((200_000,), sign * value), torch.Generator().manual_seed(0))
        assert rounded.dtype == torch.bfloat16
        assert set(rounded.float().abs().unique().tolist()) == {1.0, 1.0 + 2**-7}
        assert rounded.float().mean().item() == pytest.approx(sign * value, abs=3e-5)  # 8 standard errors
    exact = torch.tensor([0.5, -2.0, 3.0])  # representable values stay put
    assert torch.equal(stochastic_round_bf16(exact, torch.Generator()).float(), exact)


def _small_steps(dtype: torch.dtype, steps: int = 1000) -> torch.Tensor:
    table = torch.nn.Embedding(4, 64, sparse=True, dtype=dtype)
    torch.nn.init.ones_(table.weight)
    optimizer = SparseRowSGD(table.parameters(), lr=1e-4)
    for _ in range(steps):  # each step adds 1e-4 to row 2: a tenth of bf16's spacing at 1.0
        optimizer.zero_grad()
        (-table(torch.tensor([2])).sum()).backward()
        optimizer.step()
    return table.weight.detach().float()


def test_small_updates_accumulate_in_a_bf16_table() -> None:
    fp32, bf16 = _small_steps(torch.float32), _small_steps(torch.bfloat16)
    assert fp32[2].tolist() == pytest.approx([1.1] * 64, abs=1e-4)  # fp32 summation error
    # round-to-nearest would leave every weight at 1.0; stochastic rounding's error after 1000 steps has a
    # standard deviation of ~0.028 per weight, ~0.0035 for the mean of 64
    assert bf16[2].mean().item() == pytest.approx(1.1, abs=0.015)
    assert bf16[2].min().item() > 1.0
    assert torch.equal(bf16[[0, 1, 3]], torch.ones(3, 64))  # untouched rows unchanged


def test_rounding_noise_repeats_after_a_resume() -> None:
    def run(stop_at: int | None) -> torch.Tensor:
        torch.manual_seed(0)
        table = torch.nn.Embedding(6, 3, sparse=True, dtype=torch.bfloat16)
        optimizer = SparseRowSGD(table.parameters(), lr=0.01, seed=4)
        for step in range(8):
            if step == stop_at:  # a new optimiser from the saved state, as a resumed run builds one
                saved = optimizer.state_dict()
                optimizer = SparseRowSGD(table.parameters(), lr=0.01, seed=4)
                optimizer.load_state_dict(saved)
            optimizer.zero_grad()
            table(torch.tensor([step % 6, 5])).float().pow(2).sum().backward()
            optimizer.step()
        return table.weight.detach().clone()

    assert torch.equal(run(None), run(3))
    assert not torch.equal(run(None).float(), torch.zeros(6, 3))


def _trained_accuracy(table_dtype: str) -> float:
    """A sampled head alone on fixed features whose tag is a linear function of them."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(512, 16, generator=generator)
    tags = (features @ torch.randn(16, 40, generator=generator)).argmax(dim=1, keepdim=True)
    head = build_head(HeadConfig("sampled_softmax", num_sampled=16, proposal="uniform", table_dtype=table_dtype),
                      16, 40, seed=1)
    optimizer = SparseRowSGD(head.parameters(), lr=0.5)
    for step in range(300):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        optimizer.zero_grad()
        head.training_loss(features[batch], tags[batch]).backward()
        optimizer.step()
    return (head.topk(features)[1] == tags).float().mean().item()


def test_a_bf16_table_learns_like_an_fp32_one() -> None:
    fp32, bf16 = _trained_accuracy("float32"), _trained_accuracy("bfloat16")
    assert fp32 > 0.6  # far above chance (1/40)
    assert bf16 == pytest.approx(fp32, abs=0.05)
    head = build_head(HeadConfig("sampled_softmax", table_dtype="bfloat16"), 16, 40)
    assert head.weight.weight.dtype == torch.bfloat16 and head.bias.weight.dtype == torch.float32
