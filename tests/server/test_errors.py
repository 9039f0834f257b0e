"""Every client error gets a 4xx with an OpenAI-style body, and the server stays up."""

import asyncio
import json

import httpx
import pytest
from serving import ServerProcess

GOOD = {"query": "q", "documents": ["a"]}


def assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and isinstance(err["type"], str)
    for w in words:
        assert w in err["message"], err["message"]
    return err


@pytest.fixture(autouse=True)
def server_stays_up(request):
    yield
    if "client" in request.fixturenames:  # (the `limited` server's tests check it themselves)
        assert request.getfixturevalue("client").get("/health").status_code == 200


BAD_REQUESTS = [
    ("malformed json", b'{"query": "q", "documents": [', "not valid JSON"),
    ("not an object", b'["q", "a"]', "JSON object"),
    ("missing query", json.dumps({"documents": ["a"]}).encode(), "query"),
    ("missing documents", json.dumps({"query": "q"}).encode(), "documents"),
    ("wrong query type", json.dumps({"query": 3, "documents": ["a"]}).encode(), "query"),
    ("wrong documents type", json.dumps({"query": "q", "documents": "a"}).encode(), "documents"),
    ("document object without text",
     json.dumps({"query": "q", "documents": [{"txt": "a"}]}).encode(), "documents"),
    ("empty documents", json.dumps({"query": "q", "documents": []}).encode(), "at least 1"),
    ("negative top_n", json.dumps({**GOOD, "top_n": -1}).encode(), "top_n"),
    ("top_n not an int", json.dumps({**GOOD, "top_n": "two"}).encode(), "top_n"),
    ("bad truncate_prompt_tokens", json.dumps({**GOOD, "truncate_prompt_tokens": -5}).encode(),
     "truncate_prompt_tokens"),
    ("zero max_tokens_per_doc", json.dumps({**GOOD, "max_tokens_per_doc": 0}).encode(),
     "max_tokens_per_doc"),
]


@pytest.mark.parametrize("name,payload,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_rerank_requests_get_400(client, name, payload, words):
    r = client.post("/v1/rerank", content=payload, headers={"content-type": "application/json"})
    assert_error(r, 400, words)


def test_form_encoded_body_is_told_to_send_json(client):
    r = client.post("/v1/rerank", data={"query": "q"})
    assert_error(r, 400, "Content-Type: application/json")


def test_unknown_model_gets_404(client):
    err = assert_error(client.post("/v1/rerank", json={**GOOD, "model": "gpt-4"}), 404,
                       "gpt-4", "tiny-reranker")
    assert err["param"] == "model"


def test_input_over_max_model_len_without_truncation(client):
    r = client.post("/v1/rerank", json={"query": "q", "documents": ["word " * 9000],
                                        "truncate": False})
    assert_error(r, 400, "more than the maximum of 8192", "truncation")
    r = client.post("/v1/rerank", json={"query": "q", "documents": ["word " * 100],
                                        "truncation": False, "truncate_prompt_tokens": 60})
    assert_error(r, 400, "more than the maximum of 60")


def test_truncate_prompt_tokens_beyond_max_model_len(client):
    r = client.post("/v1/rerank", json={**GOOD, "truncate_prompt_tokens": 100000})
    assert_error(r, 400, "max_model_len")


def test_truncate_prompt_tokens_below_the_template(client):
    r = client.post("/v1/rerank", json={**GOOD, "truncate_prompt_tokens": 20})
    assert_error(r, 400, "template")


def test_bad_score_requests(client):
    assert_error(client.post("/v1/score", json={"text_1": ["a", "b"], "text_2": ["c"]}), 400,
                 "as many texts")
    assert_error(client.post("/v1/score", json={"text_1": "a", "text_2": []}), 400,
                 "at least one")
    assert_error(client.post("/v1/score", json={"text_1": "a"}), 400, "text_2")


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(client.get("/v1/rerank"), 405, "GET")


@pytest.fixture(scope="module")
def limited(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "limited.log"
    srv = ServerProcess.start(tiny_model, "--dtype", "float32", "--max-docs-per-request", "5",
                              "--max-request-bytes", "20000", "--max-queued-pairs", "12",
                              "--max-num-batched-tokens", "512", log=log)
    yield srv
    srv.terminate()


def test_limits(limited):
    with httpx.Client(base_url=limited.url, timeout=120) as c:
        assert_error(c.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 6}), 400,
                     "6 documents", "limit is 5")
        assert_error(c.post("/v1/score", json={"text_1": "q", "text_2": ["a"] * 6}), 400,
                     "6 pairs")
        assert_error(c.post("/v1/rerank", json={"query": "q", "documents": ["a" * 25000]}),
                     413, "20000 bytes")
        # chunked upload without Content-Length is counted too
        chunks = (b'{"query": "q", "documents": ["' + b"a" * 15000, b"a" * 15000, b'"]}')
        r = c.post("/v1/rerank", content=iter(chunks),
                   headers={"content-type": "application/json"})
        assert_error(r, 413, "20000 bytes")
        assert c.get("/health").status_code == 200


