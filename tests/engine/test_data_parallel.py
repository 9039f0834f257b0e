"""Data-parallel engine copies give the single engine's scores, and fail and stop cleanly."""

import multiprocessing

import pytest
from inputs import DOCUMENTS

from qrank import EngineArgs
from qrank.engine.data_parallel import create_engine, split_by_query
from qrank.engine.engine import AsyncEngine, Engine
from qrank.tokenize import PairTokens


def test_split_keeps_queries_together_and_balances_tokens():
    pairs = [PairTokens((1,) * 10, (2,) * n) for n in (5, 5, 5)]  # one query: 45 tokens
    pairs += [PairTokens((3,) * 10, (4,) * 20)]  # another: 30
    pairs += [PairTokens((5,) * 10, (6,) * 5), PairTokens((5,) * 10, (6,) * 1)]  # 26
    shares = split_by_query(pairs, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(pairs)))
    assert shares == [[0, 1, 2], [3, 4, 5]]  # 45 tokens against 30 + 26
    assert split_by_query(pairs[:1], 3) == [[], [0], []]  # its middle token is in run 2
    # one query with many documents is cut into equal runs, not left to one engine copy
    one_query = [PairTokens((1,) * 10, (2,) * 5)] * 6
    assert split_by_query(one_query, 2) == [[0, 1, 2], [3, 4, 5]]
    assert split_by_query(one_query, 3) == [[0, 1], [2, 3], [4, 5]]
    # a big query is cut once, at the token midpoint; the small ones stay whole
    mixed = one_query[:4] + [PairTokens((7,) * 10, (8,) * 10)] * 2
    assert split_by_query(mixed, 2) == [[0, 1, 2], [3, 4, 5]]


def test_data_parallel_scores_equal_one_engine(tiny_model):
    single = Engine(EngineArgs(str(tiny_model), dtype="float32", threads=1))
    parallel = create_engine(EngineArgs(str(tiny_model), dtype="float32", threads=2,
                                        data_parallel_size=2))
    try:
        assert parallel.parallel is not None and parallel.parallel.workers.alive
        pairs = []
        for q in ["What is the capital of China?", "数据库索引是什么", "q", "how do plants eat"]:
            pairs += single.encode(q, DOCUMENTS[:6])
        want = single.score_tokens(pairs)
        for _ in range(2):  # the second job reuses the workers (and their prefix caches)
            got = parallel.score_tokens(pairs)
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
        assert parallel.score_tokens(pairs[:1]) == pytest.approx(want[:1], abs=1e-5)
        # one query: its documents are split between this process and the worker
        assert parallel.score_tokens(pairs[:6]) == pytest.approx(want[:6], abs=1e-5)
        with pytest.raises(ValueError, match="offline"):
            AsyncEngine(parallel)
    finally:
        parallel.close()
    assert not [p for p in multiprocessing.active_children() if p.name == "qrank-dp-worker"]


def test_data_parallel_size_is_checked():
    with pytest.raises(ValueError, match="at least 1"):
        EngineArgs("m", data_parallel_size=0)
    assert EngineArgs("m", threads=2, data_parallel_size=2).threads_per_engine() == 1
    assert EngineArgs("m", threads=1, data_parallel_size=2).threads_per_engine() == 1
