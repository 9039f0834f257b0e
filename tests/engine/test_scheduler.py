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


# ---- policies: fair, fcfs, priority ------------------------------------------------------
def request(name, n, own_len=20, q=None, shared_len=10):
    """``n`` pairs of one request; all under one query side (``q``, default: its own)."""
    q = hash(name) % 1000 if q is None else q
    return [item(shared_len, own_len, (name, i), q=q) for i in range(n)]


def drain(s):
    """The batches left, each as the list of request names of its pairs, in order taken."""
    out = []
    while (b := s.next_batch()) is not None:
        assert b.num_tokens <= s.max_tokens
        out.append([k[0] for g in b.groups for k in (it.key for it in g.items)])
    return out


def finished_at(batches, name):
    return max(i for i, names in enumerate(batches) if name in names)


def test_fair_lets_a_small_request_pass_a_large_one_queued_ahead():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("big", 100), request="big")
    s.next_batch()  # big alone for a batch
    s.add(request("small", 3), request="small")
    batches = drain(s)
    assert finished_at(batches, "small") == 0  # the very next batch
    assert finished_at(batches, "big") > 5


def test_a_small_request_passes_a_large_newcomer_that_came_just_before_it():
    # Both newcomers start one batch behind; the one that fits in a batch ends first in
    # virtual time, so it does not share its batch with the large one pair for pair.
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("big", 100), request="big")
    s.next_batch()
    s.add(request("big2", 100), request="big2")
    s.add(request("small", 5), request="small")  # 10 + 5 * 20 = 110 tokens: fits one batch
    first = s.next_batch().keys
    assert [k[0] for k in first][:5] == ["small"] * 5


def test_a_request_with_less_than_a_batch_left_finishes_before_it_shares_again():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("a", 100), request="a")
    s.add(request("b", 100), request="b")
    s.add(request("c", 3), request="c")  # 70 tokens, arriving with them
    first = s.next_batch().keys
    assert [k[0] for k in first][:3] == ["c"] * 3


def test_fcfs_serves_the_large_request_first():
    s = Scheduler(max_num_batched_tokens=200, policy="fcfs")
    s.add(request("big", 100), request="big")
    s.next_batch()
    s.add(request("small", 3), request="small")
    batches = drain(s)
    assert finished_at(batches, "small") >= finished_at(batches, "big")


def test_fair_shares_each_batch_by_tokens():
    s = Scheduler(max_num_batched_tokens=400, policy="fair")
    s.add(request("long", 50, own_len=40), request="long")
    s.add(request("short", 200, own_len=10), request="short")  # both over a batch long
    b = s.next_batch()
    spent = {"long": 0, "short": 0}
    for g in b.groups:
        for it in g.items:
            spent[it.key[0]] += len(it.tokens.own)
        spent[g.items[0].key[0]] += len(g.shared)  # each group pays its query side once
    # tokens, not pairs, are shared: within one pair (40 tokens) of each other
    assert abs(spent["long"] - spent["short"]) <= 40 + 10
    assert b.num_tokens == sum(spent.values())


def test_a_newcomer_takes_at_most_one_batch_before_it_shares():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("a", 200), request="a")
    for _ in range(5):
        s.next_batch()
    s.add(request("b", 200), request="b")
    batches = drain(s)
    assert set(batches[0]) == {"b"}  # its first batch: all its own
    for names in batches[1:10]:  # then the two share, pair for pair
        assert abs(names.count("a") - names.count("b")) <= 1


def test_virtual_time_never_runs_back():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("a", 100), request="a")
    s.next_batch()
    s.add(request("b", 100), request="b")
    s.next_batch()  # b catches up on its credit
    s.add(request("c", 100), request="c")  # starts one batch behind a and b, not behind b's start
    batches = drain(s)
    assert set(batches[0]) == {"c"}
    assert all({"a", "b", "c"} <= set(names) for names in batches[1:5])


def test_pairs_of_one_query_share_a_group_under_fair():
    s = Scheduler(max_num_batched_tokens=1000, policy="fair")
    s.add(request("r1", 3, q=7), request="r1")
    s.add(request("r2", 3, q=7), request="r2")
    b = s.next_batch()
    assert len(b.groups) == 1 and b.num_pairs == 6
    assert b.num_tokens == 10 + 6 * 20  # the shared query side counted once


def test_a_request_takes_its_pairs_query_by_query():
    s = Scheduler(max_num_batched_tokens=10_000, policy="fair")
    s.add([item(10, 20, ("r", i), q=i % 2) for i in range(6)], request="r")
    b = s.next_batch()
    assert [len(g.items) for g in b.groups] == [3, 3]


def test_priority_serves_the_lowest_value_first_and_ties_fairly():
    s = Scheduler(max_num_batched_tokens=200, policy="priority")
    s.add(request("later", 40), request="later", priority=5)
    s.add(request("first", 20), request="first", priority=-1)
    s.add(request("tie", 40), request="tie", priority=5)
    batches = drain(s)
    others = min(i for i, b in enumerate(batches) if "later" in b or "tie" in b)
    assert finished_at(batches, "first") <= others
    # equal priority: "later" and "tie" share the batches rather than one after the other
    assert abs(finished_at(batches, "later") - finished_at(batches, "tie")) <= 1
    # pair for pair, until one has less than a batch (~9 pairs) left, which it then finishes
    assert all(abs(b.count("later") - b.count("tie")) <= 1 for b in batches[others + 1:-4])


def test_priority_is_ignored_by_fair():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("a", 20), request="a", priority=9)
    s.add(request("b", 20), request="b", priority=-9)
    first = s.next_batch().keys
    assert {k[0] for k in first} == {"a", "b"}


def test_remove_drops_a_requests_waiting_pairs():
    s = Scheduler(max_num_batched_tokens=200, policy="fair")
    s.add(request("gone", 50), request="gone")
    s.add(request("kept", 20), request="kept")
    first = s.next_batch()
    assert s.num_requests == 2
    assert s.remove("gone") == 50 - sum(k[0] == "gone" for k in first.keys)
    assert s.remove("gone") == 0
    assert s.num_requests == 1
    assert all(set(b) == {"kept"} for b in drain(s))
    assert len(s) == 0 and s.num_requests == 0


def test_unknown_policy_is_refused():
    import pytest

    with pytest.raises(ValueError, match="scheduling policy"):
        Scheduler(100, policy="lifo")
