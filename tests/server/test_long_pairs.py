"""A 16k-token pair in pieces (chunked prefill) scores as the model card's transformers does,
offline and on a real server; there others are served between its pieces, and a client that
leaves drops its pieces left and the keys and values kept for them.

The one-layer test model, 17k tokens; offline pieces of 2048 tokens, and one server with a
1024-token batch budget (16 pieces) for the module.
"""

import asyncio
import json
import math
import socket
import uuid

import httpx
import pytest
from inputs import DOCUMENTS, QUERIES, long_document
from reference import CardReference, format_instruction
from serving import ServerProcess, metrics, wait_until

BUDGET = 1024


def kv_bytes(c: httpx.Client) -> float:
    return metrics(c)["qrank_long_prefill_kv_bytes"]


@pytest.fixture(scope="module")
def long_server(long_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "long.log"
    srv = ServerProcess.start(long_model, "--dtype", "float32", "--max-model-len", "17000",
                              "--max-num-batched-tokens", str(BUDGET), log=log)
    yield srv
    assert srv.proc.poll() is None, "the server died during the tests: " + srv.log()
    srv.terminate()


@pytest.fixture(scope="module")
def offline(long_model):
    """The same model offline, long pairs in pieces of at most 2048 tokens."""
    from qrank import Reranker

    return Reranker(str(long_model), dtype="float32", max_model_len=17000,
                    max_num_batched_tokens=2048)


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_a_16k_token_pair_in_pieces_scores_as_the_reference(long_model, offline):
    engine = offline.engine
    query, doc = QUERIES[1], long_document()
    pairs = engine.encode(query, [doc, DOCUMENTS[0], DOCUMENTS[3]])
    assert 16000 <= len(pairs[0]) <= 17000
    batches = []
    engine.on_batch = batches.append
    try:
        got = engine.score_tokens(pairs, use_activation=False)
    finally:
        engine.on_batch = None
    assert len(batches) >= 8  # the long pair in 8 pieces, at most 2048 tokens each
    assert len(engine.piece_kv) == 0 and engine.piece_kv.nbytes == 0
    ref = CardReference(long_model, max_length=17000)
    ids = ref.input_ids([format_instruction(None, query, d)
                         for d in (doc, DOCUMENTS[0], DOCUMENTS[3])])
    assert ids == [p.ids for p in pairs]
    # one sequence a call: the reference pads nothing, so its attention stays causal
    want = [logit(ref.score_ids([i])[0]) for i in ids]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4
    assert max(got[1:]) - min(got[1:]) > 0.5  # the short pairs' scores spread


def test_a_small_request_sent_while_a_16k_pair_runs_answers_first(long_server, offline):
    tag = uuid.uuid4().hex[:8]
    long_body = {"query": f"{tag} what is it about?", "documents": [long_document(seed=1)]}
    small_body = {"query": f"{tag} capital", "documents": DOCUMENTS[:3]}
    order: list[str] = []
    answers: dict[str, dict] = {}

    async def send(c: httpx.AsyncClient, name: str, body: dict) -> None:
        r = await c.post("/v1/rerank", json=body)
        assert r.status_code == 200, r.text
        order.append(name)
        answers[name] = r.json()

    async def run() -> None:
        async with httpx.AsyncClient(base_url=long_server.url, timeout=120) as c:
            long_task = asyncio.create_task(send(c, "long", long_body))
            with httpx.Client(base_url=long_server.url) as sync:  # its first piece has run
                await asyncio.to_thread(wait_until, lambda: kv_bytes(sync) > 0,
                                        what="a piece of the long pair run")
            await send(c, "small", small_body)
            await long_task

    asyncio.run(run())
    assert order == ["small", "long"]
    assert answers["long"]["usage"]["total_tokens"] > 16000
    want_small = offline.score(small_body["query"], small_body["documents"])
    for res in answers["small"]["results"]:
        assert abs(res["relevance_score"] - want_small[res["index"]]) < 1e-5
    (want_long,) = offline.score(long_body["query"], long_body["documents"])
    got_long = answers["long"]["results"][0]["relevance_score"]
    assert abs(logit(got_long) - logit(want_long)) < 1e-4
    with httpx.Client(base_url=long_server.url) as c:
        assert kv_bytes(c) == 0  # dropped after its last piece


def open_request(url: str, body: dict) -> socket.socket:
    """POST /v1/rerank on a raw socket, answer unread, so the test decides when to leave."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_leaves_drops_the_pieces_left_and_their_keys_and_values(long_server):
    label = '{reason="disconnect"}'
    with httpx.Client(base_url=long_server.url, timeout=60) as c:
        before = metrics(c)
        sock = open_request(long_server.url, {"query": uuid.uuid4().hex,
                                              "documents": [long_document(seed=2)]})
        try:
            wait_until(lambda: kv_bytes(c) > 0, what="a piece of the long pair run")
        finally:
            sock.close()
        wait_until(lambda: kv_bytes(c) == 0 and metrics(c)["qrank_queue_pairs"] == 0,
                   timeout=10, what="the pieces and their keys and values dropped")
        after = metrics(c)
        # the long pair was dropped whole, its score never computed: of its 16 pieces, those
        # run before the client left, and at most one begun as it left
        assert after[f"qrank_pairs_cancelled_total{label}"] == \
            before[f"qrank_pairs_cancelled_total{label}"] + 1
        assert after["qrank_pairs_scored_total"] == before["qrank_pairs_scored_total"]
        assert after["qrank_batch_pairs_count"] - before["qrank_batch_pairs_count"] < 12
        assert c.get("/health").status_code == 200
