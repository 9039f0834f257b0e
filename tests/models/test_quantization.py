"""--quantization int8: weights stored as int8, scores close to bfloat16, error measured."""

import pytest
import torch
from inputs import DOCUMENTS, QUERIES

from qrank import Reranker
from qrank.models.quant import Int8Linear


def all_scores(reranker):
    return torch.tensor([s for q in QUERIES for s in reranker.score(q, DOCUMENTS)])


@pytest.fixture(scope="module")
def pair(tiny_model):
    return (Reranker(str(tiny_model), dtype="bfloat16"),
            Reranker(str(tiny_model), dtype="bfloat16", quantization="int8"))


def test_int8_stores_int8_weights(pair):
    _, q = pair
    block = q.engine.trunk.layers[0]
    assert isinstance(block.qkv, Int8Linear) and block.qkv.qweight.dtype == torch.int8
    assert block.qkv.weight.dtype == torch.bfloat16
    assert not any(n.endswith("qkv.weight") for n, _ in q.engine.trunk.named_parameters())


def test_int8_score_error_is_small(pair):
    """The documented bound: int8 scores within 0.05 of bfloat16 ones, ranking mostly kept."""
    bf16, int8 = (all_scores(r) for r in pair)
    err = (bf16 - int8).abs()
    print(f"int8 vs bf16 on {len(err)} pairs: max {err.max():.4f}, mean {err.mean():.4f}")
    assert err.max() < 0.05
    assert err.mean() < 0.01
    order_kept = torch.corrcoef(torch.stack([bf16, int8]))[0, 1]
    assert order_kept > 0.99
