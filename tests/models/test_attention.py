"""Documents over a prefix without a mask (qrank.models.attention) equal the masked SDPA."""

import pytest
import torch
import torch.nn.functional as F

from qrank.models import qwen3
from qrank.models.attention import prefix_causal_attention
from qrank.models.qwen3 import SeqGroup


def masked(q, k, v, pk, pv):
    """The mask path's formulation: prefix and document keys together under one bool mask."""
    n, length, p = q.shape[0], q.shape[2], pk.shape[1]
    keys = torch.cat((pk[None].expand(n, -1, -1, -1), k), dim=2)
    values = torch.cat((pv[None].expand(n, -1, -1, -1), v), dim=2)
    mask = torch.ones(length, p + length, dtype=torch.bool).tril(diagonal=p)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(("prefix", "length"), [(1, 1), (45, 33), (300, 16), (7, 260)])
def test_mask_free_attention_equals_the_masked_one(dtype, tol, prefix, length):
    g = torch.Generator().manual_seed(prefix * 1000 + length)
    heads, kv_heads, d, n = 8, 2, 32, 3

    def rand(*shape):
        return (2 * torch.randn(*shape, generator=g)).to(dtype)

    q, k, v = rand(n, heads, length, d), rand(n, kv_heads, length, d), rand(n, kv_heads, length, d)
    pk, pv = rand(kv_heads, prefix, d), rand(kv_heads, prefix, d)
    got = prefix_causal_attention(q, k, v, pk, pv)
    want = masked(*(t.float() for t in (q, k, v, pk, pv)))
    assert got is not None and got.dtype == dtype and got.shape == want.shape
    # bfloat16: the two parts' outputs are rounded before they merge, so within its rounding
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_other_devices_keep_the_mask(monkeypatch):
    q = torch.zeros(1, 2, 4, 8, device="meta")
    assert prefix_causal_attention(q, q, q, q[0], q[0]) is None


def test_the_trunk_is_the_same_on_either_path(tiny_model, monkeypatch):
    """Whole forwards, documents of several lengths over computed and cached prefixes: the
    mask-free path (the default on the CPU) against the mask path, float32."""
    from qrank import Reranker

    trunk = Reranker(str(tiny_model), dtype="float32", compile="off").engine.trunk
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (600,), generator=g).tolist()
    _, _, kept = trunk([SeqGroup(ids[:50], [ids[50:60]], keep_prefix_kv=True)])

    def groups():
        return [SeqGroup(ids[:50], [ids[100:133], ids[200:233], ids[300:500]],
                         prefix_kv=kept[0]),
                SeqGroup(ids[500:537], [ids[:17], ids[17:300]]),
                SeqGroup([], [ids[:40]])]

    free, order, _ = trunk(groups())
    monkeypatch.setattr(qwen3, "prefix_causal_attention", lambda *a: None)
    with_mask, order_masked, _ = trunk(groups())
    assert order == order_masked
    assert (free - with_mask).abs().max() < 1e-5
