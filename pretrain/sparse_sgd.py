"""Plain SGD on the rows a sparse gradient touches, for fp32 or bf16 embedding tables.

A table of 1M tags x 2048 dims is 8.2 GB in fp32 and 4.1 GB in bf16 (`head.table_dtype=bfloat16`). Rounding an
SGD update of a bf16 row to the nearest bf16 loses every step smaller than half a unit in the last place (2^-9
of the value): late in training, most of them. So a bf16 row is updated in fp32 and rounded back
stochastically: up with probability equal to the distance to the lower neighbour, which keeps the expected
value of the stored weight exact (Gupta et al. 2015, "Deep learning with limited numerical precision").
The rounding noise comes from a generator seeded by (seed, step, parameter), so a resumed run repeats it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

LOW_BITS = 1 << 16  # bf16 keeps the upper 16 bits of an fp32 number
HIGH_MASK = -LOW_BITS  # 0xFFFF0000 as an int32


def stochastic_round_bf16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 -> bf16, rounding each value's magnitude up with probability (dropped low bits) / 2^16."""
    bits = values.float().contiguous().view(torch.int32)
    noise = torch.randint(0, LOW_BITS, bits.shape, dtype=torch.int32, generator=generator, device=bits.device)
    # adding below the kept bits carries into them with exactly that probability; sign-magnitude makes this
    # round the magnitude, the same rule for negative numbers
    return ((bits + noise) & HIGH_MASK).view(torch.float32).to(torch.bfloat16)


class SparseRowSGD(torch.optim.Optimizer):
    """w[rows] -= lr * grad[rows] for sparse (COO) gradients; no momentum, no state but a step count."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr})
        self.seed = seed

    def _generator(self, step: int, index: int, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed((self.seed * 1_000_003 + step) * 1_009 + index)
        return generator

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                index += 1
                if param.grad is None:
                    continue
                state = self.state[param]
                state["step"] = int(state.get("step", 0)) + 1
                grad = param.grad.coalesce()  # sparse: only nn.Embedding(sparse=True) weights come here
                rows, values = grad.indices()[0], grad.values()
                if param.dtype == torch.bfloat16:
                    updated = param[rows].float() - group["lr"] * values.float()
                    generator = self._generator(state["step"], index, param.device)
                    param[rows] = stochastic_round_bf16(updated, generator)
                else:
                    param.index_add_(0, rows, values.to(param.dtype), alpha=-group["lr"])