def test_full_queue_gets_503_with_retry_after(limited):
    doc = "word " * 600

    async def flood():
        async with httpx.AsyncClient(base_url=limited.url, timeout=300) as c:
            return await asyncio.gather(*[
                c.post("/v1/rerank", json={"query": f"q{i}", "documents": [doc] * 5})
                for i in range(12)
            ])

    rs = asyncio.run(flood())
    statuses = [r.status_code for r in rs]
    assert 200 in statuses and 503 in statuses, statuses
    for r in rs:
        if r.status_code == 503:
            assert_error(r, 503, "busy")
            assert r.headers["retry-after"] == "1"
        else:
            assert r.status_code == 200
    assert httpx.get(limited.url + "/health").status_code == 200


LONE = "bad \ud800 text"
STRING_FIELDS = {
    "/v1/rerank": {"query": "q", "documents": ["a", "b"], "instruction": "i", "model": None,
                   "cache_salt": "s", "user": "u", "request_id": "r"},
    "/score": {"text_1": "q", "text_2": ["a", "b"], "instruction": "i", "model": None,
               "cache_salt": "s", "user": "u", "request_id": "r"},
}


def lone_surrogate_cases():
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score"):
        base = STRING_FIELDS["/score" if "score" in path else "/v1/rerank"]
        for field, value in base.items():
            body = {k: v for k, v in base.items() if v is not None and k != field}
            body[field] = [value[0], LONE] if isinstance(value, list) else LONE
            yield pytest.param(path, field, body, id=f"{path}-{field}")
        if "rerank" in path:
            yield pytest.param(path, "documents", {"query": "q", "documents": [{"text": LONE}]},
                               id=f"{path}-document-object")
    yield pytest.param("/v1/score", "text_1", {"text_1": [LONE], "text_2": ["a"]},
                       id="/v1/score-queries-list")
    for first, second in (("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        yield pytest.param("/v1/score", first, {first: LONE, second: "a"}, id=f"/v1/score-{first}")
        yield pytest.param("/v1/score", second, {first: "q", second: ["a", LONE]},
                           id=f"/v1/score-{second}")


@pytest.mark.parametrize(("path", "field", "body"), list(lone_surrogate_cases()))
def test_lone_surrogates_get_400_naming_the_field(client, path, field, body):
    raw = json.dumps(body, ensure_ascii=True).encode()  # keeps "\ud800" as a JSON escape
    assert b"\\ud800" in raw
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and "surrogate" in error["message"]
    assert error["param"].startswith(field)
    assert client.get("/health").status_code == 200


def test_control_characters_and_nul_are_text_and_score(client):
    body = {"query": "tab\tnul\u0000bell\u0007", "documents": ["line\nbreak\u0000", "\u001b[0m"]}
    r = client.post("/v1/rerank", content=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2
