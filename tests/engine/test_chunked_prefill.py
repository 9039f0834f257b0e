"""Chunked prefill in the scheduler: long pairs in pieces (the engine and the server: in
tests/server/test_long_pairs.py)."""

from qrank.engine.scheduler import Scheduler, WorkItem
from qrank.tokenize import PairTokens

HEAD = 10


def pair(n_shared: int, n_own: int, tag: int = 0) -> PairTokens:
    """A pair whose first HEAD ids are its template head."""
    return PairTokens(tuple([7] * HEAD + [tag] * (n_shared - HEAD)), tuple(range(n_own)),
                      head=HEAD)


def drain(s: Scheduler) -> list:
    batches = []
    while (b := s.next_batch()) is not None:
        batches.append(b)
    return batches


def test_a_long_pair_goes_in_equal_pieces_one_per_batch():
    s = Scheduler(1000, policy="fair", long_prefill_threshold=300)
    s.add([WorkItem(pair(30, 1000), "long")])  # 1020 tokens after its head: 4 pieces of 255
    assert len(s) == 1
    batches = drain(s)
    pieces = [p for b in batches for p in b.pieces]
    assert len(batches) == 4 and all(len(b.pieces) == 1 for b in batches)
    assert [(p.start, p.end) for p in pieces] == [(0, 255), (255, 510), (510, 765), (765, 1020)]
    assert [p.last for p in pieces] == [False, False, False, True]
    assert {p.head for p in pieces} == {HEAD}
    # the first piece also computes the head; a pair counts once, at its last piece
    assert [b.num_tokens for b in batches] == [265, 255, 255, 255]
    assert [b.num_pairs for b in batches] == [0, 0, 0, 1] and len(s) == 0


def test_a_cached_head_costs_nothing_and_short_pairs_go_whole():
    s = Scheduler(1000, long_prefill_threshold=300, is_cached={(7,) * HEAD}.__contains__)
    s.add([WorkItem(pair(30, 280), "short"), WorkItem(pair(30, 400, tag=1), "long")])
    first = s.next_batch()  # the short pair: its query side after the head, and its own
    assert [it.key for g in first.groups for it in g.items] == ["short"]
    assert first.pieces[0].item.key == "long" and first.num_tokens == 300 + 210


def test_other_requests_go_between_the_pieces():
    """Under fair, a small request sent while a long pair runs goes in the next batch."""
    s = Scheduler(500, policy="fair", long_prefill_threshold=500)
    s.add([WorkItem(pair(30, 2000), "long")], request="a")
    assert s.next_batch().pieces[0].start == 0
    s.add([WorkItem(pair(30, 50, tag=i + 1), f"small{i}") for i in range(3)], request="b")
    second = s.next_batch()
    assert sorted(second.keys) == ["small0", "small1", "small2"] and not second.pieces
    assert all(b.keys == ["long"] for b in drain(s))


def test_fcfs_keeps_a_long_pair_first_and_remove_drops_its_pieces():
    s = Scheduler(500, policy="fcfs", long_prefill_threshold=500)
    s.add([WorkItem(pair(30, 2000), "long")], request="a")
    s.add([WorkItem(pair(30, 50, tag=1), "small")], request="b")
    assert s.next_batch().keys == ["long"]
    assert s.next_batch().keys == ["long"]
    assert s.remove("a") == 1 and len(s) == 1
    assert [b.keys for b in drain(s)] == [["small"]]


def test_without_a_threshold_a_long_pair_goes_whole():
    s = Scheduler(500)
    s.add([WorkItem(pair(30, 2000), "long")])
    (batch,) = drain(s)
    assert batch.keys == ["long"] and not batch.pieces
