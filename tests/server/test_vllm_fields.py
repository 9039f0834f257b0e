"""vLLM's pooling fields on /rerank and /score, /score's input shapes, and cache_salt isolating
the prefix cache, over HTTP against the session server."""

import json
import math

import pytest
from test_batching import metric
from test_errors import assert_error
from tokenizers import Tokenizer

QUERY = "which planet is known as the red planet?"
DOCS = ["Mars looks red because of iron oxide.", "Venus is the hottest planet.",
        "The red planet is Mars.", "Bananas are yellow."]
RERANK_PATHS = ["/rerank", "/v1/rerank", "/v2/rerank"]


def rerank_scores(body) -> list[float]:
    return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]


def score_scores(body) -> list[float]:
    return [d["score"] for d in body["data"]]


def ok(r):
    assert r.status_code == 200, r.text
    return r.json()


# ---- use_activation ------------------------------------------------------------------------
@pytest.mark.parametrize("path", RERANK_PATHS)
def test_use_activation_false_gives_the_logit_of_the_score(client, offline, path):
    query = f"{QUERY} (logits via {path})"
    logits = rerank_scores(ok(client.post(path, json={
        "query": query, "documents": DOCS, "use_activation": False})))
    scores = rerank_scores(ok(client.post(path, json={"query": query, "documents": DOCS})))
    assert [1 / (1 + math.exp(-x)) for x in logits] == pytest.approx(scores, abs=1e-6)
    assert logits == pytest.approx(offline.score(query, DOCS, use_activation=False), abs=1e-4)
    assert any(x < 0 for x in logits) or any(x > 1 for x in logits)  # not probabilities
    ranked = ok(client.post(path, json={"query": query, "documents": DOCS, "top_n": 2,
                                        "use_activation": False}))
    assert [r["index"] for r in ranked["results"]] == sorted(
        range(len(DOCS)), key=lambda i: -scores[i])[:2]


def test_use_activation_on_score_and_from_the_score_cache(client):
    query = f"{QUERY} (score logits)"
    scores = score_scores(ok(client.post("/v1/score", json={"text_1": query, "text_2": DOCS})))
    again = ok(client.post("/v1/score", json={"text_1": query, "text_2": DOCS,
                                              "use_activation": False}))
    assert again["usage"]["cached_pairs"] == len(DOCS)  # the cache holds logits
    logits = score_scores(again)
    assert [1 / (1 + math.exp(-x)) for x in logits] == pytest.approx(scores, abs=1e-6)
    explicit = ok(client.post("/score", json={"text_1": query, "text_2": DOCS,
                                              "use_activation": True}))
    assert score_scores(explicit) == scores  # bit for bit


# ---- request_id, user ----------------------------------------------------------------------
def on_ray(request) -> bool:
    return request.node.callspec.params.get("server") == "ray"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/score"])
def test_request_id_round_trips(client, path, request):
    body = {"query": QUERY, "documents": DOCS[:2]} if "rerank" in path else {
        "text_1": QUERY, "text_2": DOCS[:2]}
    r = client.post(path, json={**body, "request_id": "my-req-42"})
    assert ok(r)["id"] == "my-req-42"
    r = client.post(path, json=body, headers={"X-Request-Id": "hdr-7"})
    assert ok(r)["id"] == "hdr-7" and r.headers["x-request-id"] == "hdr-7"
    r = client.post(path, json={**body, "request_id": "body-1"},
                    headers={"X-Request-Id": "hdr-8"})
    made = ok(client.post(path, json=body))
    if on_ray(request):
        # Ray Serve's proxy gives every request an X-Request-Id (the client's, or a uuid it
        # makes) and sends it back; the body's request_id is then the id
        assert ok(r)["id"] == "body-1"
        return
    assert ok(r)["id"] == "hdr-8"  # the header wins, as in vLLM
    r = client.post(path, json={**body, "request_id": "my-req-42"})
    assert r.headers["x-request-id"] == "my-req-42"
    r = client.post(path, json=body)
    made = ok(r)["id"]
    assert made.startswith("rerank-" if "rerank" in path else "score-")
    assert r.headers["x-request-id"] == made
    assert ok(client.post(path, json=body))["id"] != made


