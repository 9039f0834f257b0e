"""POST /rerank, /v1/rerank, /v2/rerank as vLLM, Jina and Cohere clients use them."""

import pytest

DOCS = ["The capital of China is Beijing.", "Gravity pulls.", "Beijing is big.", "Bananas."]
QUERY = "What is the capital of China?"


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_response_is_vllms(client, offline, path, request):
    r = client.post(path, json={"model": "tiny-reranker", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "model", "usage", "results"}
    assert body["model"] == "tiny-reranker"
    # the id is also the X-Request-Id header; Ray Serve's proxy gives every request its own
    # (a uuid), which the app takes as the client's, so only the plain server makes "rerank-..."
    assert r.headers["x-request-id"] == body["id"]
    if request.node.callspec.params["server"] == "plain":
        assert body["id"].startswith("rerank-")
    want = offline.score(QUERY, DOCS)
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for x in body["results"]:
        assert set(x) == {"index", "document", "relevance_score"}
        assert x["document"] == {"text": DOCS[x["index"]], "multi_modal": None}
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=1e-5)


def test_usage_counts_the_template_tokens(client, offline):
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    pairs = offline.engine.encode(QUERY, DOCS)
    usage = dict(body["usage"])
    assert usage.pop("cached_pairs") in (0, len(DOCS))
    assert usage == {"prompt_tokens": sum(len(p) for p in pairs),
                     "total_tokens": sum(len(p) for p in pairs)}
    assert body["usage"]["prompt_tokens"] > 48 * len(DOCS)  # prefix + suffix are 48 tokens


def test_top_n_and_return_documents(client):
    full = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    top = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2,
                                          "return_documents": False}).json()
    assert [x["index"] for x in top["results"]] == [x["index"] for x in full["results"][:2]]
    assert all("document" not in x for x in top["results"])
    everything = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                 "top_n": 0}).json()
    assert len(everything["results"]) == len(DOCS)
    more = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 99})
    assert len(more.json()["results"]) == len(DOCS)


def test_cohere_style_document_objects(client):
    strings = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    objects = client.post("/v2/rerank", json={
        "model": "qwen3-reranker", "query": QUERY, "documents": [{"text": d} for d in DOCS]
    }).json()
    assert objects["results"] == strings["results"]
    assert objects["model"] == "qwen3-reranker"


def test_instruction_and_truncation_fields(client, offline):
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:1],
                                           "instruction": "Find capitals"}).json()
    assert body["results"][0]["relevance_score"] == pytest.approx(
        offline.score(QUERY, DOCS[:1], "Find capitals")[0], abs=1e-5)
    long_doc = "lorem ipsum " * 300
    cut = client.post("/v1/rerank", json={"query": QUERY, "documents": [long_doc],
                                          "truncate_prompt_tokens": 100}).json()
    assert cut["usage"]["prompt_tokens"] == 100
    default = client.post("/v1/rerank", json={"query": QUERY, "documents": [long_doc],
                                              "truncate_prompt_tokens": -1}).json()
    assert default["usage"]["prompt_tokens"] > 600
    per_doc = client.post("/v1/rerank", json={"query": QUERY, "documents": [long_doc, "x"],
                                              "max_tokens_per_doc": 10}).json()
    n_short = client.post("/v1/rerank", json={"query": QUERY, "documents": ["x"]}).json()
    # the short pair's body is 3 tokens ("<Document", ">:", " x"); the long one keeps its
    # 2 label tokens and 10 of its text
    without_body = n_short["usage"]["prompt_tokens"] - 3
    assert per_doc["usage"]["prompt_tokens"] == (without_body + 12) + (without_body + 3)


def test_unknown_extra_fields_are_accepted(client):
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "not_a_field": 1})
    assert r.status_code == 200
