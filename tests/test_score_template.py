"""Jinja score templates: the model card's prompt as a template gives the built-in token ids."""

import itertools

import pytest
from inputs import DOCUMENTS, INSTRUCTIONS, QUERIES

from qrank.prompts import SUFFIX, SYSTEM_PREFIX, render_pairs
from qrank.score_template import (
    QWEN3_TEMPLATE_FILE,
    JinjaTemplate,
    TemplateError,
    read_template,
)
from qrank.tokenize import RerankTokenizer

CARD = QWEN3_TEMPLATE_FILE.read_text(encoding="utf-8")
# vLLM's way of writing it: the instruction variable with defaults, the file's newline at the end
VLLM_STYLE = (
    SYSTEM_PREFIX + "<Instruct>: {{ instruction | default(instruct | default('web', true), "
    "true) }}\n<Query>: {{ messages | selectattr('role', 'eq', 'query') | "
    "map(attribute='content') | first }}\n<Document>: {{ messages | selectattr('role', 'eq', "
    "'document') | map(attribute='content') | first }}" + SUFFIX
)


@pytest.fixture(scope="module")
def card_template():
    return JinjaTemplate(CARD)


@pytest.fixture(scope="module")
def builtin(tokenizer_dir):
    return RerankTokenizer.from_file(tokenizer_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def tok(builtin, card_template):
    return RerankTokenizer(builtin.tokenizer, template=card_template)


def test_card_template_gives_the_built_in_token_ids(card_template, tok, builtin):
    assert (tok.prefix_ids, tok.suffix_ids) == (builtin.prefix_ids, builtin.suffix_ids)
    assert tok.doc_label_len == builtin.doc_label_len
    for query, instruction in itertools.product(QUERIES, INSTRUCTIONS):
        ours = card_template.render(query, DOCUMENTS, instruction)
        card = render_pairs(query, DOCUMENTS, instruction)
        assert [p.text for p in ours] == [p.text for p in card]
        for max_length in (8192, 90):  # whole, and truncated inside the document
            got = tok.encode_pairs(ours, max_length)
            want = builtin.encode_pairs(card, max_length)
            assert [(p.shared, p.own, p.head) for p in got] == \
                [(p.shared, p.own, p.head) for p in want], (query, instruction)


def test_the_instruction_comes_from_the_field_kwargs_or_a_system_message():
    plain, st = JinjaTemplate(CARD), JinjaTemplate(CARD, system_instruction=True,
                                                  default_instruction="from the checkpoint")
    assert "<Instruct>: Given a web search query" in plain.render("q", ["d"])[0].text
    assert "<Instruct>: kw\n" in plain.render("q", ["d"], None, {"instruction": "kw"})[0].text
    assert "<Instruct>: field\n" in plain.render("q", ["d"], "field", {"instruction": "kw"})[0].text
    assert "<Instruct>: from the checkpoint\n" in st.render("q", ["d"])[0].text
    assert "<Instruct>: asked\n" in st.render("q", ["d"], "asked")[0].text


def test_vllm_style_template_renders_as_vllm_does():
    """(transformers' apply_chat_template renders the same text; checked by hand, as importing
    it here costs ~20 s)"""
    t = JinjaTemplate(VLLM_STYLE)
    # Jinja drops the source's last newline, as in vLLM: "</think>\n", not the card's "\n\n"
    assert t.suffix == SUFFIX[:-1] and t.prefix == SYSTEM_PREFIX
    (pair,) = t.render("q?", ["d."], None, {"instruct": "mine"})
    assert pair.query_side == SYSTEM_PREFIX + "<Instruct>: mine\n<Query>: q?\n"
    assert pair.doc_body == "<Document>: d." and pair.head_chars == len(
        SYSTEM_PREFIX + "<Instruct>: mine\n")
    assert pair.text == (SYSTEM_PREFIX + "<Instruct>: mine\n<Query>: q?\n<Document>: d."
                         + SUFFIX[:-1])


def test_a_suffix_that_depends_on_a_variable_is_never_cut(tok):
    t = JinjaTemplate("Q: {{ messages[0].content }}\nD: {{ messages[1].content }}"
                      "<|im_end|>\n{{ tail | default('yes or no?') }}")
    long_doc = " ".join(f"w{i}" for i in range(400))
    (pair,) = t.render("q", [long_doc], None, {"tail": "relevant?"})
    assert pair.query_side == "Q: q\n" and pair.suffix == "<|im_end|>\nrelevant?"
    (ids,) = tok.encode_pairs([pair], 60)
    suffix = tok.tokenizer.encode(pair.suffix, add_special_tokens=False).ids
    assert len(ids) == 60 and list(ids.own[-len(suffix):]) == suffix


@pytest.mark.parametrize("source, message", [
    ("{{ messages[0].content }} and no document", "document"),
    ("{% for m in messages %}{{ m.content }}\n{% endfor %}{{ messages[1].content }}",
     "exactly once"),
    ("{{ messages[1].content }}\n{{ messages[0].content }}", "query after the document"),
    ("{{ messages[0].content }}\n{{ messages[1].content | trim }}", "changes the document"),
    ("{{ messages[0].content }\n", "does not compile"),
])
def test_templates_qrank_cannot_split_are_refused_clearly(source, message):
    with pytest.raises(TemplateError, match=message):
        JinjaTemplate(source)


def test_a_render_error_is_a_template_error():
    t = JinjaTemplate("{% if x is defined %}{{ raise_exception('x is refused') }}{% endif %}"
                      "{{ messages[0].content }}\n{{ messages[1].content }}")
    with pytest.raises(TemplateError, match="x is refused"):
        t.render("q", ["d"], None, {"x": 1})
    assert "messages" not in t.render("q", ["d"], None, {"messages": "no"})[0].text


def test_read_template_takes_a_file_or_the_template_itself(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    assert read_template(str(path)) == "{{ messages }}"
    assert read_template("{{ messages }}") == "{{ messages }}"
    with pytest.raises(TemplateError, match="no such file"):
        read_template(str(tmp_path / "missing.jinja"))


def test_inputs_already_rendered_with_the_template_pass_through(card_template):
    query = SYSTEM_PREFIX + "<Instruct>: i\n<Query>: q\n"
    docs = ["<Document>: a" + SUFFIX, "<Document>: b" + SUFFIX]
    pairs = card_template.render(query, docs, "ignored")
    assert [p.text for p in pairs] == [query + d for d in docs]
    assert pairs == render_pairs(query, docs)
