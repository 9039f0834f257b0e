"""Shared-prefix computation and the prefix cache give the unshared scores."""

import pytest
from inputs import DOCUMENTS

from qrank import EngineArgs
from qrank.engine.engine import Engine
from qrank.engine.scheduler import WorkItem


@pytest.fixture(scope="module")
def engines(tiny_model):
    def make(**kw):
        return Engine(EngineArgs(str(tiny_model), dtype="float32", **kw))

    return {
        "plain": make(prefix_sharing=False),
        "shared": make(prefix_cache_bytes=0),
        "cached": make(),
        "small_batches": make(max_num_batched_tokens=300),
    }


def pairs(engine):
    toks = []
    for q in ["What is the capital of China?", "数据库索引是什么", "q"]:
        toks += engine.encode(q, DOCUMENTS + ["same length a", "same length b"])
    return toks


def test_sharing_and_caching_equal_the_unshared_computation(engines):
    want = engines["plain"].score_tokens(pairs(engines["plain"]))
    for name in ("shared", "cached", "small_batches"):
        engine = engines[name]
        for _ in range(2):  # the second round hits the prefix cache
            got = engine.score_tokens(pairs(engine))
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5, name


def test_prefix_cache_hits_and_is_bounded(tiny_model):
    engine = Engine(EngineArgs(str(tiny_model), dtype="float32"))
    toks = engine.encode("a query that comes back", ["doc one", "doc two", "doc three"])
    engine.score_tokens(toks)
    assert len(engine.prefix_cache) == 1
    hits = engine.prefix_cache.hits
    engine.score_tokens(toks)
    assert engine.prefix_cache.hits == hits + 1
    per_token = engine.trunk.shape.kv_bytes_per_token(engine.trunk.dtype)
    assert engine.prefix_cache.nbytes == per_token * len(toks[0].shared)

    tiny_cache = Engine(EngineArgs(str(tiny_model), dtype="float32",
                                   prefix_cache_bytes=per_token * 80))
    for q in ["first query", "second query", "third query"]:
        tiny_cache.score_tokens(tiny_cache.encode(q, ["x", "y"]))
        assert tiny_cache.prefix_cache.nbytes <= per_token * 80
    assert len(tiny_cache.prefix_cache) == 1


def lone_pairs(engine):
    """Pairs that share nothing but their template head: each document has its own query,
    and one pair has its own instruction."""
    toks = []
    for i, doc in enumerate(DOCUMENTS):
        toks += engine.encode(f"query {i}: {doc[:30]}", [doc])
    toks += engine.encode("a query with its own instruction", ["x"], instruction="Find code")
    return toks


def test_lone_pairs_share_their_template_head_and_equal_the_unshared(engines):
    want = engines["plain"].score_tokens(lone_pairs(engines["plain"]))
    for name in ("shared", "cached", "small_batches"):
        engine = engines[name]
        for _ in range(2):  # the second round finds the heads in the prefix cache
            got = engine.score_tokens(lone_pairs(engine))
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5, name
    cache = engines["cached"].prefix_cache
    heads = {t.shared[: t.head] for t in lone_pairs(engines["cached"])}
    assert len(heads) == 2 and all(head in cache for head in heads)


def test_salted_pairs_share_nothing_across_salts_and_score_the_same(engines):
    from dataclasses import replace

    engine = engines["cached"]
    plain = lone_pairs(engine)[:4] + engine.encode("one query, two tenants", ["doc a", "doc b"])
    salts = ["t1", "t2"] * (len(plain) // 2) + ["t1"] * (len(plain) % 2)
    toks = [replace(t, salt=s) for t, s in zip(plain, salts, strict=True)]
    scheduler = engine.make_scheduler()
    scheduler.add([WorkItem(t, i) for i, t in enumerate(toks)])
    groups, keys, cache_keys = engine._seq_groups(scheduler.next_batch())
    for g, group_keys in enumerate(keys):  # a group never mixes salts
        assert len({toks[k].salt for k in group_keys}) == 1
        if cache_keys[g] is not None:
            assert cache_keys[g][0] == toks[group_keys[0]].salt
            assert cache_keys[g][1] == tuple(groups[g].prefix)
    want = engines["plain"].score_tokens(plain)
    for _ in range(2):  # the second round finds each salt's own prefixes in the cache
        got = engine.score_tokens(toks)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
    head = plain[0].shared[: plain[0].head]
    assert ("t1", head) in engine.prefix_cache and ("t2", head) in engine.prefix_cache
