"""A CPU attention kernel for documents under a shared prefix (bf16, AMX micro-kernels).

The documents of a bucket attend to their prefix's keys and values and, causally, to their
own. ATen's flash kernel does this with an explicit mask, one head at a time, at 200–400
GFLOP/s on this project's CPUs; ``csrc/prefix_attention.cpp`` packs each document's keys and
values once per kv head for oneDNN's AMX micro-kernels (``cpublas::brgemm``), skips the key
blocks past each query block's causal end, and writes straight into the packed output. It is
built at start by :mod:`qrank.kernels.build` on CPUs with AMX (and never compiled elsewhere);
where it cannot be built or run, :func:`load` returns ``None`` and the engine keeps SDPA. Given a
:class:`NormRope`, it also applies Qwen3's q/k RMS norms and RoPE to the documents' raw rows as
it reads them, sparing the scorer a pass over q and k.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from qrank.kernels import build, cpu_features

Q_BLOCK = 64  # query rows per work item


def load() -> ModuleType | None:
    """The compiled kernel, or ``None`` where it cannot be built or run (logged; SDPA stays).
    oneDNN packs bfloat16 for its micro-kernels on AMX only, so nothing is built without it."""
    return build.load("prefix_attention.cpp", runs_here=cpu_features.has_amx_bf16,
                      needs="AMX (amx_bf16)")


class NormRope(NamedTuple):
    """Qwen3's per-head q/k RMS norms and RoPE, for the kernel to apply to raw projections:
    the norms' weights [d], cos and sin [T, d] of the packed rows (bf16), the norms' eps."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    eps: float


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor,
                     prefix_v: torch.Tensor, out: torch.Tensor, start: int, count: int,
                     length: int, norm_rope: NormRope | None = None) -> None:
    """Write into ``out`` [T, H, d] the attention of ``count`` packed documents of ``length``
    tokens from row ``start`` of ``q`` [T, H, d], over ``prefix_k``/``prefix_v`` [Hkv, P, d]
    and, causally, their own rows of ``k``/``v`` [T, Hkv, d]. bfloat16 only.

    With ``norm_rope`` the documents' rows of ``q`` and ``k`` are the raw projections: the
    kernel norms and rotates them as it reads them (the prefix's keys are ready), which spares
    the scorer a pass over them; ``q`` and ``k`` are left as they were.
    """
    module = load()
    if module is None:
        raise RuntimeError("the CPU attention kernel is not available")
    if norm_rope is None:
        module.prefix_causal_attention(q, k, v, prefix_k, prefix_v, out, start, count, length,
                                       Q_BLOCK)
    else:
        module.prefix_causal_attention(q, k, v, prefix_k, prefix_v, out, start, count, length,
                                       Q_BLOCK, *norm_rope)
