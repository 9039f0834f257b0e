"""The score cache: exact LRU behaviour against a reference, keys from token ids and salts."""

import random
from collections import OrderedDict

import pytest

from qrank.engine.score_cache import ScoreCache
from qrank.tokenize import PairTokens


def pair(*own: int, shared=(1, 2, 3), salt="") -> PairTokens:
    return PairTokens(tuple(shared), tuple(own), salt=salt)


@pytest.mark.parametrize("capacity", [1, 3, 17, 200])
def test_lru_matches_an_ordered_dict_under_random_traffic(capacity):
    """Gets, puts and evictions in random order (keys crowded onto few home slots, so probe
    runs wrap and back-shift) leave the same entries in the same order as an OrderedDict."""
    rng = random.Random(capacity)
    cache, ref = ScoreCache(capacity), OrderedDict()
    mask = cache._mask
    keys = [((rng.randrange(4) | (rng.getrandbits(40) * (mask + 1))) | 1, rng.getrandbits(64))
            for _ in range(capacity * 3 + 5)]
    for step in range(4000):
        key = rng.choice(keys)
        if rng.random() < 0.5:
            want = ref.get(key)
            if want is not None:
                ref.move_to_end(key)
            assert cache.get(key) == want
        else:
            ref[key] = float(step)
            ref.move_to_end(key)
            if len(ref) > capacity:
                ref.popitem(last=False)
            cache.put(key, float(step))
        assert len(cache) == len(ref) <= capacity
    assert cache.keys_newest_first() == list(reversed(ref))
    for key, score in ref.items():
        assert cache.get(key) == score


def test_keys_are_the_ids_and_the_salt():
    cache = ScoreCache(10, namespace="model|bfloat16")
    base = cache.key(pair(4, 5))
    assert cache.key(pair(4, 5)) == base
    assert cache.key(pair(4, 6)) != base
    assert cache.key(pair(5, shared=(1, 2, 3, 4))) == base  # the same prompt, split elsewhere
    assert cache.key(pair(4, 5, salt="tenant-a")) != base
    assert ScoreCache(10, namespace="model|float32").key(pair(4, 5)) != base


def test_bound_hits_misses_and_off():
    cache = ScoreCache(2)
    a, b, c = (cache.key(pair(i)) for i in (7, 8, 9))
    cache.put(a, 0.25)
    cache.put(b, 0.5)
    assert cache.get(a) == 0.25  # a is now newer than b
    cache.put(c, 0.75)  # evicts b
    assert cache.get(b) is None and cache.get(c) == 0.75 and cache.get(a) == 0.25
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    assert cache.nbytes == 4 * 32
    off = ScoreCache(0)
    off.put(a, 1.0)
    assert not off.enabled and off.get(a) is None and len(off) == 0


def test_a_million_entries_fit_in_tens_of_megabytes():
    assert ScoreCache(1_000_000).nbytes == 64 * 2**20


def test_offline_the_cache_is_off_by_default_and_on_when_asked(tiny_model):
    from inputs import DOCUMENTS, QUERIES

    from qrank import EngineArgs
    from qrank.engine.engine import Engine

    assert not Engine(EngineArgs(str(tiny_model), dtype="float32")).score_cache.enabled
    engine = Engine(EngineArgs(str(tiny_model), dtype="float32", score_cache_entries=100))
    batches = []
    engine.on_batch = batches.append
    pairs = engine.encode(QUERIES[0], DOCUMENTS[:6])
    first = engine.score_tokens(pairs + pairs[:2])  # a repeat inside one job is computed once
    assert sum(b.num_pairs for b in batches) == 6
    assert first[6:] == first[:2]
    batches.clear()
    assert engine.score_tokens(pairs) == first[:6]
    assert batches == [] and engine.score_cache.hits == 6
