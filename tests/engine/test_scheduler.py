from qrank.engine.scheduler import Scheduler, WorkItem
from qrank.tokenize import PairTokens


def item(shared_len, own_len, key, q=0):
    return WorkItem(PairTokens(tuple([q] * shared_len), tuple(range(own_len))), key)


def test_pairs_of_one_query_form_one_group_across_requests():
    s = Scheduler(max_num_batched_tokens=1000)
    s.add([item(50, 10, ("r1", i)) for i in range(3)])
    s.add([item(30, 10, ("r2", 0), q=1)])
    s.add([item(50, 10, ("r3", i)) for i in range(2)])
    batch = s.next_batch()
    assert len(batch.groups) == 2
    assert [it.key[0] for it in batch.groups[0].items] == ["r1", "r1", "r1", "r3", "r3"]
    # the shared prefix is counted once per group
    assert batch.num_tokens == 50 + 5 * 10 + 30 + 10
    assert s.next_batch() is None


def test_budget_splits_batches_first_come_first_served():
    s = Scheduler(max_num_batched_tokens=100)
    s.add([item(0, 40, i, q=i) for i in range(5)])
    sizes = []
    while (b := s.next_batch()) is not None:
        assert b.num_tokens <= 100
        sizes.append([it.key for g in b.groups for it in g.items])
    assert sizes == [[0, 1], [2, 3], [4]]


def test_an_oversized_pair_runs_alone():
    s = Scheduler(max_num_batched_tokens=100)
    s.add([item(0, 500, "big"), item(0, 10, "small", q=1)])
    assert s.next_batch().keys == ["big"]
    assert s.next_batch().keys == ["small"]


def test_cached_prefix_costs_nothing():
    cached = {tuple([0] * 50)}
    s = Scheduler(max_num_batched_tokens=100, is_cached=cached.__contains__)
    s.add([item(50, 10, i) for i in range(10)])
    batch = s.next_batch()
    assert batch.num_pairs == 10 and batch.num_tokens == 100


def test_max_num_seqs_and_no_sharing():
    s = Scheduler(max_num_batched_tokens=10_000, max_num_seqs=3, share_prefixes=False)
    s.add([item(20, 5, i) for i in range(5)])
    b = s.next_batch()
    assert b.num_pairs == 3 and len(b.groups) == 3 and b.num_tokens == 3 * 25
    assert len(s) == 2


def lone(head_len, query_len, own_len, key, q):
    """A pair alone with its query, whose first ``head_len`` ids are the template head."""
    shared = (9,) * head_len + (q,) * query_len
    return WorkItem(PairTokens(shared, tuple(range(own_len)), head=head_len), key)


def test_lone_pairs_share_their_template_head_in_the_budget():
    s = Scheduler(max_num_batched_tokens=1000)
    s.add([lone(40, 5, 10, i, q=i) for i in range(3)])
    # the first pays its whole prefix; the others, under the same head, only the query part
    assert s.next_batch().num_tokens == (40 + 5 + 10) + 2 * (5 + 10)


def test_a_second_pair_of_one_query_pays_the_head_back():
    s = Scheduler(max_num_batched_tokens=1000)
    s.add([lone(40, 5, 10, "a", q=1), lone(40, 5, 10, "b", q=2), lone(40, 5, 10, "c", q=2)])
    # "b" and "c" share their query side: their group computes it whole, head included
    assert s.next_batch().num_tokens == (40 + 5 + 10) + (40 + 5 + 10) + 10


def test_a_cached_head_costs_nothing():
    cached = {(9,) * 40}
    s = Scheduler(max_num_batched_tokens=1000, is_cached=cached.__contains__)
    s.add([lone(40, 5, 10, i, q=i) for i in range(3)])
    assert s.next_batch().num_tokens == 3 * (5 + 10)


def test_salts_keep_prefixes_apart_in_batches_and_in_the_cache():
    def salted(key, salt, head=0):
        return WorkItem(PairTokens(tuple([7] * 40), tuple(range(5)), head, salt), key)

    cached = {("a", tuple([7] * 40))}  # tenant a's prefix is cached, under its salt
    s = Scheduler(max_num_batched_tokens=1000, is_cached=cached.__contains__)
    s.add([salted("a1", "a"), salted("b1", "b"), salted("n1", ""), salted("a2", "a")])
    batch = s.next_batch()
    assert [(g.salt, [it.key for it in g.items]) for g in batch.groups] == [
        ("a", ["a1", "a2"]), ("b", ["b1"]), ("", ["n1"])]
    assert [g.key() for g in batch.groups] == [
        ("a", tuple([7] * 40)), ("b", tuple([7] * 40)), tuple([7] * 40)]
    # a's prefix costs nothing; b and the unsalted pair each pay for their own
    assert batch.num_tokens == 2 * 5 + (40 + 5) + (40 + 5)
    # lone pairs of different salts never count one template head as computed for both
    s.add([WorkItem(PairTokens((1, 2, 3, q), (9,), 3, salt), q) for q, salt in
           enumerate(["x", "y", "x"])])
    assert s.next_batch().num_tokens == (3 + 1 + 1) + (3 + 1 + 1) + (1 + 1)
