"""Prepacked oneDNN weights multiply exactly as F.linear where the CPU packs them, and stay plain
where it does not; padded sequence views read in place."""

import pytest
import torch
import torch.nn.functional as F
from inputs import DOCUMENTS, QUERIES
from torch import nn

from qrank import EngineArgs
from qrank.engine.engine import Engine
from qrank.kernels import cpu_features
from qrank.kernels.packed_linear import LINEARS, PackedLinear, can_pack, packs_float32
from qrank.models.quant import Int8Linear
from qrank.models.qwen3 import seq_view

needs_packing = pytest.mark.skipif(
    not can_pack(torch.empty(1, dtype=torch.bfloat16)),
    reason="oneDNN cannot pack bfloat16 weights on this CPU (needs AVX-512 or AVX_NE_CONVERT)")


@needs_packing
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_packed_linear_equals_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.randn(96, 64, generator=gen) * 0.1).to(torch.bfloat16)
    x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
    packed = PackedLinear(weight, batch_size_hint=2048)
    assert torch.equal(packed(x), F.linear(x, weight))
    assert torch.equal(packed.weight, weight)


def unpack(engine):
    """Put plain ``nn.Linear`` layers with the same weights in place of packed ones."""
    for block in engine.trunk.layers:
        for name in LINEARS:
            layer = nn.Linear(1, 1, bias=False)
            layer.weight = nn.Parameter(getattr(block, name).weight, requires_grad=False)
            setattr(block, name, layer)


def linear_types(engine):
    return {type(getattr(block, name)) for block in engine.trunk.layers for name in LINEARS}


@needs_packing
def test_bf16_cpu_weights_are_packed_and_score_as_plain_weights(tiny_model):
    packed = Engine(EngineArgs(str(tiny_model), dtype="bfloat16"))
    assert linear_types(packed) == {PackedLinear}
    plain = Engine(EngineArgs(str(tiny_model), dtype="bfloat16"))
    unpack(plain)
    pairs = [p for q in QUERIES[:3] for p in packed.encode(q, DOCUMENTS)]
    want = plain.score_tokens(pairs)
    got = packed.score_tokens(pairs)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_are_packed_exactly_where_the_cpu_packs_them(tiny_model, dtype):
    """Where oneDNN refuses a dtype on this CPU (float16 without AVX512_FP16/AVX_NE_CONVERT,
    bfloat16 without AVX-512), the layers stay plain and the model still scores."""
    packs = cpu_features.onednn_packs(dtype)
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(64, 64, dtype=dtype), 16)
        refused = False
    except RuntimeError:
        refused = True
    assert packs != refused
    engine = Engine(EngineArgs(str(tiny_model), dtype=str(dtype).removeprefix("torch.")))
    assert linear_types(engine) == ({PackedLinear} if packs else {nn.Linear})
    scores = engine.score_tokens(engine.encode(QUERIES[0], DOCUMENTS[:4]))
    assert all(0.0 < s < 1.0 for s in scores)


def test_float32_weights_are_packed_only_on_x86_without_avx512(tiny_model):
    """Where they are packed, they multiply as ``F.linear`` does up to the order of the sums,
    and the engine scores as with plain weights."""
    assert packs_float32() == (cpu_features.is_x86() and not cpu_features.has_avx512()
                               and cpu_features.onednn_packs(torch.float32))
    fp32 = Engine(EngineArgs(str(tiny_model), dtype="float32"))
    assert linear_types(fp32) == ({PackedLinear} if packs_float32() else {nn.Linear})
    if not packs_float32():
        return
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen) * 0.1
    for rows in (1, 7, 300):
        x = torch.randn(rows, 64, generator=gen)
        packed = PackedLinear(weight, batch_size_hint=2048)
        torch.testing.assert_close(packed(x), F.linear(x, weight), rtol=1e-5, atol=1e-6)
    assert torch.equal(packed.weight, weight)
    plain = Engine(EngineArgs(str(tiny_model), dtype="float32"))
    unpack(plain)
    pairs = [p for q in QUERIES[:3] for p in fp32.encode(q, DOCUMENTS)]
    got, want = fp32.score_tokens(pairs), plain.score_tokens(pairs)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6


def test_int8_weights_are_not_packed(tiny_model):
    int8 = Engine(EngineArgs(str(tiny_model), dtype="bfloat16", quantization="int8"))
    assert linear_types(int8) == {Int8Linear}


def test_seq_view_reads_padded_sequences_in_place():
    t = torch.arange(12 * 2 * 3, dtype=torch.float32).reshape(12, 2, 3)[:, :, :]
    view = seq_view(t, start=2, count=3, length=3, to=4)  # rows 2-5, 5-8, 8-11
    assert view.shape == (3, 2, 4, 3)
    assert view.data_ptr() == t[2].data_ptr()
    for i in range(3):
        assert torch.equal(view[i], t[2 + 3 * i : 6 + 3 * i].transpose(0, 1))
    with pytest.raises(ValueError, match="past"):
        seq_view(t, start=2, count=3, length=3, to=5)
