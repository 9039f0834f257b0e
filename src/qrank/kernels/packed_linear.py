"""Linear layers in the weight layout the CPU multiplies fastest.

oneDNN's bf16 AMX kernels want the weight in a blocked layout. ``F.linear`` on a plain weight
reorders it on every call; a weight reordered once at load time (``mkldnn._reorder_linear_weight``)
skips that, which made the decoder's matmuls 7–12% faster on this project's CPUs (measured in
docs/performance.md) with bit-identical results. oneDNN packs half-precision weights only
where the CPU converts them natively (bfloat16: AVX-512 or AVX_NE_CONVERT; float16: AVX512_FP16
or AVX_NE_CONVERT): elsewhere the weights stay plain and ``F.linear`` computes.

Float32 weights are packed on x86 CPUs without AVX-512, where float32 is what ``--dtype auto``
runs: there ``F.linear`` goes to MKL's sgemm, and oneDNN's AVX2 brgemm on prepacked weights
ran the decoder's projections 1.08x (3,072 rows) to 1.68x (64 rows) faster on an AVX2 AMD
EPYC (docs/performance.md). Its sums run in another order than MKL's, so results differ from
``F.linear``'s in the last bits (~4e-6 on outputs of order 1). Elsewhere float32 stays on
``F.linear``: on AVX-512 CPUs the two were not compared.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from qrank.kernels import cpu_features

logger = logging.getLogger(__name__)

LINEARS = ("qkv", "o_proj", "gate_up", "down")
HALF_DTYPES = (torch.bfloat16, torch.float16)


def packs_float32() -> bool:
    """Whether float32 weights are packed here: x86 without AVX-512, where oneDNN packs them."""
    return (cpu_features.is_x86() and not cpu_features.has_avx512()
            and cpu_features.onednn_packs(torch.float32))


def can_pack(weight: torch.Tensor) -> bool:
    """True where qrank holds this weight prepacked for oneDNN: a CPU tensor of a half type
    this CPU packs, or float32 where :func:`packs_float32`."""
    if weight.device.type != "cpu":
        return False
    if weight.dtype == torch.float32:
        return packs_float32()
    return weight.dtype in HALF_DTYPES and cpu_features.onednn_packs(weight.dtype)


class PackedLinear(nn.Module):
    """A bias-free linear layer whose weight oneDNN reordered once, at load time."""

    def __init__(self, weight: torch.Tensor, batch_size_hint: int) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size_hint)

    @property
    def weight(self) -> torch.Tensor:
        """The weight in its plain [out, in] layout (a copy)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def pack_linears(trunk: nn.Module, batch_size_hint: int) -> int:
    """Replace the decoder blocks' plain linear layers by :class:`PackedLinear` where
    :func:`can_pack` allows; returns how many were packed."""
    count = 0
    for block in trunk.layers:
        for name in LINEARS:
            layer = getattr(block, name)
            if type(layer) is nn.Linear and can_pack(layer.weight):
                setattr(block, name, PackedLinear(layer.weight, batch_size_hint))
                count += 1
    if count:
        logger.info("%d linear weights prepacked for oneDNN", count)
    return count
