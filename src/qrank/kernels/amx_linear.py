"""The decoder's gate-up projection on AMX tiles, with SwiGLU's ``silu(gate) * up`` fused in.

``csrc/amx_linear.cpp`` multiplies bf16 activations by weights packed once at load time and
turns each group of finished output columns into its result while it is still in cache: the
gate-up projection writes ``silu(gate) * up``, never its [tokens, 2 x intermediate] product.
:class:`AmxLinear` is the plain product, which oneDNN beats; the engine uses only
:class:`AmxGateUpSiLU` (docs/performance.md). Built at start by :mod:`qrank.kernels.build` on
CPUs with AMX (never compiled elsewhere); where it cannot be built or run, :func:`load` returns
``None`` and the layers stay on oneDNN.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from qrank.kernels import build, cpu_features
from qrank.kernels.fused import FusedGateUp

BLOCK_N = 32  # output columns per packed weight block


def load() -> ModuleType | None:
    """The compiled kernel, or ``None`` where it cannot be built or run (logged)."""
    return build.load("amx_linear.cpp", ("-mamx-tile", "-mamx-bf16"),
                      runs_here=cpu_features.has_amx_bf16, needs="AMX (amx_bf16)")


def fits(out_features: int, in_features: int) -> bool:
    """Whether the kernel takes a layer of these sizes: both multiples of 32."""
    return out_features % BLOCK_N == 0 and in_features % 32 == 0


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [out / 32, in / 2, 32, 2]: blocks of 32 output columns in the VNNI layout
    the tiles read (pairs of input rows interleaved)."""
    n, k = weight.shape
    return weight.reshape(n // BLOCK_N, BLOCK_N, k // 2, 2).permute(0, 2, 1, 3).contiguous()


def unpack_weight(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_weight`."""
    blocks, half_k = packed.shape[:2]
    return packed.permute(0, 2, 1, 3).reshape(blocks * BLOCK_N, half_k * 2)


def pack_gate_up(weight: torch.Tensor) -> torch.Tensor:
    """[gate; up] [out, in] -> :func:`pack_weight`'s layout with blocks of 32 rows alternating
    gate and up, so one thread computes both halves of each output column block; one copy."""
    n, k = weight.shape
    blocks = weight.reshape(2, n // 2 // BLOCK_N, BLOCK_N, k // 2, 2).permute(1, 0, 3, 2, 4)
    return blocks.contiguous().reshape(n // BLOCK_N, k // 2, BLOCK_N, 2)


def split_halves(weight: torch.Tensor) -> torch.Tensor:
    """[gate and up blocks alternating] -> [gate; up]: undoes :func:`pack_gate_up`'s order
    of rows once :func:`unpack_weight` has undone its blocks."""
    n, k = weight.shape
    pairs = weight.reshape(n // 2 // BLOCK_N, 2, BLOCK_N, k)
    return torch.cat((pairs[:, 0].reshape(n // 2, k), pairs[:, 1].reshape(n // 2, k)))


class AmxLinear(nn.Module):
    """A bias-free linear layer on AMX tiles: the kernel's product without an epilogue."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = pack_weight(weight.detach())
        self.kernel = kernel()

    @property
    def weight(self) -> torch.Tensor:
        """The weight in its plain [out, in] layout (a copy)."""
        return unpack_weight(self.packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.linear(x, self.packed)


class AmxGateUpSiLU(FusedGateUp):
    """The fused gate-up projection that returns ``silu(gate) * up`` [tokens, intermediate]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = pack_gate_up(weight.detach())
        self.kernel = kernel()

    @property
    def weight(self) -> torch.Tensor:
        """The [gate; up] weight in its plain [out, in] layout (a copy)."""
        return split_halves(unpack_weight(self.packed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.linear_silu_mul(x, self.packed)

    def add_norm_forward(self, x: torch.Tensor, delta: torch.Tensor, norm_weight: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add and RMS norm before the projection, fused into the kernel's
        copy of its input: returns ``(silu(gate) * up of norm(x + delta), x + delta)``, the
        same as :func:`qrank.models.qwen3.add_rms_norm` and then :meth:`forward`."""
        return self.kernel.add_norm_linear_silu_mul(x, delta, norm_weight, eps, self.packed)


def kernel() -> ModuleType:
    """The compiled kernel; raises where it is not available."""
    module = load()
    if module is None:
        raise RuntimeError("the AMX linear kernel is not available")
    return module
