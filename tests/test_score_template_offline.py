"""Score templates and the Sentence Transformers v6 layout, offline on the tiny model."""

import json
import shutil

import pytest

from qrank import LLM, Reranker
from qrank.score_template import QWEN3_TEMPLATE_FILE
from qrank.testing import write_st_layout

QUERY = "What is the capital of China?"
DOCS = ["The capital of China is Beijing.", "Gravity pulls bodies together.",
        "Photosynthesis converts light into sugar.", "索引是一种数据结构。", ""]
OTHER = "Given a question, retrieve passages that answer it"


@pytest.fixture(scope="module")
def reranker(tiny_model):
    return Reranker(str(tiny_model), dtype="float32")


@pytest.fixture(scope="module")
def other_template(tmp_path_factory):
    """The card's template with another default instruction line."""
    path = tmp_path_factory.mktemp("templates") / "other.jinja"
    source = QWEN3_TEMPLATE_FILE.read_text(encoding="utf-8")
    path.write_text(source.replace(
        '"Given a web search query, retrieve relevant passages that answer the query"',
        json.dumps(OTHER)))
    return path


def test_a_template_with_another_instruction_scores_as_that_instruction(
        tiny_model, reranker, other_template):
    want = reranker.score(QUERY, DOCS, instruction=OTHER)
    default = reranker.score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(want, default, strict=True)) > 1e-3
    llm = LLM(str(tiny_model), dtype="float32", runner="pooling", convert="classify",
              task="score", chat_template=str(other_template))
    got = [o.outputs.score for o in llm.score(QUERY, DOCS)]
    assert got == pytest.approx(want, abs=1e-6)
    # the instruction given with the request still wins, as a template variable
    asked = [o.outputs.score for o in llm.score(QUERY, DOCS, instruction="find it")]
    assert asked == pytest.approx(reranker.score(QUERY, DOCS, instruction="find it"), abs=1e-6)
    kwargs = [o.outputs.score for o in llm.score(
        QUERY, DOCS, chat_template_kwargs={"instruction": "find it"})]
    assert kwargs == asked


@pytest.mark.parametrize("kwargs", [{"runner": "generate"}, {"convert": "embed"},
                                    {"task": "generate"}])
def test_vllm_modes_other_than_a_reranker_are_refused(tiny_model, kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f"{name} must be one of .*not '{value}'"):
        LLM(str(tiny_model), **kwargs)


@pytest.fixture(scope="module")
def st_model(tiny_model, tmp_path_factory, reranker):
    """The tiny model's weights with the Sentence Transformers v6 CrossEncoder files added."""
    out = tmp_path_factory.mktemp("st") / "tiny-st"
    shutil.copytree(tiny_model, out)
    tok = reranker.engine.tokenizer
    write_st_layout(out, "original", tok.token_id("yes"), tok.token_id("no"))
    return out


def test_st_layout_loads_with_no_flags_and_scores_as_the_original_layout(st_model, reranker):
    st = Reranker(str(st_model), dtype="float32")
    assert st.engine.config["classifier_from_token"] == ["no", "yes"]
    assert type(st.engine.template).__name__ == "JinjaTemplate"
    assert st.score(QUERY, DOCS) == pytest.approx(reranker.score(QUERY, DOCS), abs=1e-6)
    assert st.score(QUERY, DOCS, instruction=OTHER) == pytest.approx(
        reranker.score(QUERY, DOCS, instruction=OTHER), abs=1e-6)
    modules = json.loads((st_model / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_LogitScore"]


def test_st_layout_scores_as_sentence_transformers(st_model, reranker):
    """Only where sentence-transformers 6 is installed (it is no dependency of qrank)."""
    st = pytest.importorskip("sentence_transformers")
    if int(st.__version__.split(".")[0]) < 6:
        pytest.skip(f"sentence-transformers {st.__version__} < 6")
    model = st.CrossEncoder(str(st_model), model_kwargs={"torch_dtype": "float32"})
    got = [float(s) for s in model.predict([(QUERY, d) for d in DOCS])]
    assert got == pytest.approx(reranker.score(QUERY, DOCS), abs=1e-5)


@pytest.mark.parametrize("fmt", ["original", "seq-cls"])
def test_st_layout_files_are_read_back(tmp_path, fmt):
    from qrank.models.loader import read_sentence_transformers_layout

    assert read_sentence_transformers_layout(tmp_path) is None
    write_st_layout(tmp_path, fmt, yes=9693, no=2152, instruction=OTHER)
    layout = read_sentence_transformers_layout(tmp_path)
    assert layout.token_ids == ([2152, 9693] if fmt == "original" else None)
    assert layout.instruction == OTHER
    assert layout.chat_template == QWEN3_TEMPLATE_FILE.read_text(encoding="utf-8")
    assert layout.template_variables == {"add_generation_prompt": False}
    assert layout.activation == "torch.nn.modules.activation.Sigmoid"
