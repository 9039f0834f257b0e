"""Opt-in int8 weight-only quantization of the decoder's linear layers.

Weights are stored as int8 with one float scale per output channel (symmetric, absmax / 127)
and dequantized to the compute dtype just before each matmul. This halves the memory of the
decoder's weights; it does not make the matmuls faster on CPUs whose bf16 AMX path is faster
than any int8 path torch offers (measured in docs/performance.md), and it moves scores a little (the
error is measured in tests/models/test_quantization.py and documented in docs/performance.md).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from qrank.kernels.packed_linear import LINEARS

logger = logging.getLogger(__name__)


class Int8Linear(nn.Module):
    """A bias-free linear layer holding int8 weights and per-row scales; ``.weight``
    dequantizes on access, so code that reads ``layer.weight`` needs no change."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().to(torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127)
                             .to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.dtype = weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.to(self.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)


def quantize_int8(trunk: nn.Module) -> None:
    """Replace every decoder block's linear layers by :class:`Int8Linear`, in place."""
    before = sum(p.numel() * p.element_size() for p in trunk.parameters())
    for block in trunk.layers:
        for name in LINEARS:
            setattr(block, name, Int8Linear(getattr(block, name).weight))
    after = sum(t.numel() * t.element_size()
                for t in list(trunk.parameters()) + list(trunk.buffers()))
    logger.info("int8 weights: %.0f MiB -> %.0f MiB", before / 2**20, after / 2**20)
