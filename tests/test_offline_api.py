"""The offline API: vLLM's LLM.score and the recipe's script, and our Reranker."""

import ast
import subprocess
import sys

import pytest
from inputs import DOCUMENTS
from recipe import offline_script

from qrank import LLM, Reranker


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(model=str(tiny_model), task="score", dtype="float32")


@pytest.fixture(scope="module")
def reranker(tiny_model):
    return Reranker(str(tiny_model), dtype="float32")


def test_recipe_offline_script_runs_with_only_the_import_changed(tiny_model, reranker):
    script = offline_script()
    assert "from vllm import LLM" in script
    script = script.replace("from vllm import LLM", "from qrank import LLM")
    script = script.replace('model_name = "Qwen/Qwen3-Reranker-8B"',
                            f"model_name = {str(tiny_model)!r}")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    # the script formats query and documents itself; the raw inputs score the same
    want = reranker.score("What is the capital of China?", [
        "The capital of China is Beijing.",
        "Gravity is a force that attracts two bodies towards each other. It gives weight to "
        "physical objects and is responsible for the movement of planets around the sun.",
    ])
    assert len(printed) == 2
    # the script runs in the engine's default dtype; compare loosely, and exactly below
    assert max(abs(a - b) for a, b in zip(printed, want, strict=True)) < 2e-2


def test_score_outputs_read_both_ways(llm):
    (out,) = llm.score("q", "d")
    assert out.outputs.score == out.outputs[0].score
    assert 0.0 < out.outputs.score < 1.0
    assert out.prompt_token_ids[-1] == 271  # the suffix's last token


def test_one_to_one_one_to_many_and_many_to_many(llm, reranker):
    docs = DOCUMENTS[:4]
    one_to_many = [o.outputs.score for o in llm.score("a query", docs)]
    assert one_to_many == pytest.approx(reranker.score("a query", docs), abs=1e-6)
    listed_one = [o.outputs.score for o in llm.score(["a query"], docs)]
    assert listed_one == pytest.approx(one_to_many, abs=1e-6)
    queries = ["a query", "another", "a query", "third"]
    many = [o.outputs.score for o in llm.score(queries, docs)]
    for q, d, s in zip(queries, docs, many, strict=True):
        assert s == pytest.approx(reranker.score(q, [d])[0], abs=1e-6)
    single = llm.score("another", docs[1])[0].outputs.score
    assert single == pytest.approx(many[1], abs=1e-6)
    with pytest.raises(ValueError, match="as many texts"):
        llm.score(["a", "b"], ["c", "d", "e"])


def test_truncate_prompt_tokens(llm):
    (out,) = llm.score("q", "word " * 500, truncate_prompt_tokens=100)
    assert len(out.prompt_token_ids) == 100


def test_use_activation_and_truncation_side(llm, reranker):
    import math

    docs = DOCUMENTS[:3]
    logits = [o.outputs.score for o in llm.score("a query", docs, use_activation=False)]
    assert logits == pytest.approx(reranker.score("a query", docs, use_activation=False), abs=1e-6)
    scores = reranker.score("a query", docs)
    assert [1 / (1 + math.exp(-x)) for x in logits] == pytest.approx(scores, abs=1e-7)
    doc = " ".join(f"w{i}" for i in range(400))
    right, left = (llm.score("q", doc, truncate_prompt_tokens=100, truncation_side=side)[0]
                   for side in ("right", "left"))
    assert len(left.prompt_token_ids) == len(right.prompt_token_ids) == 100
    n = len(llm.engine.tokenizer.suffix_ids)
    assert left.prompt_token_ids[-n:] == right.prompt_token_ids[-n:]  # the suffix
    text = llm.engine.tokenizer.decode
    assert text(left.prompt_token_ids[:-n]).endswith("w398 w399")
    assert "<Document>: w0 w1" in text(right.prompt_token_ids)
    assert "w399" not in text(right.prompt_token_ids) and " w0 " not in text(left.prompt_token_ids)


def test_llm_refuses_other_tasks(tiny_model):
    with pytest.raises(ValueError, match="task"):
        LLM(model=str(tiny_model), task="generate")


def test_rerank_sorts_and_keeps_original_indices(reranker):
    docs = DOCUMENTS[:6]
    scores = reranker.score("What is the capital of China?", docs)
    ranked = reranker.rerank("What is the capital of China?", docs)
    assert [r.score for r in ranked] == sorted(scores, reverse=True)
    assert sorted(r.index for r in ranked) == list(range(6))
    for r in ranked:
        assert r.document == docs[r.index] and r.score == scores[r.index]
    top = reranker.rerank("What is the capital of China?", docs, top_n=2)
    assert [r.index for r in top] == [r.index for r in ranked[:2]]


def test_instruction_changes_the_score(reranker):
    a = reranker.score("q", ["a document"])[0]
    b = reranker.score("q", ["a document"], instruction="Find recipes")[0]
    assert a != b


def test_progress_bar_on_for_large_jobs_and_off_on_request(tiny_model, capsys):
    small_budget = Reranker(str(tiny_model), dtype="float32", max_num_batched_tokens=256)
    small_budget.score("q", [f"document number {i}" for i in range(20)])
    assert "Scoring" in capsys.readouterr().err
    small_budget.score("q", [f"document number {i}" for i in range(20)], use_tqdm=False)
    assert "Scoring" not in capsys.readouterr().err
    small_budget.score("q", ["one"])
    assert "Scoring" not in capsys.readouterr().err
