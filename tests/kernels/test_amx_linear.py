"""qrank's AMX linear kernel against float32 references: the plain product and SiLU·up."""

import pytest
import torch
import torch.nn.functional as F
from kernel_skips import kernel_unavailable

from qrank.kernels import amx_linear
from qrank.models.qwen3 import add_rms_norm, silu_and_mul


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if amx_linear.load() is None:
        pytest.skip(kernel_unavailable("the AMX linear kernel"))


def bf16_error_bar(want: torch.Tensor) -> float:
    """What bf16 rounding of the output alone costs: the kernel may be off by twice that."""
    return 2 * (want.to(torch.bfloat16).float() - want).abs().max().item() + 1e-3


def draw(rows: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(torch.bfloat16)
    return x, w


@pytest.mark.parametrize("rows,k,n", [(1, 64, 64), (5, 64, 128), (32, 1024, 4096),
                                      (33, 1024, 1024), (300, 2048, 1024), (77, 3072, 96)])
def test_linear_matches_float32(rows, k, n):
    x, w = draw(rows, k, n)
    want = F.linear(x.float(), w.float())
    got = amx_linear.AmxLinear(w)(x)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    assert (got.float() - want).abs().max().item() <= bf16_error_bar(want)


def test_linear_reads_strided_rows_and_no_rows():
    x, w = draw(40, 256, 64)
    wide = torch.cat((x, torch.zeros(40, 64, dtype=torch.bfloat16)), dim=1)[:, :256]
    assert wide.stride(0) == 320
    layer = amx_linear.AmxLinear(w)
    assert torch.equal(layer(wide), layer(x))
    assert layer(x[:0]).shape == (0, 64)


def test_results_do_not_depend_on_the_thread_count():
    x, w = draw(200, 1024, 1024)
    layer = amx_linear.AmxLinear(w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(layer(x), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("rows,k,inter", [(3, 64, 64), (45, 1024, 3072), (260, 128, 256)])
def test_silu_mul_matches_float32(rows, k, inter):
    x, w = draw(rows, k, 2 * inter, seed=1)
    want = silu_and_mul(F.linear(x.float(), w.float()))
    layer = amx_linear.AmxGateUpSiLU(w)
    got = layer(x)
    assert got.shape == (rows, inter)
    assert (got.float() - want).abs().max().item() <= bf16_error_bar(want)
    assert torch.equal(layer.weight, w)  # the interleaved packing undoes exactly


@pytest.mark.parametrize("rows,k,inter", [(3, 64, 64), (45, 1024, 3072), (260, 128, 256)])
def test_add_norm_fused_into_the_input_copy_equals_add_rms_norm_then_the_layer(rows, k, inter):
    """The residual add and RMS norm done while the kernel copies its input: the sum equals
    :func:`add_rms_norm`'s exactly, the output the unfused path's within one bf16 rounding."""
    x, w = draw(rows, k, 2 * inter, seed=2)
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(rows, k, generator=gen).bfloat16()
    norm_w = (1 + 0.2 * torch.randn(k, generator=gen)).bfloat16()
    layer = amx_linear.AmxGateUpSiLU(w)
    summed, h = add_rms_norm(x, delta, norm_w, 1e-6)
    want = layer(h)
    got, got_summed = layer.add_norm_forward(x, delta, norm_w, 1e-6)
    assert torch.equal(got_summed, summed)
    assert (got.float() - want.float()).abs().max().item() <= bf16_error_bar(want.float())
    assert (got == want).float().mean().item() > 0.99  # the same roundings, but for ties
    reference = silu_and_mul(F.linear(h.float(), w.float()))
    assert (got.float() - reference).abs().max().item() <= 2 * bf16_error_bar(reference)
    with pytest.raises(RuntimeError, match="delta"):
        layer.add_norm_forward(x, delta[:, :32], norm_w, 1e-6)
    with pytest.raises(RuntimeError, match="norm_w"):
        layer.add_norm_forward(x, delta, norm_w.float(), 1e-6)


def test_bad_inputs_raise_instead_of_reading_past_the_tensors():
    x, w = draw(4, 64, 64)
    layer = amx_linear.AmxLinear(w)
    with pytest.raises(RuntimeError, match="bfloat16"):
        layer.kernel.linear(x.float(), layer.packed)
    with pytest.raises(RuntimeError, match="in features"):
        layer.kernel.linear(torch.zeros(4, 96, dtype=torch.bfloat16), layer.packed)
    with pytest.raises(RuntimeError, match="contiguous rows"):
        layer.kernel.linear(x.t(), layer.packed)
    with pytest.raises(RuntimeError, match="pair up"):
        layer.kernel.linear_silu_mul(x, amx_linear.pack_weight(w[:32]))
    assert not amx_linear.fits(48, 64) and not amx_linear.fits(64, 48)
    assert amx_linear.fits(64, 64)
