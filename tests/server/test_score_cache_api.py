"""Repeated pairs are answered from the score cache: same scores, no engine work, salted."""

import pytest
from test_batching import metric

QUERY = "which planet is known as the red planet?"
DOCS = ["Mars looks red because of iron oxide.", "Venus is the hottest planet.",
        "The red planet is Mars.", "Bananas are yellow."]


def counters(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {name: metric(text, name) for name in (
        "qrank_score_cache_hits_total", "qrank_score_cache_misses_total",
        "qrank_batch_pairs_count", "qrank_pairs_scored_total", "qrank_score_cache_entries")}


def moved(before, after) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def scores(body) -> dict[int, float]:
    return {x["index"]: x["relevance_score"] for x in body["results"]}


def test_a_repeated_request_is_answered_from_the_cache_without_a_batch(client, offline):
    request = {"query": QUERY + " (cache test)", "documents": DOCS}
    before = counters(client)
    first = client.post("/v1/rerank", json=request).json()
    middle = counters(client)
    again = client.post("/v1/rerank", json=request).json()
    after = counters(client)
    assert moved(before, middle)["qrank_score_cache_misses_total"] == len(DOCS)
    assert moved(before, middle)["qrank_batch_pairs_count"] >= 1
    assert first["usage"]["cached_pairs"] == 0
    step = moved(middle, after)
    assert step["qrank_score_cache_hits_total"] == len(DOCS)
    assert step["qrank_batch_pairs_count"] == 0, "a cached request ran a forward batch"
    assert step["qrank_pairs_scored_total"] == len(DOCS)  # answered pairs still count
    assert again["usage"]["cached_pairs"] == len(DOCS)
    assert again["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    assert scores(again) == scores(first)  # bit for bit
    want = offline.score(request["query"], DOCS)
    for i, s in scores(again).items():
        assert s == pytest.approx(want[i], abs=1e-5)


def test_a_partly_seen_request_computes_only_the_new_pairs(client):
    query = QUERY + " (partial)"
    client.post("/v1/rerank", json={"query": query, "documents": DOCS[:2]})
    before = counters(client)
    body = client.post("/v1/rerank", json={"query": query, "documents": DOCS}).json()
    step = moved(before, counters(client))
    assert body["usage"]["cached_pairs"] == 2
    assert step["qrank_score_cache_hits_total"] == 2
    assert step["qrank_score_cache_misses_total"] == 2


@pytest.mark.parametrize("change", [
    {"cache_salt": "tenant-b"}, {"instruction": "Find passages about astronomy"},
    {"truncate_prompt_tokens": 60}])
def test_other_salts_instructions_or_truncation_miss(client, change):
    request = {"query": QUERY + " (miss test)", "documents": DOCS, "cache_salt": "tenant-a"}
    client.post("/v1/rerank", json=request)
    before = counters(client)
    body = client.post("/v1/rerank", json={**request, **change}).json()
    step = moved(before, counters(client))
    assert body["usage"]["cached_pairs"] == 0
    assert step["qrank_score_cache_hits_total"] == 0
    assert step["qrank_batch_pairs_count"] >= 1


def test_the_score_route_shares_the_cache(client):
    client.post("/v1/rerank", json={"query": QUERY + " (score)", "documents": DOCS})
    before = counters(client)
    body = client.post("/v1/score", json={"text_1": QUERY + " (score)", "text_2": DOCS}).json()
    assert body["usage"]["cached_pairs"] == len(DOCS)
    assert moved(before, counters(client))["qrank_batch_pairs_count"] == 0


def test_the_server_bound_holds(tiny_model, tmp_path):
    from serving import ServerProcess

    srv = ServerProcess.start(tiny_model, "--dtype", "float32", "--score-cache-entries", "3",
                              log=tmp_path / "server.log")
    try:
        import httpx

        with httpx.Client(base_url=srv.url, timeout=60) as c:
            c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
            after = counters(c)
            assert after["qrank_score_cache_entries"] == 3
            again = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
            # the oldest of the 4 pairs was evicted: 3 are answered, 1 computed again
            assert again["usage"]["cached_pairs"] == 3
    finally:
        srv.terminate()