def test_bad_request_ids_get_400_and_errors_echo_the_header(client, request):
    for bad in ["has space", "", "é", "x" * 257]:
        err = assert_error(client.post("/v1/rerank", json={
            "query": QUERY, "documents": DOCS, "request_id": bad}), 400, "request_id")
        assert err["param"] == "request_id"
    r = client.post("/v1/rerank", json={"documents": DOCS}, headers={"X-Request-Id": "e-1"})
    assert_error(r, 400, "query")
    assert r.headers["x-request-id"] == "e-1"
    if on_ray(request):
        return  # Serve's proxy vets the header itself
    err = assert_error(client.post("/v1/score", json={"text_1": "q", "text_2": "d"},
                                   headers={"X-Request-Id": "two words"}), 400, "X-Request-Id")
    assert err["param"] == "X-Request-Id"


def test_user_is_accepted_and_changes_nothing(client):
    plain = ok(client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}))
    with_user = ok(client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                   "user": "user-1234"}))
    assert rerank_scores(with_user) == rerank_scores(plain)
    ok(client.post("/v1/score", json={"text_1": "q", "text_2": "d", "user": "u"}))


# ---- chat_template_kwargs ------------------------------------------------------------------
def test_chat_template_kwargs_instruction_is_the_instruction(client, offline):
    instruction = "Find passages about astronomy"
    want = offline.score(QUERY, DOCS, instruction)
    for extra in [{"chat_template_kwargs": {"instruction": instruction}},
                  {"chat_template_kwargs": {"instruction": instruction, "other": [1, "x"]},
                   "instruction": instruction}]:
        body = ok(client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, **extra}))
        assert rerank_scores(body) == pytest.approx(want, abs=1e-5)
        body = ok(client.post("/score", json={"queries": QUERY, "documents": DOCS, **extra}))
        assert score_scores(body) == pytest.approx(want, abs=1e-5)
    # other variables alone leave the built-in template as it is
    body = ok(client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                              "chat_template_kwargs": {"enable_thinking": 0}}))
    assert rerank_scores(body) == pytest.approx(offline.score(QUERY, DOCS), abs=1e-5)


@pytest.mark.parametrize(("kwargs", "extra", "words"), [
    ({"instruction": "one"}, {"instruction": "two"}, ["differ"]),
    ({"instruction": 3}, {}, ["must be a string"]),
    ({"x": "\ud800"}, {}, ["surrogate"]),
    ({"\udfff": 1}, {}, ["surrogate"]),
])
def test_bad_chat_template_kwargs_get_400(client, kwargs, extra, words):
    for path, body in [("/v1/rerank", {"query": "q", "documents": ["d"]}),
                       ("/v1/score", {"text_1": "q", "text_2": "d"})]:
        raw = json.dumps({**body, **extra, "chat_template_kwargs": kwargs})  # keeps "\ud800"
        r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        err = assert_error(r, 400, *words)
        assert err["param"].startswith("chat_template_kwargs")


# ---- max_tokens_per_query and truncation_side ----------------------------------------------
def test_max_tokens_per_query_cuts_the_query_text(client, offline, tokenizer_dir):
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    query = "北京是中国的首都吗？🎉 and which planet is known as the red planet, by the way?"
    offsets = tok.encode(query, add_special_tokens=False).offsets
    for n in (1, 5, 9):
        cut = query[: offsets[n][0]]
        want = offline.score(cut, DOCS)
        body = ok(client.post("/v1/rerank", json={"query": query, "documents": DOCS,
                                                  "max_tokens_per_query": n}))
        assert rerank_scores(body) == pytest.approx(want, abs=1e-5)
        body = ok(client.post("/v1/score", json={"data_1": [query, "short"], "data_2": DOCS[:2],
                                                 "max_tokens_per_query": n}))
        assert score_scores(body)[0] == pytest.approx(want[0], abs=1e-5)
    whole = ok(client.post("/v1/rerank", json={"query": query, "documents": DOCS,
                                               "max_tokens_per_query": len(offsets)}))
    assert rerank_scores(whole) == pytest.approx(offline.score(query, DOCS), abs=1e-5)
    assert_error(client.post("/v1/rerank", json={"query": query, "documents": DOCS,
                                                 "max_tokens_per_query": 0}), 400,
                 "max_tokens_per_query")


