"""The app on 2 Ray Serve replicas: query-affinity routing, and a replica killed under load
loses no request. (The HTTP API tests in tests/server run against it too.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from qrank import Reranker


def test_affinity_choice_is_consistent_and_load_bounded():
    from qrank.ray.router import choose, rendezvous_order

    ids = ["a", "b", "c", "d"]
    firsts = {k: choose(k, ids, [0, 0, 0, 0], 1.25)[0] for k in range(200)}
    assert all(len(f) == 1 for f in firsts.values())
    assert len({f[0] for f in firsts.values()}) == 4  # keys spread over every replica
    # a replica leaving moves only its own keys
    for k, (top,) in firsts.items():
        if ids[top] != "b":
            order = rendezvous_order(k, ["a", "c", "d"])
            assert ["a", "c", "d"][order[0]] == ids[top]
    # an overloaded replica is passed over for the least-loaded one (the second rank)
    k = next(k for k, f in firsts.items() if f == [0])
    assert choose(k, ids, [3, 1, 1, 1], 1.25) == ([], [0, 1, 2, 3])  # 4 > ceil(1.25 * 7 / 4)
    assert choose(k, ids, [1, 1, 1, 1], 1.25)[0] == [0]  # 2 <= ceil(1.25 * 5 / 4)
    assert choose(k, ["a", "b"], [3, 0], 1.25)[0] == []  # one hot query spreads


def test_a_query_keeps_its_replica(ray_server):
    """Each repeat of a request lands where its scores are cached (random routing over 2
    replicas would miss half the time)."""
    request = {"query": "affinity: which replica?", "documents": ["one", "two", "three"]}
    with httpx.Client(base_url=ray_server.url, timeout=60) as c:
        c.post("/v1/rerank", json=request).raise_for_status()
        for _ in range(6):
            assert c.post("/v1/rerank", json=request).json()["usage"]["cached_pairs"] == 3


def test_killing_a_replica_under_200_concurrent_requests_loses_none(ray_server, tiny_model):
    import ray

    queries = [f"kill test query {q}" for q in range(20)]
    requests = [{"query": queries[i % 20], "documents": [f"doc {i} a", f"doc {i} bb"]}
                for i in range(200)]
    offline = Reranker(str(tiny_model), dtype="float32", threads=1)
    want = [offline.score(r["query"], r["documents"]) for r in requests]
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "QrankEngine" in a["name"]]
    assert len(replicas) == 2

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as c:
            tasks = [asyncio.ensure_future(c.post("/v1/score", json={
                "text_1": r["query"], "text_2": r["documents"]})) for r in requests]
            while sum(t.done() for t in tasks) < 20:
                await asyncio.sleep(0.01)
            victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
            ray.kill(victim, no_restart=True)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * 200
    for r, w in zip(responses, want, strict=True):
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(w, abs=1e-5)
    with httpx.Client(base_url=ray_server.url, timeout=60) as c:  # the ingress still answers
        assert c.get("/health").status_code == 200
        assert c.post("/v1/rerank", json=requests[0]).status_code == 200
