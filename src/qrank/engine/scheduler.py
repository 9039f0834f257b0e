"""Batching policy: pairs from many requests into batches under a token budget.

Pairs that share their query side (same token ids) are grouped in a batch, whatever request they
came from, so the shared prefix is computed once per batch (or taken from the prefix cache). A
pair alone with its query in a batch is computed under its template head (system prefix and
instruction), which the batch's lone pairs share in turn. A request's pairs are taken query by
query, so those of one query stay together; a group larger than the budget is split across
batches. The budget counts the tokens actually computed, so a cached or shared prefix is
counted once or not at all.

Pairs of requests with different ``cache_salt`` never share a prefix: in a batch or in the prefix
cache, a prefix is known by :func:`prefix_key`, its ids and its salt.

Which request's pair goes next is the policy (``--scheduling-policy``):

``fcfs``
    first come, first served: a request's pairs all go before the next request's.
``fair`` (the server's default)
    start-time fair queuing by tokens, the token-exact form of deficit round-robin, with
    requests ordered by when their next batch would end. Each waiting request carries a virtual
    clock, its *tag*: the tokens it has been served, counted from where it started. Taking a
    pair advances its request's tag by the tokens the pair costs the batch; the virtual time is
    the largest tag a pair was taken at. A request that arrives starts one batch budget
    (``max_num_batched_tokens``) before the virtual time: it may take up to one whole batch
    before it shares, so it is never owed more than that for the time before it came. The next
    pair comes from the request whose *next batch* would end first in virtual time: the
    smallest ``tag + min(tokens left, budget)`` (the earlier arrival on a tie). Requests with
    more than a batch left are so ordered by their tags alone and share each batch by tokens,
    about ``1/k`` each when ``k`` wait; a request that fits in one batch finishes ahead of any
    newcomer that does not, so it is done in the next batch whatever is queued ahead of it or
    arrives with it (ordering by start tags alone, two newcomers would share that batch pair
    for pair). In deficit round-robin terms: a quantum of one token a round, and a newcomer's
    deficit counter starts at one batch.
``priority``
    vLLM's: the lowest ``priority`` value first; requests of equal priority share as ``fair``
    (each priority level keeps its own virtual time).

A batch stops at the first pair that does not fit (a pair alone larger than the budget runs
alone), so the next batch starts with that pair: no request is passed over for being long.

Chunked prefill: with ``long_prefill_threshold`` set, a pair whose tokens after its template head
(all its tokens without prefix sharing) are more than that is a *long* pair, computed in pieces
of at most that many tokens, of equal size (:class:`Piece`), each over the keys and values of
those before it. Its pieces go one per batch at most, the next only in a later batch (the
engine runs batches one after another, so a piece always runs after the one before it); each
costs its tokens (the first also its head, unless cached), and the policy picks them as it picks
pairs, so other requests' pairs run in the batches between them. A long pair counts as one
waiting pair until its last piece is taken; :meth:`Scheduler.remove` drops its pieces left.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from qrank.tokenize import PairTokens

POLICIES = ("fair", "fcfs", "priority")


def prefix_key(ids: tuple[int, ...], salt: str = "") -> Hashable:
    """The key of a prefix in batches and in the prefix cache: its ids, with the request's
    ``cache_salt`` when it has one, so that tenants of different salts never share its keys
    and values (nor learn from timing whether another sent it). No salt: the ids alone."""
    return (salt, ids) if salt else ids


@dataclass
class WorkItem:
    """One pair to score and an opaque key the caller uses to route its score back."""

    tokens: PairTokens
    key: Any = None
    done: int = 0  # tokens of a long pair handed out in pieces so far


@dataclass
class Piece:
    """Tokens ``[start, end)`` of a long pair after its ``head`` (its template head computed as
    a prefix: ``tokens.ids[head + start : head + end]``), of ``total`` such tokens."""

    item: WorkItem
    head: int
    start: int
    end: int
    total: int

    @property
    def last(self) -> bool:
        """The pair's last piece: the one that gives its score."""
        return self.end == self.total


@dataclass
class BatchGroup:
    """Items of one batch that share the same query-side ids (and ``cache_salt``)."""

    shared: tuple[int, ...]
    items: list[WorkItem] = field(default_factory=list)
    salt: str = ""

    def key(self, ids: tuple[int, ...] | None = None) -> Hashable:
        """The prefix key of ``ids`` (default: the shared ids) under this group's salt."""
        return prefix_key(self.shared if ids is None else ids, self.salt)


@dataclass
class Batch:
    groups: list[BatchGroup]
    num_tokens: int
    pieces: list[Piece] = field(default_factory=list)  # of long pairs, one per pair at most

    @property
    def num_pairs(self) -> int:
        """Pairs this batch scores (a long pair's last piece counts, the others do not)."""
        return sum(len(g.items) for g in self.groups) + sum(p.last for p in self.pieces)

    @property
    def keys(self) -> list[Any]:
        return [it.key for g in self.groups for it in g.items] + [p.item.key for p in self.pieces]


