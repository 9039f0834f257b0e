"""Attention of documents over a prefix without a mask.

A document's queries attend to its prefix's keys (all of them) and, causally, to its own. Put
together under one boolean mask, SDPA's CPU flash kernel computes every block of the score
matrix, the upper triangle too, and the mask itself is [length, prefix + length] (1 GB at 32k
tokens). Here the two parts run apart: the prefix with no mask, the document with
``is_causal=True`` (whose kernel skips the blocks past the diagonal), and their outputs are
merged exactly by their log-sum-exps. The CPU flash kernel returns the log-sum-exp; elsewhere
:func:`prefix_causal_attention` returns None and the caller keeps the mask.
"""

from __future__ import annotations

import torch

# (out, logsumexp) = op(q, k, v, dropout_p, is_causal): [batch, heads, seq, dim]; grouped
# kv heads taken as they are; the log-sum-exp in float32
_flash_cpu = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def merge_by_lse(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
                 ) -> torch.Tensor:
    """Softmax attention over two key sets together, from each set's output [..., L, d] and
    log-sum-exp [..., L]: each output weighted by its share of the total, in float32."""
    share = torch.sigmoid(lse1 - lse2).unsqueeze(-1)  # exp(lse1) / (exp(lse1) + exp(lse2))
    return torch.lerp(o2.float(), o1.float(), share).to(o1.dtype)


def prefix_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            prefix_k: torch.Tensor, prefix_v: torch.Tensor
                            ) -> torch.Tensor | None:
    """Attention of ``n`` documents' queries ``q`` [n, H, L, d] over the prefix's keys and
    values [Hkv, P, d] and, causally, their own ``k``/``v`` [n, Hkv, L, d]; None where the
    kernel that returns the log-sum-exp does not run (not the CPU)."""
    if _flash_cpu is None or q.device.type != "cpu":
        return None
    n = q.shape[0]
    pk = prefix_k[None].expand(n, -1, -1, -1)
    pv = prefix_v[None].expand(n, -1, -1, -1)
    over_prefix, lse_prefix = _flash_cpu(q, pk, pv, 0.0, False)
    over_own, lse_own = _flash_cpu(q, k, v, 0.0, True)
    return merge_by_lse(over_prefix, lse_prefix, over_own, lse_own)
