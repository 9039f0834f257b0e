import itertools

import pytest
from inputs import DOCUMENTS, INSTRUCTIONS, QUERIES
from reference import card_input_ids, card_tokenizer, format_instruction

from qrank.prompts import DEFAULT_INSTRUCTION, SUFFIX, SYSTEM_PREFIX, render_pairs
from qrank.tokenize import InputTooLongError, RerankTokenizer


@pytest.fixture(scope="module")
def ours(tokenizer_dir):
    return RerankTokenizer.from_file(tokenizer_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def card(tokenizer_dir):
    return card_tokenizer(tokenizer_dir)


def test_token_ids_equal_the_model_cards(ours, card):
    for query, instruction in itertools.product(QUERIES, INSTRUCTIONS):
        pairs = render_pairs(query, DOCUMENTS, instruction)
        got = [p.ids for p in ours.encode_pairs(pairs, 8192)]
        want = card_input_ids(card, [format_instruction(instruction, query, d)
                                     for d in DOCUMENTS])
        assert got == want, (query, instruction)


def test_shared_part_is_the_query_side(ours):
    pairs = ours.encode_pairs(render_pairs("q", ["a", "b b b"]), 8192)
    assert pairs[0].shared == pairs[1].shared
    assert pairs[0].shared[: len(ours.prefix_ids)] == ours.prefix_ids
    assert pairs[0].own[-len(ours.suffix_ids):] == ours.suffix_ids


def test_preformatted_ids_equal_raw_ids_and_vllm_pair_encoding(ours, card):
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    for query in QUERIES:
        q_text = SYSTEM_PREFIX + f"<Instruct>: {instruction}\n<Query>: {query}\n"
        d_texts = [f"<Document>: {d}{SUFFIX}" for d in DOCUMENTS]
        pre = [p.ids for p in ours.encode_pairs(render_pairs(q_text, d_texts), 8192)]
        raw = [p.ids for p in ours.encode_pairs(render_pairs(query, DOCUMENTS, instruction), 8192)]
        assert pre == raw
        # vLLM encodes text and text_pair separately and concatenates the ids
        vllm = [card(q_text, d, add_special_tokens=False)["input_ids"] for d in d_texts]
        assert pre == vllm


@pytest.mark.parametrize("max_length", [90, 120, 333])
def test_truncation_cuts_the_document_and_keeps_the_suffix(ours, card, max_length):
    long_doc = " ".join(f"token{i}" for i in range(500))
    pairs = render_pairs("a query", [long_doc, "short"])
    long_ids, short_ids = (p.ids for p in ours.encode_pairs(pairs, max_length))
    assert len(long_ids) == max_length
    assert long_ids[-len(ours.suffix_ids):] == list(ours.suffix_ids)
    assert long_ids[: len(ours.prefix_ids)] == list(ours.prefix_ids)
    assert len(short_ids) < max_length
    # exactly what the model card's truncation gives
    want = card_input_ids(card, [format_instruction(None, "a query", long_doc)], max_length)
    assert long_ids == want[0]


def test_query_alone_too_long_drops_the_document_then_cuts_the_query(ours):
    query = " ".join(f"q{i}" for i in range(400))
    (pair,) = ours.encode_pairs(render_pairs(query, ["a document"]), 120)
    assert len(pair) == 120
    assert pair.ids[: len(ours.prefix_ids)] == list(ours.prefix_ids)
    assert pair.ids[-len(ours.suffix_ids):] == list(ours.suffix_ids)
    assert "a document" not in ours.decode(pair.ids)
    # the head (system prefix, instruction line) survives the cut, inside what is kept
    (whole,) = ours.encode_pairs(render_pairs(query, ["a document"]), 8192)
    assert 0 < pair.head == whole.head <= len(pair.shared)
    assert pair.shared[: pair.head] == whole.shared[: whole.head]


def test_no_truncation_raises_a_clear_error(ours):
    pairs = render_pairs("q", ["word " * 300])
    with pytest.raises(InputTooLongError, match="more than the maximum of 100"):
        ours.encode_pairs(pairs, 100, truncate=False)


def test_special_token_ids_are_looked_up(ours):
    assert ours.token_id("yes") == 9693
    assert ours.token_id("no") == 2152
    with pytest.raises(KeyError):
        ours.token_id("not a single token")


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_head_is_the_system_prefix_and_instruction_line(ours, instruction):
    """Every query under one instruction starts with the same head ids, raw or preformatted."""
    line = f"<Instruct>: {DEFAULT_INSTRUCTION if instruction is None else instruction}\n"
    head = tuple(ours.tokenizer.encode(SYSTEM_PREFIX + line, add_special_tokens=False).ids)
    for query in QUERIES:
        raw = ours.encode_pairs(render_pairs(query, DOCUMENTS[:2], instruction), 8192)
        q_text = SYSTEM_PREFIX + line + f"<Query>: {query}\n"
        d_texts = [f"<Document>: {d}{SUFFIX}" for d in DOCUMENTS[:2]]
        pre = ours.encode_pairs(render_pairs(q_text, d_texts), 8192)
        for t in raw:
            assert t.head == len(head) and t.shared[: t.head] == head
        assert [t.head for t in pre] == [t.head for t in raw]


def test_without_a_query_line_the_head_is_the_system_prefix(ours):
    toks = ours.encode_pairs(render_pairs(SYSTEM_PREFIX + "free text\n", ["d" + SUFFIX]), 8192)
    assert toks[0].head == len(ours.prefix_ids)


def test_left_truncation_keeps_the_label_and_the_documents_end(ours):
    doc = " ".join(f"w{i}" for i in range(300))
    full = ours.encode_pairs(render_pairs("q", [doc]), 8192)[0]
    for side in ("right", "left"):
        cut = ours.encode_pairs(render_pairs("q", [doc]), 120, truncation_side=side)[0]
        assert len(cut) == 120 and cut.shared == full.shared
        assert cut.own[-len(ours.suffix_ids):] == ours.suffix_ids
        body, full_body = cut.own[: -len(ours.suffix_ids)], full.own[: -len(ours.suffix_ids)]
        label = ours.doc_label_len
        assert body[:label] == full_body[:label]  # "<Document>:" stays
        if side == "right":
            assert body == full_body[: len(body)]
        else:
            assert body[label:] == full_body[len(full_body) - (len(body) - label):]
            assert ours.decode(list(body)).endswith("w298 w299")
    with pytest.raises(ValueError, match="truncation_side"):
        ours.encode_pairs(render_pairs("q", [doc]), 120, truncation_side="middle")


@pytest.mark.parametrize("text", ["hello world, how are you doing today?",
                                  "北京是中国的首都吗？🎉🎉 yes", "a  b   c"])
def test_cut_text_keeps_the_first_tokens(ours, text):
    ids = ours.tokenizer.encode(text, add_special_tokens=False).ids
    for n in range(1, len(ids) + 2):
        cut = ours.cut_text(text, n)
        assert text.startswith(cut)
        assert ours.tokenizer.encode(cut, add_special_tokens=False).ids == ids[:n]
