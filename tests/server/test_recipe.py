"""The users' recipe: `vllm serve ...` with vllm replaced by qrank, and its requests demo."""

import ast
import shlex
import subprocess
import sys

import pytest
from recipe import requests_demo, serve_command
from serving import ServerProcess, free_port

from qrank.prompts import SYSTEM_PREFIX


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_model):
    """A Hugging Face cache holding the tiny model as Qwen/Qwen3-Reranker-8B (offline)."""
    hub = tmp_path_factory.mktemp("hf") / "hub"
    repo = hub / "models--Qwen--Qwen3-Reranker-8B"
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in tiny_model.iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return hub


def test_recipe_serve_command_and_requests_demo(hub_cache, tmp_path, offline):
    argv = shlex.split(serve_command())
    assert argv[:2] == ["vllm", "serve"]
    port = free_port()
    argv = [sys.executable, "-m", "qrank.cli", *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)  # the only change: a free port
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    srv = ServerProcess(argv, port, env=env, log=tmp_path / "recipe.log")
    try:
        srv.wait_ready()
        demo = requests_demo().replace("127.0.0.1:8888", f"127.0.0.1:{port}")
        proc = subprocess.run([sys.executable, "-c", demo], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        response = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    finally:
        assert srv.terminate() in (0, -15), srv.log()  # uvicorn re-raises SIGTERM
    assert response["model"] == "Qwen/Qwen3-Reranker-8B"
    assert response["id"].startswith("rerank-")
    # the demo formats query and documents itself; the offline API on the raw strings agrees
    # (the server runs the default dtype, the offline reference float32)
    raw = ["The capital of China is Beijing.",
           "Gravity is a force that attracts two bodies towards each other. It gives weight to "
           "physical objects and is responsible for the movement of planets around the sun."]
    want = offline.score("What is the capital of China?", raw)
    got = {r["index"]: r["relevance_score"] for r in response["results"]}
    assert set(got) == {0, 1}
    for i, w in enumerate(want):
        assert abs(got[i] - w) < 2e-2
    assert response["results"][0]["document"]["text"].startswith("<Document>: ")


def test_recipe_payload_scores_equal_offline_scores_in_float32(client, offline):
    """The demo's exact payload (formatted client-side, no model field) in float32."""
    demo = requests_demo()
    namespace: dict = {}
    # run the demo's formatting part (everything before it posts) to build its payload
    exec(demo[: demo.index("response = requests.post")], namespace)  # noqa: S102
    query = namespace["query_template"].format(prefix=namespace["prefix"],
                                               instruction=namespace["instruction"],
                                               query=namespace["query"])
    assert query.startswith(SYSTEM_PREFIX)
    body = client.post("/v1/rerank", json={"query": query,
                                           "documents": namespace["documents"]}).json()
    want = offline.score(query, namespace["documents"])
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert [got[i] for i in range(len(want))] == pytest.approx(want, abs=1e-5)