def test_truncation_side_left_keeps_the_documents_end(client):
    tail = " and so the answer is that Mars is the red planet." * 3  # 36 tokens
    docs = ["alpha beta gamma " * 60 + tail, "one two three four " * 60 + tail]

    def run(side, path="/v1/rerank"):
        body = {"query": QUERY, "documents": docs, "truncate_prompt_tokens": 100,
                "truncation_side": side}
        if path == "/v1/score":
            body = {"text_1": QUERY, "text_2": docs, "truncate_prompt_tokens": 100,
                    "truncation_side": side}
        out = ok(client.post(path, json=body))
        assert out["usage"]["prompt_tokens"] == 2 * 100  # 78 of them the query side and suffix
        return out

    left = run("left")
    # only the shared tail is left of either document: the same score, and the same ids, so
    # a third document with that tail is answered from the score cache
    assert rerank_scores(left)[0] == pytest.approx(rerank_scores(left)[1], abs=1e-6)
    third = ok(client.post("/v1/rerank", json={
        "query": QUERY, "documents": ["x y z " * 60 + tail], "truncate_prompt_tokens": 100,
        "truncation_side": "left"}))
    assert third["usage"]["cached_pairs"] == 1
    right = run("right")
    assert abs(rerank_scores(right)[0] - rerank_scores(right)[1]) > 1e-4
    assert rerank_scores(run(None)) == rerank_scores(right)
    assert score_scores(run("left", "/v1/score")) == pytest.approx(rerank_scores(left),
                                                                   abs=1e-6)
    assert_error(client.post("/v1/rerank", json={"query": QUERY, "documents": docs,
                                                 "truncation_side": "middle"}), 400,
                 "truncation_side")


# ---- /score input shapes -------------------------------------------------------------------
NAMES = [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
         ("data_1", "data_2"), ("text_1", "items"), ("data_1", "documents")]


@pytest.mark.parametrize(("first", "second"), NAMES)
def test_score_shapes_under_every_name(client, offline, first, second):
    one = ok(client.post("/v1/score", json={first: "q", second: "a"}))
    assert score_scores(one) == pytest.approx(offline.score("q", ["a"]), abs=1e-5)
    for single in ("q", ["q"]):
        many = ok(client.post("/v1/score", json={first: single, second: ["a", "b", "c"]}))
        assert score_scores(many) == pytest.approx(offline.score("q", ["a", "b", "c"]),
                                                   abs=1e-5)
    zipped = ok(client.post("/score", json={first: ["q1", "q2"], second: ["a", "b"]}))
    assert score_scores(zipped) == pytest.approx(
        [offline.score("q1", ["a"])[0], offline.score("q2", ["b"])[0]], abs=1e-5)


def test_score_shape_errors_name_the_fields(client):
    err = assert_error(client.post("/v1/score", json={"queries": ["a", "b"],
                                                      "items": ["c", "d", "e"]}),
                       400, "queries has 2", "items has 3")
    assert err["param"] == "items"
    assert_error(client.post("/v1/score", json={"data_1": ["a", "b"], "data_2": "c"}), 400,
                 "data_1 has 2", "data_2 has 1")
    err = assert_error(client.post("/v1/score", json={"text_1": "a", "queries": "b",
                                                      "text_2": "c"}),
                       400, "text_1 and queries")
    assert err["param"] == "queries"
    err = assert_error(client.post("/v1/score", json={"queries": "a"}), 400,
                       "text_2", "documents", "items", "data_2")
    assert err["param"] == "text_2"
    assert_error(client.post("/v1/score", json={"documents": ["a"]}), 400, "text_1")
    assert_error(client.post("/v1/score", json={"data_1": "a", "items": []}), 400,
                 "items", "at least one")


# ---- cache_salt and the prefix cache -------------------------------------------------------
def prefix_hits(client) -> float:
    return metric(client.get("/metrics").text, "qrank_prefix_cache_hits")


def batches(client) -> float:
    return metric(client.get("/metrics").text, "qrank_batch_pairs_count")


def test_cache_salts_never_share_a_prefix_cache_entry(client):
    query = "a query two tenants both send, to see whether they share its prefix"

    def send(salt, docs):
        before, ran = prefix_hits(client), batches(client)
        extra = {} if salt is None else {"cache_salt": salt}
        body = ok(client.post("/v1/rerank", json={"query": query, "documents": docs, **extra}))
        assert body["usage"]["cached_pairs"] == 0 and batches(client) > ran  # computed
        return prefix_hits(client) - before

    assert send("tenant-a", [f"first {d}" for d in DOCS]) == 0  # computed and kept under a
    assert send("tenant-b", [f"second {d}" for d in DOCS]) == 0  # b never finds a's entry
    assert send(None, [f"third {d}" for d in DOCS]) == 0  # nor does a request with no salt
    assert send("tenant-a", [f"fourth {d}" for d in DOCS]) == 1  # a finds its own
    assert send("tenant-b", [f"fifth {d}" for d in DOCS]) == 1  # b its own
    assert send(None, [f"sixth {d}" for d in DOCS]) == 1  # unsalted requests share as before
