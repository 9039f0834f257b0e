"""Shared fixtures: the real Qwen3 tokenizer (see paths.find_tokenizer) and tiny random
checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paths import find_tokenizer  # noqa: E402


def require_tokenizer() -> Path:
    """The tokenizer directory, or skip the test saying how to get one."""
    found = find_tokenizer()
    if found.path is None:
        pytest.skip(found.skip_reason())
    return found.path


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return require_tokenizer()


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Build (once per session) a tiny checkpoint for the given write_test_model options."""
    from qrank.testing import write_test_model

    made: dict[tuple, Path] = {}

    def make(**options) -> Path:
        tok = require_tokenizer()
        key = tuple(sorted(options.items()))
        if key not in made:
            name = "-".join(f"{k}={v}" for k, v in key) or "default"
            out = tmp_path_factory.mktemp("models") / name
            made[key] = write_test_model(out, tok, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(model_factory) -> Path:
    """The original-format tiny reranker (tied embeddings), float32 weights."""
    return model_factory()


@pytest.fixture(scope="session")
def long_model(model_factory) -> Path:
    """One layer and two heads, float32: for 16k-token pairs, whose attention grows with the
    square of their length."""
    return model_factory(shape="tiny-1layer")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (2 CPUs), or skip: Ray is an extra."""
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed: pip install 'qrank[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class RayServed:
    """The Ray Serve application, seen as tests see a `qrank serve` process: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture(scope="session")
def ray_server(ray_cluster, tiny_model):
    """The tiny model served by 2 Ray Serve replicas (a quarter CPU, one thread each) behind
    the ingress, on the session's Ray cluster, with the plain `server` fixture's names."""
    from ray import serve
    from serving import free_port

    from qrank.ray import build_app
    from qrank.server.app import ServerSettings

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(str(tiny_model), dtype="float32", threads=1, num_replicas=2,
                    num_cpus_per_replica=0.25,
                    settings=ServerSettings(["tiny-reranker", "qwen3-reranker"]))
    serve.run(app, name="qrank", route_prefix="/")
    yield RayServed(f"http://127.0.0.1:{port}")
    serve.shutdown()
