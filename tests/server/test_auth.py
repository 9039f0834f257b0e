"""With an API key, every route but /health needs 'Authorization: Bearer KEY'."""

import httpx
import pytest
from serving import ServerProcess

KEY = "s3cret-key"
ROUTES = [("POST", "/v1/rerank"), ("POST", "/rerank"), ("POST", "/v2/rerank"),
          ("POST", "/v1/score"), ("POST", "/score"), ("GET", "/v1/models"),
          ("GET", "/version"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")]
PAYLOADS = {"/v1/rerank": {"query": "q", "documents": ["a"]},
            "/rerank": {"query": "q", "documents": ["a"]},
            "/v2/rerank": {"query": "q", "documents": ["a"]},
            "/v1/score": {"text_1": "q", "text_2": "a"}, "/score": {"text_1": "q", "text_2": "a"}}


@pytest.fixture(scope="module", params=["flag", "env"])
def secured(request, tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / f"auth-{request.param}.log"
    if request.param == "flag":
        srv = ServerProcess.start(tiny_model, "--api-key", KEY, "--dtype", "float32", log=log)
    else:
        srv = ServerProcess.start(tiny_model, "--dtype", "float32", env={"QRANK_API_KEY": KEY},
                                  log=log)
    yield srv
    srv.terminate()


def call(url, method, path, headers=None):
    return httpx.request(method, url + path, json=PAYLOADS.get(path), headers=headers,
                         timeout=60)


@pytest.mark.parametrize("method,path", ROUTES)
def test_routes_need_the_key(secured, method, path):
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = call(secured.url, method, path, headers)
        assert r.status_code == 401, (path, headers)
        assert r.json()["error"]["code"] == 401
        assert "Bearer" in r.json()["error"]["message"]
    ok = call(secured.url, method, path, {"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text


def test_health_is_open(secured):
    assert httpx.get(secured.url + "/health").status_code == 200


def test_without_a_key_routes_are_open(client):
    for method, path in ROUTES:
        assert call(str(client.base_url), method, path).status_code == 200, path
