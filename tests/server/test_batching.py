"""Concurrent requests are batched together and get the scores they get alone."""

import asyncio
import re

import httpx
import pytest


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, flags=re.M)
    return float(m.group(1)) if m else 0.0


def test_32_concurrent_requests_batch_together_and_score_as_alone(server, client):
    requests = [
        {"query": f"question number {i} about topic {i % 5}",
         "documents": [f"document {i}-{j} " + "filler text " * (j + i % 3) for j in range(4)]}
        for i in range(32)
    ]
    before = client.get("/metrics").text

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            return await asyncio.gather(*[c.post("/v1/rerank", json=r) for r in requests])

    together = asyncio.run(send_all())
    after = client.get("/metrics").text
    alone = [client.post("/v1/rerank", json=r) for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert a.status_code == b.status_code == 200
        sa = {x["index"]: x["relevance_score"] for x in a.json()["results"]}
        sb = {x["index"]: x["relevance_score"] for x in b.json()["results"]}
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k] == pytest.approx(sb[k], abs=1e-5)

    batches = metric(after, "qrank_batch_requests_count") - metric(
        before, "qrank_batch_requests_count")
    single = metric(after, "qrank_batch_requests_bucket", '{le="1.0"}') - metric(
        before, "qrank_batch_requests_bucket", '{le="1.0"}')
    assert batches >= 1
    assert batches < 32, "128 pairs of 32 requests ran in as many batches as requests"
    assert single < batches, "no batch held pairs from several requests"
    pairs = metric(after, "qrank_pairs_scored_total") - metric(before, "qrank_pairs_scored_total")
    assert pairs == 128