@dataclass
class _Waiting:
    """One request's pairs still waiting, by query side, and its place in the queue."""

    request: Hashable
    priority: int
    seq: int  # arrival order
    tag: int  # virtual start time of its next pair (fair, priority)
    left: int = 0  # tokens still to compute, estimated as if no prefix were cached
    groups: OrderedDict[Hashable, deque[WorkItem]] = field(default_factory=OrderedDict)
    count: int = 0


class _Filling:
    """The batch being filled: its groups by query side, tokens, pairs and template heads."""

    def __init__(self) -> None:
        self.groups: dict[Hashable, BatchGroup] = {}
        self.discounts: dict[Hashable, int] = {}
        self.heads: set[Hashable] = set()  # prefix keys of the template heads it computes
        self.pieces: list[Piece] = []
        self.tokens = 0
        self.pairs = 0

    def batch(self) -> Batch:
        return Batch(list(self.groups.values()), self.tokens, self.pieces)


class Scheduler:
    """Holds pending pairs by request and cuts them into batches under ``policy``.

    ``share_prefixes`` False makes every pair an independent sequence. ``is_cached`` tells
    whether a prefix (by its :func:`prefix_key`) is already cached (then it costs no tokens).
    ``long_prefill_threshold`` > 0: pairs longer than that after their template head go in
    pieces of at most that many tokens (chunked prefill); 0: every pair goes whole.
    """

    def __init__(
        self,
        max_num_batched_tokens: int,
        max_num_seqs: int = 256,
        share_prefixes: bool = True,
        is_cached: Callable[[Hashable], bool] | None = None,
        policy: str = "fcfs",
        long_prefill_threshold: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"scheduling policy must be one of {', '.join(POLICIES)}, "
                             f"not {policy!r}")
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.share_prefixes = share_prefixes
        self.is_cached = is_cached or (lambda ids: False)
        self.policy = policy
        self.long_threshold = long_prefill_threshold
        self._waiting: dict[Hashable, _Waiting] = {}
        self._heap: list[tuple[tuple, int, Hashable]] = []  # (order, push count, request)
        self._pushes = itertools.count()
        self._arrivals = itertools.count()
        self._vtime: dict[int, int] = {}  # per priority level: the largest tag a pair was taken at
        self._credit = max_num_batched_tokens  # what a newcomer may take before it shares
        self._num_pending = 0

    def __len__(self) -> int:
        """Number of pairs waiting."""
        return self._num_pending

    @property
    def num_requests(self) -> int:
        """Number of requests with pairs waiting."""
        return len(self._waiting)

    def add(self, items: list[WorkItem], request: Hashable | None = None,
            priority: int = 0) -> None:
        """Queue the pairs of one request (a new one per call when ``request`` is None; more
        pairs of a request still waiting join it). ``priority`` counts under ``priority``."""
        if not items:
            return
        if request is None:
            request = ("anonymous", next(self._arrivals))
        waiting = self._waiting.get(request)
        if waiting is None:
            level = priority if self.policy == "priority" else 0
            waiting = self._waiting[request] = _Waiting(
                request, level, next(self._arrivals), self._vtime.get(level, 0) - self._credit)
            if self.policy == "fcfs":
                self._push(waiting)
        for item in items:
            shared, salt = item.tokens.shared, item.tokens.salt
            key = prefix_key(shared, salt) if self.share_prefixes else (shared, id(item))
            queue = waiting.groups.get(key)
            if queue is None:
                queue = waiting.groups[key] = deque()
                waiting.left += len(shared)  # a new query side computes its prefix once
            queue.append(item)
            waiting.left += len(item.tokens.own)
        waiting.count += len(items)
        self._num_pending += len(items)
        if self.policy != "fcfs":
            self._push(waiting)  # its order moved with what it has left; the old entry is stale

    def remove(self, request: Hashable) -> int:
        """Drop a request's waiting pairs (cancelled, failed, past its deadline); returns how
        many were dropped. Pairs already in a batch are not recalled."""
        waiting = self._waiting.pop(request, None)
        if waiting is None:
            return 0
        self._num_pending -= waiting.count
        if not self._waiting:
            self._heap.clear()  # else its heap entry is stale, skipped when it comes first
        return waiting.count

    def _order(self, w: _Waiting) -> tuple:
        if self.policy == "fcfs":
            return (w.seq,)
        finish = w.tag + min(w.left, self._credit)  # where its next batch would end
        if self.policy == "fair":
            return (finish, w.seq)
        return (w.priority, finish, w.seq)

    def _push(self, w: _Waiting) -> None:
        heapq.heappush(self._heap, (self._order(w), next(self._pushes), w.request))

    def _first(self) -> _Waiting | None:
        """The request whose pair goes next; stale heap entries are dropped on the way."""
        while self._heap:
            order, _, request = self._heap[0]
            w = self._waiting.get(request)
            if w is not None and self._order(w) == order:
                return w
            heapq.heappop(self._heap)
        return None

    def _cost(self, shared: tuple[int, ...], taken: int, item: WorkItem,
              heads: set[Hashable], discount: int) -> tuple[int, int]:
        """``(tokens, discount)``: what adding ``item`` to a batch already holding ``taken``
        items of its query side ``shared`` costs, and the head tokens its group was not
        charged.

        Its own tokens, plus the prefix when it is the group's first and not cached. A first
        item with a template head is charged its prefix without the head (``discount``), plus
        the head itself unless the batch already computes it (``heads``) or the cache holds
        it; the group's second item pays the discount back, since a group computes its whole
        prefix. The budget is so never exceeded, at worst overcounted by a head.
        """
        own = len(item.tokens.own)
        if taken > 0:
            return own + discount, 0
        if not self.share_prefixes:
            return own + len(shared), 0
        salt = item.tokens.salt
        if self.is_cached(prefix_key(shared, salt)):
            return own, 0
        n = item.tokens.head
        if not n:
            return own + len(shared), 0
        head = prefix_key(shared[:n], salt)
        known = head in heads or self.is_cached(head)
        return own + len(shared) - (n if known else 0), n

    def next_batch(self) -> Batch | None:
        """The next batch under the policy, or None when nothing waits."""
        if not self._waiting:
            return None
        fill = _Filling()
        while (w := self._first()) is not None:
            key, queue = next(iter(w.groups.items()))
            item = queue[0]
            if self._long(item):
                if not self._take_piece(fill, w, key, item):
                    break
                continue
            group = fill.groups.get(key)
            taken = len(group.items) if group is not None else 0
            cost, discount = self._cost(item.tokens.shared, taken, item, fill.heads,
                                        fill.discounts.get(key, 0))
            if fill.pairs > 0 and (fill.tokens + cost > self.max_tokens
                                   or fill.pairs + 1 > self.max_seqs):
                break
            if group is None:
                group = fill.groups[key] = BatchGroup(item.tokens.shared, salt=item.tokens.salt)
            if discount:  # a lone pair so far, under its head
                fill.heads.add(prefix_key(item.tokens.shared[:discount], item.tokens.salt))
            fill.discounts[key] = discount
            group.items.append(queue.popleft())
            fill.tokens += cost
            fill.pairs += 1
            self._took(w, key, cost)
        self._num_pending -= fill.pairs - sum(not p.last for p in fill.pieces)
        return fill.batch()

    def _head(self, item: WorkItem) -> int:
        """The tokens of ``item`` computed as its prefix when it goes in pieces."""
        return item.tokens.head if self.share_prefixes else 0

    def _long(self, item: WorkItem) -> bool:
        return 0 < self.long_threshold < len(item.tokens) - self._head(item)

    def _take_piece(self, fill: _Filling, w: _Waiting, key: Hashable, item: WorkItem) -> bool:
        """Put the next piece of the long pair ``item`` (first in ``w``'s queue ``key``) in
        the batch; False when it does not fit, or when one of its pieces is there already
        (the next needs that one's keys and values)."""
        if any(p.item is item for p in fill.pieces):
            return False
        head = self._head(item)
        total = len(item.tokens) - head
        size = -(-total // -(-total // self.long_threshold))  # equal pieces, none over it
        start, end = item.done, min(item.done + size, total)
        cost = end - start
        if start == 0 and head and not self.is_cached(
                prefix_key(item.tokens.shared[:head], item.tokens.salt)):
            cost += head
        if fill.pairs > 0 and (fill.tokens + cost > self.max_tokens
                               or fill.pairs + 1 > self.max_seqs):
            return False
        fill.pieces.append(Piece(item, head, start, end, total))
        item.done = end
        fill.tokens += cost
        fill.pairs += 1
        if end == total:
            w.groups[key].popleft()
        self._took(w, key, cost, whole=end == total)
        return True

    def _took(self, w: _Waiting, key: Hashable, cost: int, whole: bool = True) -> None:
        """Account for one pair of ``w`` (of query side ``key``) taken at ``cost`` tokens
        (``whole`` False: a piece of a long pair that has more to come)."""
        if whole:
            if not w.groups[key]:
                del w.groups[key]
            w.count -= 1
        if self.policy != "fcfs":
            self._vtime[w.priority] = max(self._vtime.get(w.priority, w.tag), w.tag)
            w.tag += cost
            w.left = max(w.left - cost, 0)
        if not w.count:
            heapq.heappop(self._heap)
            del self._waiting[w.request]
            if not self._waiting:
                self._heap.clear()  # only stale entries of removed requests were left
        elif self.policy != "fcfs":
            heapq.heapreplace(self._heap, (self._order(w), next(self._pushes), w.request))

    def plan(self, items: list[WorkItem]) -> list[Batch]:
        """All batches for an offline job, shortest pairs first so lengths in a batch match."""
        self.add(sorted(items, key=len_key))
        batches = []
        while (batch := self.next_batch()) is not None:
            batches.append(batch)
        return batches


def len_key(item: WorkItem) -> int:
    return len(item.tokens)
