"""What runs under the model on a given device: the CPU kernels (``csrc/``), their builder,
oneDNN-packed weights, and the CPU feature checks that choose among them.

:mod:`qrank.models` asks here for "the attention over a shared prefix" and "the fused gate-up
projection" and gets the fastest one this device runs, or ``None`` for its PyTorch path; it
never needs to know which instructions are behind them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qrank.kernels import amx_linear, cpu_attention
from qrank.kernels.cpu_attention import NormRope
from qrank.kernels.fused import FusedGateUp
from qrank.kernels.packed_linear import PackedLinear

__all__ = ["FusedGateUp", "NormRope", "PackedLinear", "fused_gate_up", "prefix_attention"]


def prefix_attention(device: torch.device, dtype: torch.dtype) -> Callable[..., None] | None:
    """A kernel with :func:`qrank.kernels.cpu_attention.prefix_attention`'s signature for
    documents attending over a shared prefix, or ``None`` where none runs here (SDPA then)."""
    if device.type == "cpu" and dtype == torch.bfloat16 and cpu_attention.load() is not None:
        return cpu_attention.prefix_attention
    return None


def fused_gate_up(weight: torch.Tensor) -> FusedGateUp | None:
    """The gate-up projection [gate; up] with ``silu(gate) * up`` fused in, for this weight's
    device and dtype, or ``None`` where no kernel takes it (the layer stays as it is)."""
    out_features, in_features = weight.shape
    if (weight.device.type == "cpu" and weight.dtype == torch.bfloat16
            and amx_linear.fits(out_features, in_features) and amx_linear.load() is not None):
        return amx_linear.AmxGateUpSiLU(weight)
    return None


def is_plain_linear(layer: nn.Module) -> bool:
    """A float linear layer a kernel may take over (not quantized, not fused already)."""
    return type(layer) in (nn.Linear, PackedLinear)
