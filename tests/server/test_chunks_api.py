"""Long documents in windows over HTTP: max_chunks_per_doc and chunk_overlap_tokens on /rerank
and /score, the best window as ``chunk``, usage of every window, and the limits' 400s."""

import pytest

QUERY = "which clause covers termination of the contract?"
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # ~360 tokens
SHORT = "The capital of China is Beijing."
CHUNKED = {"truncate_prompt_tokens": 128, "max_chunks_per_doc": 20, "chunk_overlap_tokens": 8}


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_scores_the_best_window_and_says_where(client, offline, path):
    docs = [SHORT, LONG, "北京是中国的首都。👨‍👩‍👧 e\u0301cole " * 12]
    r = client.post(path, json={"query": QUERY, "documents": docs, **CHUNKED})
    assert r.status_code == 200, r.text
    body = r.json()
    windows = offline.engine.encode_docs(QUERY, docs, max_length=128, max_chunks=20, overlap=8)
    assert not windows[0].split and len(windows[1].pairs) > 3 and windows[2].split
    tokens = sum(len(p) for w in windows for p in w.pairs)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == tokens
    by_index = {x["index"]: x for x in body["results"]}
    assert "chunk" not in by_index[0]  # not split
    for i in (1, 2):
        chunk = by_index[i]["chunk"]
        assert set(chunk) == {"index", "start", "end", "relevance_score"}
        assert (chunk["start"], chunk["end"]) == windows[i].spans[chunk["index"]]
        assert chunk["relevance_score"] == by_index[i]["relevance_score"]
        alone = offline.score(QUERY, [docs[i][chunk["start"]:chunk["end"]]])[0]
        assert chunk["relevance_score"] == pytest.approx(alone, abs=1e-5)


def test_score_api_chunks_too(client, offline):
    r = client.post("/score", json={"text_1": [QUERY, "another query"], "text_2": [LONG, SHORT],
                                    **CHUNKED})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert "chunk" not in data[1]
    chunk = data[0]["chunk"]
    assert chunk["relevance_score"] == data[0]["score"]
    (windows,) = offline.engine.encode_docs(QUERY, [LONG], max_length=128, max_chunks=20,
                                            overlap=8)
    assert (chunk["start"], chunk["end"]) == windows.spans[chunk["index"]]
    plain = client.post("/score", json={"text_1": QUERY, "text_2": LONG,
                                        "truncate_prompt_tokens": 128}).json()["data"][0]
    assert "chunk" not in plain  # the server's default: 1 window, truncation as ever
    assert plain["score"] == pytest.approx(offline.score(QUERY, [LONG],
                                                         truncate_prompt_tokens=128)[0], abs=1e-5)


def bad_request(client, path: str, body: dict) -> str:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    return error["message"]


def test_limits_get_400_saying_what_to_lower(client):
    long_query = " ".join(["what does the contract say about termination"] * 12)
    msg = bad_request(client, "/v1/rerank", {"query": long_query, "documents": [LONG],
                                             **CHUNKED})
    assert "no room for a window" in msg and "shorten the query" in msg
    # 30,000 tokens in windows of ~8: more windows than the server's 4,000 per request
    msg = bad_request(client, "/v1/rerank", {
        "query": "q", "documents": ["word " * 30_000], "truncate_prompt_tokens": 80,
        "max_chunks_per_doc": 5000, "chunk_overlap_tokens": 0})
    assert "windows" in msg and "lower max_chunks_per_doc" in msg
    msg = bad_request(client, "/score", {"text_1": QUERY, "text_2": LONG, "truncate": False,
                                         **{**CHUNKED, "max_chunks_per_doc": 2}})
    assert "raise max_chunks_per_doc or allow truncation" in msg
    for field, value in (("max_chunks_per_doc", 0), ("chunk_overlap_tokens", -1)):
        msg = bad_request(client, "/rerank", {"query": QUERY, "documents": [LONG], field: value})
        assert field in msg
    assert client.get("/health").status_code == 200


def test_serve_flags_and_their_checks():
    from qrank.cli import build_parser
    from qrank.server.app import ServerSettings

    ns = build_parser().parse_args(["serve", "m"])
    assert (ns.max_chunks_per_doc, ns.chunk_overlap_tokens, ns.max_chunks_per_request) == \
        (1, 64, 4000)
    ns = build_parser().parse_args(["serve", "m", "--max-chunks-per-doc", "8",
                                    "--chunk-overlap-tokens", "32",
                                    "--max-chunks-per-request", "100"])
    assert (ns.max_chunks_per_doc, ns.chunk_overlap_tokens, ns.max_chunks_per_request) == \
        (8, 32, 100)
    for bad in ({"max_chunks_per_doc": 0}, {"chunk_overlap_tokens": -1},
                {"max_chunks_per_request": 0}):
        with pytest.raises(ValueError, match="--"):
            ServerSettings(served_model_names=["m"], **bad)
