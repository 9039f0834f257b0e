"""Batching policy: pairs from many requests into batches under a token budget.

Pairs that share their query side (same token ids) are grouped, whatever request they came
from, so the shared prefix is computed once per batch (or taken from the prefix cache). A pair
alone with its query in a batch is computed under its template head (system prefix and
instruction), which the batch's lone pairs share in turn. Groups are served first come, first
served; a group larger than the budget is split across batches. The budget counts the tokens
actually computed, so a cached or shared prefix is counted once or not at all.

Pairs of requests with different ``cache_salt`` never share a prefix: in a batch or in the prefix
cache, a prefix is known by :func:`prefix_key`, its ids and its salt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from qrank.tokenize import PairTokens


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

    @property
    def num_pairs(self) -> int:
        return sum(len(g.items) for g in self.groups)

    @property
    def keys(self) -> list[Any]:
        return [it.key for g in self.groups for it in g.items]


class Scheduler:
    """Holds pending pairs and cuts them into batches.

    ``share_prefixes`` False makes every pair an independent sequence. ``is_cached`` tells
    whether a prefix (by its :func:`prefix_key`) is already cached (then it costs no tokens).
    """

    def __init__(
        self,
        max_num_batched_tokens: int,
        max_num_seqs: int = 256,
        share_prefixes: bool = True,
        is_cached: Callable[[Hashable], bool] | None = None,
    ) -> None:
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.share_prefixes = share_prefixes
        self.is_cached = is_cached or (lambda ids: False)
        self._pending: OrderedDict[Hashable, BatchGroup] = OrderedDict()
        self._num_pending = 0

    def __len__(self) -> int:
        """Number of pairs waiting."""
        return self._num_pending

    def add(self, items: list[WorkItem]) -> None:
        for item in items:
            shared, salt = item.tokens.shared, item.tokens.salt
            key = prefix_key(shared, salt) if self.share_prefixes else (shared, id(item))
            group = self._pending.get(key)
            if group is None:
                group = self._pending[key] = BatchGroup(shared, salt=salt)
            group.items.append(item)
        self._num_pending += len(items)

    def _cost(self, group: BatchGroup, taken: int, item: WorkItem,
              heads: set[Hashable], discount: int) -> tuple[int, int]:
        """``(tokens, discount)``: what adding ``item`` to a batch already holding ``taken``
        items of ``group`` costs, and the head tokens its group was not charged.

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
            return own + len(group.shared), 0
        if self.is_cached(group.key()):
            return own, 0
        n = item.tokens.head
        if not n:
            return own + len(group.shared), 0
        head = group.key(group.shared[:n])
        known = head in heads or self.is_cached(head)
        return own + len(group.shared) - (n if known else 0), n

    def next_batch(self) -> Batch | None:
        """The next batch, first come first served, or None when nothing waits."""
        if not self._pending:
            return None
        groups: list[BatchGroup] = []
        heads: set[Hashable] = set()  # prefix keys of the template heads this batch computes
        tokens = pairs = 0
        full = False
        for key in list(self._pending):
            group = self._pending[key]
            taken: list[WorkItem] = []
            discount = 0
            for item in group.items:
                cost, new_discount = self._cost(group, len(taken), item, heads, discount)
                over = tokens + cost > self.max_tokens or pairs + 1 > self.max_seqs
                if over and pairs > 0:
                    full = True
                    break
                if new_discount:  # a lone pair so far, under its head
                    heads.add(group.key(group.shared[:new_discount]))
                taken.append(item)
                discount = new_discount
                tokens += cost
                pairs += 1
            if taken:
                groups.append(BatchGroup(group.shared, taken, group.salt))
                del group.items[: len(taken)]
                if not group.items:
                    del self._pending[key]
            if full:
                break
        self._num_pending -= pairs
        return Batch(groups, tokens)

    def plan(self, items: list[WorkItem]) -> list[Batch]:
        """All batches for an offline job, shortest pairs first so lengths in a batch match."""
        self.add(sorted(items, key=len_key))
        batches = []
        while (batch := self.next_batch()) is not None:
            batches.append(batch)
        return batches


def len_key(item: WorkItem) -> int:
    return len(item.tokens)
