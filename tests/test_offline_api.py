"""The offline API: vLLM's LLM.score and the recipe's script, and our Reranker."""

import ast
import random
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


# ---- long documents in windows (max_chunks_per_doc) ------------------------------------------
CHUNK_QUERY = "which clause covers termination of the contract?"
ONE_TOKEN_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
                   "runs", "into", "forest", "where", "birds", "sing", "songs", "about", "rain"]


def words(n: int, seed: int = 0) -> str:
    """A text of exactly ``n`` tokens: words that are one token each."""
    rng = random.Random(seed)
    return " ".join(rng.choice(ONE_TOKEN_WORDS) for _ in range(n))


def test_chunked_score_is_the_best_window_scored_alone(llm):
    limit, overlap = 128, 8
    engine = llm.engine
    (probe,) = engine.encode_docs(CHUNK_QUERY, ["x"], max_length=limit)
    room = limit - len(probe.pairs[0]) + 1  # tokens of a window's text ("x" is one)
    counts = [1, 2, 3, 7, 40]
    docs = [words(room + (k - 1) * (room - overlap) - 2, seed=k) for k in counts]
    docs.append("北京是中国的首都。👨‍👩‍👧 e\u0301cole naïve " * 20)  # unicode, several windows
    options = dict(truncate_prompt_tokens=limit, max_chunks_per_doc=50,
                   chunk_overlap_tokens=overlap, use_tqdm=False)
    outs = llm.score(CHUNK_QUERY, docs, **options)
    windows = engine.encode_docs(CHUNK_QUERY, docs, max_length=limit, max_chunks=50,
                                 overlap=overlap)
    assert [len(w.pairs) for w in windows[:-1]] == counts and len(windows[-1].pairs) > 2
    spans = [w.spans or ((0, len(d)),) for w, d in zip(windows, docs, strict=True)]
    texts = [d[s:e] for d, sp in zip(docs, spans, strict=True) for s, e in sp]
    alone = iter(o.outputs.score for o in llm.score(CHUNK_QUERY, texts,
                                                    truncate_prompt_tokens=limit, use_tqdm=False))
    scores = [s.outputs.score for s in outs]
    assert max(scores) - min(scores) > 0.01  # the documents really score apart
    for out, sp in zip(outs, spans, strict=True):
        mine = [next(alone) for _ in sp]
        best = max(range(len(mine)), key=mine.__getitem__)
        assert out.outputs.score == pytest.approx(mine[best], abs=1e-5)
        chunk = out.outputs.chunk
        if len(sp) == 1:
            assert chunk is None
            continue
        assert (chunk.index, chunk.start, chunk.end) == (best, *sp[best])
        assert chunk.relevance_score == out.outputs.score
        assert len(out.prompt_token_ids) <= limit


def test_a_paragraph_after_20000_tokens_of_filler(llm):
    unit = "lorem ipsum dolor sit amet "
    filler = unit * 4000
    assert llm.engine.tokenizer.count(filler) >= 20_000
    paragraph = " ".join(["Photosynthesis converts light, water and CO2 into glucose and oxygen."]
                         * 3)
    doc = f"{filler}\n\n{paragraph}\n\n{unit * 40}"
    p0 = len(filler) + 2
    p1 = p0 + len(paragraph)
    options = dict(truncate_prompt_tokens=200, use_tqdm=False)
    truncated, filler_alone = (o.outputs.score for o in llm.score(CHUNK_QUERY, [doc, filler],
                                                                   **options))
    # cut before the paragraph: it does not count
    assert truncated == pytest.approx(filler_alone, abs=1e-6)
    (out,) = llm.score(CHUNK_QUERY, doc, max_chunks_per_doc=400, chunk_overlap_tokens=16,
                       **options)
    chunk = out.outputs.chunk
    assert chunk is not None and chunk.index > 150  # windows of ~130 tokens: deep in the doc
    assert chunk.start <= p0 and p1 <= chunk.end  # the best window holds the paragraph
    (alone,) = llm.score(CHUNK_QUERY, doc[chunk.start:chunk.end], **options)
    assert out.outputs.score == pytest.approx(alone.outputs.score, abs=1e-5)
    assert out.outputs.score > truncated + 0.1


def test_reranker_carries_the_best_window(reranker):
    doc, short = words(150, seed=3), "The capital of China is Beijing."
    options = dict(max_chunks_per_doc=3, chunk_overlap_tokens=0, truncate_prompt_tokens=128)
    ranked = reranker.rerank(CHUNK_QUERY, [short, doc], **options)
    got = {r.index: r for r in ranked}
    assert got[0].chunk is None
    chunk = got[1].chunk
    assert chunk is not None and chunk.relevance_score == got[1].score
    assert reranker.score(CHUNK_QUERY, [short, doc], **options) == [got[0].score, got[1].score]
    alone = reranker.score(CHUNK_QUERY, [doc[chunk.start:chunk.end]])[0]
    assert got[1].score == pytest.approx(alone, abs=1e-5)
    cut = reranker.score(CHUNK_QUERY, [doc], truncate_prompt_tokens=128)[0]
    assert cut == pytest.approx(reranker.score(CHUNK_QUERY, [doc], **{**options,
                                               "max_chunks_per_doc": 1})[0], abs=1e-6)
