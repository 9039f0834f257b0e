from qrank.prompts import (
    DEFAULT_INSTRUCTION,
    SUFFIX,
    SYSTEM_PREFIX,
    is_preformatted,
    render_pairs,
)


def test_render_raw_pair_is_the_model_card_prompt():
    (pair,) = render_pairs("q?", ["d."], "inst")
    assert pair.text == SYSTEM_PREFIX + "<Instruct>: inst\n<Query>: q?\n<Document>: d." + SUFFIX
    assert pair.query_side == SYSTEM_PREFIX + "<Instruct>: inst\n<Query>: q?\n"


def test_default_instruction_and_empty_instruction_differ():
    (default,) = render_pairs("q", ["d"])
    (empty,) = render_pairs("q", ["d"], "")
    assert f"<Instruct>: {DEFAULT_INSTRUCTION}\n" in default.text
    assert "<Instruct>: \n<Query>: q\n" in empty.text


def test_preformatted_inputs_pass_through_unchanged():
    query = SYSTEM_PREFIX + "<Instruct>: i\n<Query>: q\n"
    docs = ["<Document>: a" + SUFFIX, "<Document>: b" + SUFFIX]
    assert is_preformatted(query, docs)
    pairs = render_pairs(query, docs, instruction="ignored")
    assert [p.text for p in pairs] == [query + d for d in docs]
    assert pairs[0].doc_body == "<Document>: a"


def test_partially_formatted_inputs_are_treated_as_raw():
    query = SYSTEM_PREFIX + "<Instruct>: i\n<Query>: q\n"
    assert not is_preformatted(query, ["<Document>: a" + SUFFIX, "plain"])
    assert not is_preformatted("plain", ["<Document>: a" + SUFFIX])
    (pair,) = render_pairs("plain", ["<Document>: a" + SUFFIX])
    assert pair.text.startswith(SYSTEM_PREFIX + "<Instruct>: ")
