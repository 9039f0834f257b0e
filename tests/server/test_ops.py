"""/v1/models, /health, /version, /metrics and the OpenAPI docs."""


def test_models_lists_the_served_names(client, tiny_model):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-reranker", "qwen3-reranker"]
    card = body["data"][0]
    assert card["object"] == "model" and card["max_model_len"] == 8192
    assert card["root"] == str(tiny_model)


def test_health_and_version(client):
    assert client.get("/health").status_code == 200
    import qrank

    assert client.get("/version").json() == {"version": qrank.__version__}


def test_openapi_describes_the_real_models(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/models"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    request = schemas["RerankRequest"]["properties"]
    assert {"query", "documents", "top_n", "return_documents", "instruction",
            "truncate_prompt_tokens", "max_tokens_per_doc"} <= set(request)
    assert {"id", "model", "usage", "results"} <= set(schemas["RerankResponse"]["properties"])
    assert {"message", "type", "param", "code"} <= set(schemas["ErrorInfo"]["properties"])
    ok = spec["paths"]["/v1/rerank"]["post"]["responses"]
    assert "RerankResponse" in str(ok["200"]) and "ErrorResponse" in str(ok["400"])


def test_metrics_count_requests_pairs_and_tokens(client):
    client.post("/v1/rerank", json={"query": "metrics", "documents": ["a", "b", "c"]})
    text = client.get("/metrics").text
    for name in ("qrank_requests_total", "qrank_request_latency_seconds_bucket",
                 "qrank_pairs_scored_total", "qrank_prompt_tokens_total",
                 "qrank_batch_pairs_bucket", "qrank_batch_tokens_bucket",
                 "qrank_batch_requests_bucket", "qrank_queue_pairs",
                 "qrank_prefix_cache_hits"):
        assert name in text, name
    assert 'qrank_requests_total{route="/v1/rerank",status="200"}' in text
