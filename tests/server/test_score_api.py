"""POST /score and /v1/score as vLLM's score API."""

import pytest


def scores(body):
    return [d["score"] for d in body["data"]]


def test_one_to_many_response_is_vllms(client, offline, request):
    r = client.post("/v1/score", json={"model": "tiny-reranker", "text_1": "q",
                                       "text_2": ["a", "b", "c"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["object"] == "list" and r.headers["x-request-id"] == body["id"]
    if request.node.callspec.params["server"] == "plain":  # Ray Serve's proxy makes its own
        assert body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "score" for d in body["data"])
    assert scores(body) == pytest.approx(offline.score("q", ["a", "b", "c"]), abs=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_one_to_one_and_many_to_many(client, offline):
    one = client.post("/score", json={"text_1": "q", "text_2": "a"}).json()
    assert scores(one) == pytest.approx(offline.score("q", ["a"]), abs=1e-5)
    many = client.post("/v1/score", json={"text_1": ["q1", "q2"], "text_2": ["a", "b"]}).json()
    assert scores(many) == pytest.approx(
        [offline.score("q1", ["a"])[0], offline.score("q2", ["b"])[0]], abs=1e-5)


def test_queries_and_documents_aliases(client):
    a = client.post("/v1/score", json={"queries": "q", "documents": ["a", "b"]}).json()
    b = client.post("/v1/score", json={"text_1": "q", "text_2": ["a", "b"]}).json()
    assert scores(a) == scores(b)
