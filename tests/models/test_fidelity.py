"""Scores agree with transformers' Qwen3ForCausalLM run as the model card runs it."""

import itertools

import pytest
import torch
from inputs import DOCUMENTS, INSTRUCTIONS, QUERIES
from kernel_skips import kernel_unavailable
from reference import SUFFIX, CardReference, format_instruction

from qrank import Reranker
from qrank.kernels import amx_linear, cpu_attention
from qrank.prompts import SYSTEM_PREFIX


@pytest.fixture(scope="module")
def reference(tiny_model):
    return CardReference(tiny_model, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference_scores(reference):
    """Card scores of every (query, instruction) x documents combination."""
    return {
        (q, i): reference.score(q, DOCUMENTS, i)
        for q, i in itertools.product(QUERIES, INSTRUCTIONS)
    }


# every optimisation on: torch.compile of the element-wise work ("on"), or eager ("off")
@pytest.fixture(scope="module", params=["off", "on"], ids=["eager", "compiled"])
def fp32(tiny_model, request):
    return Reranker(str(tiny_model), dtype="float32", compile=request.param)


@pytest.fixture(scope="module",
                params=[("off", "off", "off"), ("on", "off", "off"), ("on", "on", "off"),
                        ("on", "on", "on")],
                ids=["eager", "compiled", "compiled+cpu-attention-kernel",
                     "compiled+cpu-attention-and-linear-kernels"])
def bf16(tiny_model, request):
    compile, attention, linear = request.param
    if attention == "on" and cpu_attention.load() is None:
        pytest.skip(kernel_unavailable("the CPU attention kernel"))
    if linear == "on" and amx_linear.load() is None:
        pytest.skip(kernel_unavailable("the AMX linear kernel"))
    return Reranker(str(tiny_model), dtype="bfloat16", compile=compile,
                    cpu_attention_kernel=attention, cpu_linear_kernel=linear)


def test_tiny_model_scores_spread_with_context(reference_scores):
    """A fidelity test on a model whose scores barely move would prove little."""
    scores = torch.tensor([s for v in reference_scores.values() for s in v])
    assert scores.min() < 0.1 and scores.max() > 0.9
    assert scores.std() > 0.15
    # the same (short) document scores differently under different queries
    per_doc = torch.tensor([v for v in reference_scores.values()]).T
    short = [i for i, d in enumerate(DOCUMENTS) if len(d) < 500]
    assert per_doc[short].std(dim=1).min() > 0.01


def test_float32_agrees_with_the_reference_on_every_pair(fp32, reference_scores):
    worst = 0.0
    for (query, instruction), want in reference_scores.items():
        got = fp32.score(query, DOCUMENTS, instruction)
        worst = max(worst, max(abs(a - b) for a, b in zip(got, want, strict=True)))
    assert worst < 1e-5


def test_bfloat16_agrees_within_2e2_and_keeps_the_ranking(bf16, reference_scores):
    worst = 0.0
    for (query, instruction), want in reference_scores.items():
        got = bf16.score(query, DOCUMENTS, instruction)
        worst = max(worst, max(abs(a - b) for a, b in zip(got, want, strict=True)))
        # same order on pairs whose reference scores are well separated
        for (a, wa), (b, wb) in itertools.combinations(zip(got, want, strict=True), 2):
            if abs(wa - wb) > 0.05:
                assert (a - b) * (wa - wb) > 0
    assert worst < 2e-2


def test_preformatted_inputs_score_as_raw_inputs(fp32, reference_scores):
    instruction = "Given a question, retrieve passages that answer it"
    for query in QUERIES:
        q_text = SYSTEM_PREFIX + f"<Instruct>: {instruction}\n<Query>: {query}\n"
        d_texts = [f"<Document>: {d}{SUFFIX}" for d in DOCUMENTS]
        got = fp32.score(q_text, d_texts)
        want = reference_scores[(query, instruction)]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


def test_truncated_pairs_agree_with_the_cards_truncation(tiny_model):
    ref = CardReference(tiny_model, dtype=torch.float32, max_length=200)
    ours = Reranker(str(tiny_model), dtype="float32", max_model_len=200)
    long_docs = [d for d in DOCUMENTS if len(d) > 1000] + ["lorem ipsum " * 200]
    want = ref.score_ids(ref.input_ids([format_instruction(None, "q", d) for d in long_docs]))
    got = ours.score("q", long_docs)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


def test_batches_of_new_sizes_reuse_the_warm_up_graphs(bf16):
    """The compiled element-wise graphs are dynamic in the token count only: after the
    engine's warm-up, batches of any size run them without compiling again."""
    with torch.compiler.set_stance("fail_on_recompile"):
        for n in (1, 2, 5, len(DOCUMENTS)):
            assert len(bf16.score(QUERIES[0], DOCUMENTS[:n])) == n


def test_bfloat16_with_the_amx_linear_kernel_agrees_within_2e2(model_factory):
    """Every optimisation on at a second, calibrated shape (hidden 128, head_dim 32): SiLU·up
    fused into the gate-up projection on the AMX kernel, the rest on oneDNN."""
    if amx_linear.load() is None or cpu_attention.load() is None:
        pytest.skip(kernel_unavailable("the AMX kernels"))
    model = model_factory(shape="small")
    reference = CardReference(model, dtype=torch.float32)
    reranker = Reranker(str(model), dtype="bfloat16", compile="on", cpu_attention_kernel="on",
                        cpu_linear_kernel="on")
    layer = reranker.engine.trunk.layers[0]
    assert isinstance(layer.gate_up, amx_linear.AmxGateUpSiLU)
    want = [s for q in QUERIES for s in reference.score(q, DOCUMENTS, None)]
    got = [s for q in QUERIES for s in reranker.score(q, DOCUMENTS, None)]
    scores = torch.tensor(want)
    assert scores.std() > 0.1  # a calibrated model whose scores move
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 2e-2
