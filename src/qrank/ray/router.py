"""Query-affinity routing for the engine replicas, as a Ray Serve request router.

Each request carries an ``affinity`` key: a hash of its query side (template head + query).
Replicas are ranked for the key by rendezvous hashing (consistent: when a replica comes or
goes, only its own keys move), and the first one gets the request while it stays within the
bound of consistent hashing with bounded loads (``load_factor`` 1.25 times the mean load,
counting this request); past that bound, or when the replica is full
(``max_ongoing_requests``), the request goes to the least-loaded replica. So a query's requests
keep landing where its prefix is cached, and a hot query cannot swamp one replica.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from qrank.tokenize import PairTokens


def affinity_key(pair: PairTokens) -> int:
    """A stable 64-bit hash of a pair's query side (the same in every process)."""
    digest = hashlib.blake2b(array("q", pair.shared).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rendezvous_order(key: int, replica_ids: list[str]) -> list[int]:
    """Indices of ``replica_ids``, most preferred for ``key`` first (highest random weight)."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{key}:{rid}".encode(), digest_size=8).digest()

    return sorted(range(len(replica_ids)), key=lambda i: weight(replica_ids[i]), reverse=True)


def choose(key: int | None, replica_ids: list[str], loads: list[int],
           load_factor: float) -> tuple[list[int], list[int]]:
    """The ranks to try: (first, then) as indices into ``replica_ids``. ``first`` is the key's
    own replica while taking the request keeps it within the bound of consistent hashing with
    bounded loads, ``ceil(load_factor * (ongoing + 1) / replicas)``; else empty."""
    everyone = list(range(len(replica_ids)))
    if key is None or len(replica_ids) < 2:
        return [], everyone
    top = rendezvous_order(key, replica_ids)[0]
    bound = math.ceil(load_factor * (sum(loads) + 1) / len(loads))
    if loads[top] + 1 > bound:
        return [], everyone
    return [top], [i for i in everyone if i != top]


class QueryAffinityRouter(RequestRouter):
    """Ray Serve request router: the query's own replica first, the least-loaded after."""

    def initialize_state(self, load_factor: float = 1.25, **_: Any) -> None:
        self.load_factor = load_factor

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        key = None
        if pending_request is not None:
            key = pending_request.kwargs.get("affinity")
            pending_request.routing_context.should_backoff = True
        ids = [r.replica_id.unique_id for r in candidate_replicas]
        cache = self.replica_queue_len_cache
        loads = [cache.get(r.replica_id) or 0 for r in candidate_replicas]
        first, then = choose(key, ids, loads, getattr(self, "load_factor", 1.25))
        ranks = [[candidate_replicas[i] for i in first], [candidate_replicas[i] for i in then]]
        return [rank for rank in ranks if rank]
