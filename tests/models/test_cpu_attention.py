"""qrank's CPU attention kernel for documents under a shared prefix, against SDPA."""

import pytest
import torch
import torch.nn.functional as F

from qrank.models import cpu_attention


@pytest.fixture(scope="module")
def kernel():
    if cpu_attention.load() is None:
        pytest.skip("the CPU attention kernel cannot be built or run here")
    return cpu_attention.prefix_attention


def packed_inputs(heads: int, kv_heads: int, head_dim: int, prefix: int, count: int,
                  length: int, seed: int):
    """q, k, v laid out as the scorer packs them (views of one QKV tensor, a few tail rows)
    and a prefix's k, v as the scorer keeps them ([kv_heads, prefix, d] views)."""
    gen = torch.Generator().manual_seed(seed)
    rows = count * length + 5
    qkv = torch.randn(rows, heads + 2 * kv_heads, head_dim, generator=gen).bfloat16()
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    pkv = torch.randn(prefix, 2 * kv_heads, head_dim, generator=gen).bfloat16()
    return q, k, v, pkv[:, :kv_heads].transpose(0, 1), pkv[:, kv_heads:].transpose(0, 1)


def reference(q, k, v, pk, pv, count: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """SDPA per document over [prefix; document] with a prefix-then-causal mask."""
    prefix = pk.shape[1]
    mask = torch.ones(length, prefix + length, dtype=torch.bool).tril(diagonal=prefix)
    outs = []
    for c in range(count):
        rows = slice(c * length, (c + 1) * length)
        qd = q[rows].transpose(0, 1)[None].to(dtype)
        kd = torch.cat((pk, k[rows].transpose(0, 1)), 1)[None].to(dtype)
        vd = torch.cat((pv, v[rows].transpose(0, 1)), 1)[None].to(dtype)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, enable_gqa=True)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"),
                         [(4, 2, 16), (16, 8, 128), (32, 8, 128)])
@pytest.mark.parametrize(("prefix", "count", "length"),
                         [(60, 1, 240), (7, 3, 37), (0, 2, 70), (33, 2, 1), (5, 1, 130)])
def test_matches_sdpa_as_closely_as_sdpa_in_bf16(kernel, heads, kv_heads, head_dim, prefix,
                                                 count, length):
    q, k, v, pk, pv = packed_inputs(heads, kv_heads, head_dim, prefix, count, length, seed=1)
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    kernel(q, k, v, pk, pv, out, 0, count, length)
    got = out[: count * length].float()
    want = reference(q, k, v, pk, pv, count, length, torch.float32)
    sdpa_bf16 = reference(q, k, v, pk, pv, count, length, torch.bfloat16).float()
    # within bf16's rounding of the output, like SDPA's own bf16 result
    assert (got - want).abs().max() <= 2 * (sdpa_bf16 - want).abs().max() + 1e-3
    assert torch.isnan(out[count * length :]).all()  # rows outside the bucket untouched


def test_writes_only_its_bucket_of_a_packed_batch(kernel):
    """A bucket in the middle of the packed rows: rows before and after stay as they were."""
    q, k, v, pk, pv = packed_inputs(4, 2, 16, 9, 4, 11, seed=2)
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)
    kernel(q, k, v, pk, pv, out, 11, 2, 11)
    want = reference(q[11:], k[11:], v[11:], pk, pv, 2, 11, torch.float32)
    assert (out[11:33].float() - want).abs().max() < 2e-2
    assert out[:11].eq(0).all() and out[33:].eq(0).all()


def test_rejects_inputs_it_cannot_run(kernel):
    q, k, v, pk, pv = packed_inputs(4, 2, 16, 3, 1, 8, seed=3)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernel(q.float(), k, v, pk, pv, out, 0, 1, 8)
    with pytest.raises(RuntimeError, match="past the packed rows"):
        kernel(q, k, v, pk, pv, out, 0, 2, 8)
    with pytest.raises(RuntimeError, match="past the packed rows"):
        kernel(q, k, v, pk, pv, out[:4], 0, 1, 8)
    with pytest.raises(RuntimeError, match="share head_dim"):
        kernel(q, k, v, pk[..., :8], pv[..., :8], out, 0, 1, 8)
