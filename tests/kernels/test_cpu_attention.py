"""qrank's CPU attention kernel for documents under a shared prefix, against SDPA."""

import pytest
import torch
import torch.nn.functional as F
from kernel_skips import kernel_unavailable

from qrank.kernels import cpu_attention


@pytest.fixture(scope="module")
def kernel():
    if cpu_attention.load() is None:
        pytest.skip(kernel_unavailable("the CPU attention kernel"))
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


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"),
                         [(4, 2, 16), (4, 2, 32), (8, 4, 64), (16, 8, 128), (4, 2, 256)])
def test_norms_and_rotates_raw_rows_as_the_scorer_would(kernel, heads, kv_heads, head_dim):
    """Given the raw QKV projection and the norms' weights, cos and sin, the kernel's output
    equals, within bf16's rounding, norming and rotating first (the scorer's qk_norm_rope)
    and attending after; q and k are left raw."""
    from qrank.models.qwen3 import qk_norm_rope

    prefix, count, length, start = 13, 3, 45, 7
    gen = torch.Generator().manual_seed(4)
    rows = start + count * length + 5
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=gen).bfloat16()
    raw = qkv.unflatten(-1, (heads + 2 * kv_heads, head_dim))
    q, k, v = raw[:, :heads], raw[:, heads : heads + kv_heads], raw[:, heads + kv_heads :]
    pkv = torch.randn(prefix, 2 * kv_heads, head_dim, generator=gen).bfloat16()
    pk, pv = pkv[:, :kv_heads].transpose(0, 1), pkv[:, kv_heads:].transpose(0, 1)
    q_w = (1 + 0.3 * torch.randn(head_dim, generator=gen)).bfloat16()
    k_w = (1 + 0.3 * torch.randn(head_dim, generator=gen)).bfloat16()
    angles = torch.arange(rows, dtype=torch.float32)[:, None] * torch.rand(head_dim // 2,
                                                                              generator=gen)
    cos, sin = (torch.cat((f, f), -1).bfloat16() for f in (angles.cos(), angles.sin()))
    before = qkv.clone()

    out = torch.zeros(rows, heads, head_dim, dtype=torch.bfloat16)
    cpu_attention.prefix_attention(q, k, v, pk, pv, out, start, count, length,
                                   cpu_attention.NormRope(q_w, k_w, cos, sin, 1e-6))
    assert torch.equal(qkv, before)
    qn, kn, _ = qk_norm_rope(qkv.float(), q_w.float(), k_w.float(), cos.float(), sin.float(),
                             1e-6, heads, kv_heads)
    want = reference(qn[start:], kn[start:], v[start:].float(), pk.float(), pv.float(), count,
                     length, torch.float32)
    got = out[start : start + count * length].float()
    qb, kb, _ = qk_norm_rope(qkv, q_w, k_w, cos, sin, 1e-6, heads, kv_heads)
    sdpa_bf16 = reference(qb[start:], kb[start:], v[start:], pk, pv, count, length,
                          torch.bfloat16).float()
    assert (got - want).abs().max() <= 2 * (sdpa_bf16 - want).abs().max() + 1e-3
    assert out[:start].eq(0).all() and out[start + count * length :].eq(0).all()


def test_takes_the_norms_and_rope_whole_or_not_at_all(kernel):
    q, k, v, pk, pv = packed_inputs(4, 2, 16, 3, 1, 8, seed=5)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    w = torch.ones(16, dtype=torch.bfloat16)
    table = torch.ones(q.shape[0], 16, dtype=torch.bfloat16)
    module = cpu_attention.load()
    with pytest.raises(RuntimeError, match="together"):
        module.prefix_causal_attention(q, k, v, pk, pv, out, 0, 1, 8, 64, w, w, None, None)
    with pytest.raises(RuntimeError, match="cos and sin"):
        cpu_attention.prefix_attention(q, k, v, pk, pv, out, 0, 1, 8,
                                       cpu_attention.NormRope(w, w, table[:4], table, 1e-6))
    with pytest.raises(RuntimeError, match="q_norm and k_norm"):
        cpu_attention.prefix_attention(q, k, v, pk, pv, out, 0, 1, 8,
                                       cpu_attention.NormRope(w[:8], w, table, table, 1e-6))


@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_scorer_with_the_fused_norms_equals_its_sdpa_path(kernel, model_factory, shape):
    """The scorer hands the kernel raw q/k rows (norms and RoPE fused in) when every document
    has a prefix: prefixes computed in the batch are normed in place and kept normed, so a
    second forward over the kept keys and values gives the same hidden states."""
    from qrank.config import EngineArgs
    from qrank.models.qwen3 import SeqGroup
    from qrank.models.registry import load_model

    options = {} if shape == "tiny" else {"shape": shape}
    trunk = load_model(EngineArgs(str(model_factory(**options)), dtype="bfloat16")).trunk
    gen = torch.Generator().manual_seed(6)

    def ids(n: int) -> list[int]:
        return torch.randint(100, 5000, (n,), generator=gen).tolist()

    prefixes = [ids(19), ids(40)]
    docs = [[ids(23), ids(23), ids(31)], [ids(5), ids(60)]]

    def run(fused: bool, kept=None):
        trunk.prefix_attention = cpu_attention.prefix_attention if fused else None
        groups = [SeqGroup(p, d, prefix_kv=None if kept is None else kept[g],
                           keep_prefix_kv=kept is None)
                  for g, (p, d) in enumerate(zip(prefixes, docs, strict=True))]
        hidden, order, new_kv = trunk(groups)
        return hidden.float(), order, new_kv

    want, order, want_kv = run(fused=False)
    got, got_order, got_kv = run(fused=True)
    again, again_order, _ = run(fused=True, kept=got_kv)
    assert order == got_order == again_order
    scale = want.abs().max()
    for g in want_kv:  # the kept prefix keys are normed and rotated, as the SDPA path's
        for (wk, wv), (gk, gv) in zip(want_kv[g], got_kv[g], strict=True):
            assert torch.equal(wv, gv)
            assert (wk.float() - gk.float()).abs().max() <= 0.02 * wk.float().abs().max()
    for out in (got, again):
        assert (out - want).abs().max() <= 0.03 * scale
    assert torch.equal(got, again)
