"""A server started as vLLM starts one with a score template: --chat-template, --runner pooling,
--convert classify, --task score. One extra server process for the whole module."""

import json

import httpx
import pytest
from serving import ServerProcess

from qrank.score_template import QWEN3_TEMPLATE_FILE

OTHER = "Given a question, retrieve passages that answer it"
DOCS = ["The capital of China is Beijing.", "Gravity pulls bodies together.", ""]


@pytest.fixture(scope="module")
def templated(tiny_model, tmp_path_factory):
    """The card's template with another default instruction, refusing one instruction."""
    tmp = tmp_path_factory.mktemp("template-server")
    source = QWEN3_TEMPLATE_FILE.read_text(encoding="utf-8").replace(
        '"Given a web search query, retrieve relevant passages that answer the query"',
        json.dumps(OTHER))
    source = ("{% if instruction is defined and instruction == 'refused' %}"
              "{{ raise_exception('this template refuses that instruction') }}{% endif %}"
              + source)
    path = tmp / "other.jinja"
    path.write_text(source)
    srv = ServerProcess.start(tiny_model, "--dtype", "float32", "--chat-template", str(path),
                              "--runner", "pooling", "--convert", "classify", "--task", "score",
                              log=tmp / "server.log")
    with httpx.Client(base_url=srv.url, timeout=60.0) as client:
        yield client
    assert srv.proc.poll() is None, "the server died: " + srv.log()
    srv.terminate()


def test_rerank_renders_with_the_template(templated, offline):
    r = templated.post("/v1/rerank", json={"query": "q?", "documents": DOCS})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    want = offline.score("q?", DOCS, instruction=OTHER)
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(want, abs=1e-5)


def test_score_instruction_is_the_templates_variable(templated, offline):
    r = templated.post("/score", json={"text_1": "q?", "text_2": DOCS, "instruction": "mine"})
    assert r.status_code == 200, r.text
    got = [d["score"] for d in r.json()["data"]]
    assert got == pytest.approx(offline.score("q?", DOCS, instruction="mine"), abs=1e-5)


def test_a_template_that_refuses_the_request_is_a_400(templated):
    r = templated.post("/v1/rerank", json={"query": "q", "documents": ["d"],
                                           "instruction": "refused"})
    assert r.status_code == 400, r.text
    assert "refuses that instruction" in r.json()["error"]["message"]
    assert templated.get("/health").status_code == 200
