"""SIGTERM stops new requests and finishes those in flight."""

import signal
import threading
import time

import httpx
from serving import ServerProcess


def test_sigterm_finishes_in_flight_requests(tiny_model, tmp_path):
    srv = ServerProcess.start(tiny_model, "--dtype", "float32", "--max-num-batched-tokens",
                              "256", log=tmp_path / "shutdown.log")
    payload = {"query": "q", "documents": ["some words to score " * 40] * 60}
    result: dict = {}

    def slow_request():
        result["response"] = httpx.post(srv.url + "/v1/rerank", json=payload, timeout=120)

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(1.0)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert srv.proc.wait(60) in (0, -signal.SIGTERM), srv.log()  # uvicorn re-raises it
    response = result["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 60
    try:
        httpx.get(srv.url + "/health", timeout=2)
        raise AssertionError("the server still answers after SIGTERM")
    except httpx.HTTPError:
        pass
