import httpx
import pytest
from serving import ServerProcess


@pytest.fixture(scope="session", params=["plain", "ray"])
def server(request, tiny_model, tmp_path_factory):
    """One float32 tiny-model server for the API tests; it must survive every bad request.
    The API tests run against `qrank serve` and against the same app on Ray Serve replicas
    (skipped where Ray is not installed)."""
    if request.param == "ray":
        yield request.getfixturevalue("ray_server")
        return
    log = tmp_path_factory.mktemp("logs") / "server.log"
    srv = ServerProcess.start(tiny_model, "--dtype", "float32", "--served-model-name",
                              "tiny-reranker", "qwen3-reranker", log=log)
    yield srv
    assert srv.proc.poll() is None, "the server died during the tests: " + srv.log()
    srv.terminate()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="session")
def offline(tiny_model):
    from qrank import Reranker

    return Reranker(str(tiny_model), dtype="float32")
