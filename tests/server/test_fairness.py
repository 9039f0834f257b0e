"""Fair scheduling, cancellation, deadlines and priority, against real servers.

The session server (fair, the default) hosts the fair and disconnect test: the large request
there is cut short when its client leaves, so its size costs little. Two more servers with a
small batch budget start together: fcfs, and priority (with ``--request-timeout``), which also
hosts the deadline test (equal priorities share as fair). Nothing here hangs on the machine's
speed: a blocker of a lower priority value, held until its client leaves, keeps requests
queued as long as a test needs, and the deadline is set from a request timed just before.
"""

import asyncio
import json
import socket
import sys
import time
import uuid

import httpx
import pytest
from serving import ServerProcess, free_port, metrics, wait_until

BUDGET = "256"
SERVER_TIMEOUT = 2.0


def queued(client) -> tuple[float, float]:
    """(requests, pairs) waiting in the server's engine."""
    m = metrics(client)
    return m.get("qrank_queue_requests", 0.0), m.get("qrank_queue_pairs", 0.0)


def docs(tag: str, n: int, words: int) -> list[str]:
    return [f"{tag} document {i} " + "some filler words " * (words // 3) for i in range(n)]


def open_request(url: str, body: dict, headers: dict | None = None) -> socket.socket:
    """POST /v1/rerank on a raw socket, answer unread, so the test decides when to leave."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(data)}\r\n{extra}\r\n".encode() + data)
    return sock


async def until_queued(c: httpx.AsyncClient, n: int, timeout: float = 30.0) -> None:
    """Wait until ``n`` requests have pairs waiting in the engine."""
    deadline = time.monotonic() + timeout
    while f"qrank_queue_requests {n}.0" not in (await c.get("/metrics")).text:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} requests were never queued together")
        await asyncio.sleep(0.01)


def cancelled(m: dict[str, float], reason: str) -> tuple[float, float]:
    label = f'{{reason="{reason}"}}'
    return (m.get(f"qrank_requests_cancelled_total{label}", 0.0),
            m.get(f"qrank_pairs_cancelled_total{label}", 0.0))


# ---- on the session server: fair (the default) ---------------------------------------------
def test_fair_lets_a_small_request_pass_a_large_one_whose_client_then_leaves(server, client,
                                                                           request):
    tag = uuid.uuid4().hex
    before = metrics(client)
    sock = open_request(server.url, {"query": f"{tag} bulk", "documents": docs(tag, 1000, 90)})
    try:
        wait_until(lambda: queued(client)[0] >= 1, what="the large request queued")
        small = client.post("/v1/rerank", json={"query": f"{tag} interactive",
                                                "documents": docs(tag, 10, 30)})
        assert small.status_code == 200, small.text
        requests_left, pairs_left = queued(client)
        # the small one finished while most of the large one still waits
        assert requests_left == 1 and pairs_left > 500
        batches = metrics(client)["qrank_batch_pairs_count"]
    finally:
        sock.close()
    wait_until(lambda: queued(client) == (0.0, 0.0), timeout=10, what="the queue empty")
    if request.node.callspec.params["server"] == "ray":
        # On Ray the client's connection ends at Serve's proxy, which cancels the ingress's
        # handler (and so the replica's request) in its own time: the ordering above is what
        # holds there; the drop is not bounded by a batch.
        assert client.get("/health").status_code == 200
        return
    after = metrics(client)
    # the batch in flight when the client left, and at most one begun as it left
    assert after["qrank_batch_pairs_count"] - batches <= 2
    reqs, pairs = (a - b for a, b in zip(cancelled(after, "disconnect"),
                                         cancelled(before, "disconnect"), strict=True))
    assert reqs == 1 and 0 < pairs <= pairs_left
    assert after.get('qrank_requests_total{route="/v1/rerank",status="499"}', 0) == \
        before.get('qrank_requests_total{route="/v1/rerank",status="499"}', 0) + 1
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_a_bad_timeout_header_is_a_400(client, value):
    r = client.post("/v1/rerank", json={"query": "q", "documents": ["d"]},
                    headers={"X-Request-Timeout": value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "X-Request-Timeout"


def test_priority_needs_the_priority_policy(client):
    r = client.post("/v1/score", json={"text_1": "q", "text_2": ["d"], "priority": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "priority"
    assert "--scheduling-policy priority" in r.json()["error"]["message"]
    ok = client.post("/v1/rerank", json={"query": "q", "documents": ["d"], "priority": 0})
    assert ok.status_code == 200


def test_the_queue_and_time_metrics_are_exported(client):
    text = client.get("/metrics").text
    for name in ("qrank_queue_requests", "qrank_queue_pairs",
                 "qrank_request_queue_time_seconds_bucket",
                 "qrank_request_inference_time_seconds_bucket",
                 'qrank_requests_cancelled_total{reason="disconnect"}',
                 'qrank_pairs_cancelled_total{reason="timeout"}'):
        assert name in text, name


# ---- servers with a small batch budget: fcfs, and priority --------------------------------
@pytest.fixture(scope="module")
def policy_servers(tiny_model, tmp_path_factory):
    """An fcfs and a priority server, started together."""
    logs = tmp_path_factory.mktemp("policy-logs")
    flags = {"fcfs": [], "priority": ["--request-timeout", str(SERVER_TIMEOUT)]}
    servers = {}
    for policy, extra in flags.items():
        port = free_port()
        argv = [sys.executable, "-m", "qrank.cli", "serve", str(tiny_model), "--port",
                str(port), "--dtype", "float32", "--max-num-batched-tokens", BUDGET,
                "--scheduling-policy", policy, *extra]
        servers[policy] = ServerProcess(argv, port, log=logs / f"{policy}.log")
    try:
        for srv in servers.values():
            srv.wait_ready()
        yield servers
    finally:
        for srv in servers.values():
            srv.terminate()


async def send(c: httpx.AsyncClient, order: list[str], name: str, body: dict) -> None:
    """POST a rerank request; note ``name`` in ``order`` when its 200 comes back."""
    r = await c.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    order.append(name)


def finish_order(url: str, first: dict, *later: tuple[str, dict]) -> list[str]:
    """Send ``first``, then the ``later`` ones one by one, each once the one before waits in
    the queue; the names in the order their answers came back (each must be a 200)."""
    order: list[str] = []

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            tasks = []
            for n, (name, body) in enumerate([("first", first), *later], start=1):
                tasks.append(asyncio.create_task(send(c, order, name, body)))
                await until_queued(c, n)
            await asyncio.gather(*tasks)

    asyncio.run(run())
    return order


def test_fcfs_serves_a_queued_large_request_before_a_small_one(policy_servers):
    tag = uuid.uuid4().hex
    order = finish_order(policy_servers["fcfs"].url,
                         {"query": f"{tag} bulk", "documents": docs(tag, 80, 60)},
                         ("small", {"query": f"{tag} small", "documents": docs(tag, 10, 30)}))
    assert order == ["first", "small"]


def test_priority_orders_two_queued_requests(policy_servers):
    srv = policy_servers["priority"]
    tag = uuid.uuid4().hex
    order: list[str] = []

    async def run():
        # a bulk request of the lowest priority value holds the engine until its client leaves
        blocker = open_request(srv.url, {"query": f"{tag} bulk", "priority": -1,
                                         "documents": docs(tag, 1000, 60)})
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            await until_queued(c, 1)
            tasks = []
            for n, (name, priority) in enumerate([("sent first", 5), ("sent second", 1)]):
                body = {"query": f"{tag} {name}", "documents": docs(tag + name, 10, 30),
                        "priority": priority}
                tasks.append(asyncio.create_task(send(c, order, name, body)))
                await until_queued(c, n + 2)
            blocker.close()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    assert order == ["sent second", "sent first"]  # priority 1 before priority 5


def test_the_servers_request_timeout_caps_the_header(policy_servers):
    srv = policy_servers["priority"]
    tag = uuid.uuid4().hex
    # the blocker's lower priority value starves the request below until its time is up
    blocker = open_request(srv.url, {"query": f"{tag} bulk", "priority": -1,
                                     "documents": docs(tag, 1000, 60)})
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            wait_until(lambda: queued(c)[0] >= 1, what="the blocker queued")
            start = time.monotonic()
            r = c.post("/v1/rerank", headers={"X-Request-Timeout": "100"},
                       json={"query": tag, "documents": docs(tag + "r", 1000, 60)})
            elapsed = time.monotonic() - start
    finally:
        blocker.close()
    assert r.status_code == 504, r.text
    assert f"time limit of {SERVER_TIMEOUT:g} s" in r.json()["error"]["message"]
    assert SERVER_TIMEOUT - 0.5 <= elapsed < SERVER_TIMEOUT + 5
    with httpx.Client(base_url=srv.url) as c:
        wait_until(lambda: queued(c) == (0.0, 0.0), timeout=10, what="the queue empty")


def test_a_request_past_its_deadline_gets_504_and_the_others_keep_their_scores(
        policy_servers):
    """Under ``priority`` with equal priorities (shared as ``fair``), in a small budget."""
    srv = policy_servers["priority"]
    client = httpx.Client(base_url=srv.url, timeout=60)
    tag = uuid.uuid4().hex
    query = f"{tag} shared query"
    # the limit, from this machine's speed now: about 5 times a 30-document request, while the
    # late request holds 1,000 documents (~33 times as much work) and is queued in about 1/3
    start = time.monotonic()
    assert client.post("/v1/rerank", json={"query": query,
                                            "documents": docs(tag + "p", 30, 60)}).is_success
    limit = min(max(5 * (time.monotonic() - start), 0.3), SERVER_TIMEOUT - 0.5)
    late = {"query": query, "documents": docs(tag, 1000, 60)}
    other = {"query": query, "documents": docs(tag + "b", 10, 30)}
    before = metrics(client)

    async def run():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            first = asyncio.create_task(c.post("/v1/rerank", json=late,
                                               headers={"X-Request-Timeout": f"{limit:.3f}"}))
            await until_queued(c, 1)
            second = await c.post("/v1/rerank", json=other)
            return await first, second

    late_r, other_r = asyncio.run(run())
    assert late_r.status_code == 504, late_r.text
    err = late_r.json()["error"]
    assert err["code"] == 504 and err["type"] == "GatewayTimeoutError"
    assert f"time limit of {float(f'{limit:.3f}'):g} s" in err["message"]
    assert other_r.status_code == 200
    # the two shared batches: some held pairs of more than one request
    mixed = metrics(client)
    assert mixed["qrank_batch_requests_count"] - mixed['qrank_batch_requests_bucket{le="1.0"}'] \
        > before["qrank_batch_requests_count"] - before['qrank_batch_requests_bucket{le="1.0"}']
    # scored alone (a new cache_salt: computed again, not answered from the score cache)
    alone = client.post("/v1/rerank", json={**other, "cache_salt": tag}).json()
    assert alone["usage"]["cached_pairs"] == 0
    got = {r["index"]: r["relevance_score"] for r in other_r.json()["results"]}
    for r in alone["results"]:
        assert got[r["index"]] == pytest.approx(r["relevance_score"], abs=1e-5)
    wait_until(lambda: queued(client) == (0.0, 0.0), timeout=10, what="the queue empty")
    reqs, pairs = (a - b for a, b in zip(cancelled(metrics(client), "timeout"),
                                         cancelled(before, "timeout"), strict=True))
    assert reqs == 1 and 0 < pairs < 1000
    client.close()
