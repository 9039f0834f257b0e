"""Windows of long documents, at the token level (the real Qwen3 tokenizer, no model): each
window is a clean slice of the document whose ids are those of the slice sent alone; windows
overlap as asked and cover the document up to the cap."""

import itertools
import random

import pytest

from qrank.prompts import SUFFIX, SYSTEM_PREFIX, render_pairs, render_query_body
from qrank.tokenize import InputTooLongError, RerankTokenizer
from qrank.windows import Chunk, DocTokens, best_windows, clean_cut, encode_docs, flatten

QUERY = "which clause covers termination?"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "tokenization",
         "internationalization", "2024", "contract", "clause,", "termination;", "notice."]
UNICODE = ["北京是中国的首都。", "索引是一种加快数据库查询的数据结构", "👨‍👩‍👧", "👍🏽", "🇫🇷🇩🇪",
           "e\u0301cole", "café", "naïve\r\nline", "Ωmega-3 🐟", "\u0915\u094d\u0937"]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return RerankTokenizer.from_file(tokenizer_dir / "tokenizer.json")


def text(rng: random.Random, n_words: int, unicode: bool) -> str:
    pool = [*WORDS, *UNICODE] if unicode else list(WORDS)
    return " ".join(rng.choice(pool) for _ in range(n_words))


def windows(tok, doc: str, max_length: int, max_chunks: int = 10_000, overlap: int = 16,
            **kw) -> DocTokens:
    (d,) = encode_docs(tok, render_pairs(QUERY, [doc]), max_length, max_chunks=max_chunks,
                       overlap=overlap, **kw)
    return d


def check_invariant(tok, doc: str, d: DocTokens, max_length: int) -> None:
    """Each window's ids are those of ``doc[start:end]`` sent alone, and fit."""
    for (start, end), pair in zip(d.spans, d.pairs, strict=True):
        (alone,) = tok.encode_pairs(render_pairs(QUERY, [doc[start:end]]), max_length)
        assert pair.ids == alone.ids, (start, end)
        assert len(pair) <= max_length


def check_cover(doc: str, d: DocTokens, end: int) -> None:
    """Windows start at 0, move forward, leave nothing out but the space before a window's
    first word, and end at ``end``."""
    assert d.spans[0][0] == 0 and d.spans[-1][1] == end
    for (s1, e1), (s2, e2) in itertools.pairwise(d.spans):
        assert s1 < s2 < e2 and (s2 <= e1 or doc[e1:s2] == " ")


@pytest.mark.parametrize("seed", range(6))
def test_windows_are_clean_slices_scored_as_sent_alone(tok, seed):
    rng = random.Random(seed)
    unicode = seed % 2 == 1
    max_length = rng.choice([140, 200, 400])
    doc = text(rng, rng.randint(300, 1500), unicode)
    d = windows(tok, doc, max_length, overlap=rng.choice([0, 8, 24]))
    assert d.split and len(d.pairs) == len(d.spans) > 1
    check_invariant(tok, doc, d, max_length)
    check_cover(doc, d, len(doc))
    for start, end in d.spans:  # the slice is the same text as UTF-8 bytes round-tripped
        piece = doc[start:end]
        assert piece.encode("utf-8").decode("utf-8") == piece
        assert clean_cut(doc, start) and clean_cut(doc, end)
    assert all(p.shared == d.pairs[0].shared for p in d.pairs)  # one shared prefix


@pytest.mark.parametrize("overlap", [0, 10, 32])
def test_windows_overlap_by_the_requested_tokens(tok, overlap):
    doc = text(random.Random(overlap), 900, unicode=False)
    d = windows(tok, doc, 300, overlap=overlap)
    assert len(d.spans) > 3
    for (_, e1), (s2, _) in itertools.pairwise(d.spans):
        shared = tok.count(doc[s2:e1]) if s2 < e1 else 0
        assert overlap <= shared + 1 and shared <= overlap + 4  # rounded to a word boundary


def test_at_most_max_chunks_from_the_start(tok):
    doc = text(random.Random(7), 1500, unicode=False)
    every = windows(tok, doc, 200)
    capped = windows(tok, doc, 200, max_chunks=3)
    assert capped.spans == every.spans[:3] and capped.pairs == every.pairs[:3]
    with pytest.raises(InputTooLongError, match="max_chunks_per_doc=3"):
        windows(tok, doc, 200, max_chunks=3, truncate=False)
    assert windows(tok, doc, 200, truncate=False).spans == every.spans  # nothing cut: fine


def test_max_tokens_per_doc_cuts_first(tok):
    doc = text(random.Random(8), 1500, unicode=False)
    d = windows(tok, doc, 200, max_doc_tokens=500)
    first = doc[: d.spans[-1][1]]
    assert 490 <= tok.count(first) <= 500
    check_cover(doc, d, len(first))
    check_invariant(tok, doc, d, 200)


def test_documents_that_fit_and_max_chunks_one_are_as_before(tok):
    docs = ["short", text(random.Random(9), 800, unicode=True)]
    pairs = render_pairs(QUERY, docs)
    before = tok.encode_pairs(pairs, 300)
    one = encode_docs(tok, pairs, 300, max_chunks=1)
    assert [d.pairs for d in one] == [(p,) for p in before] and not any(d.split for d in one)
    many = encode_docs(tok, pairs, 300, max_chunks=50)
    assert many[0].pairs == (before[0],) and not many[0].split
    assert many[1].split and many[1].pairs[0].shared == before[1].shared


def test_query_too_long_for_any_window_is_an_error(tok):
    long_query = " ".join(WORDS * 20)
    with pytest.raises(InputTooLongError, match="no room for a window"):
        encode_docs(tok, render_pairs(long_query, ["a document " * 50]), 150, max_chunks=4)


def test_preformatted_documents_are_truncated_as_ever(tok):
    query = SYSTEM_PREFIX + render_query_body(QUERY, None)
    pre = render_pairs(query, [f"<Document>: {'x ' * 500}{SUFFIX}"])
    (d,) = encode_docs(tok, pre, 200, max_chunks=4)
    assert not d.split and d.pairs == tuple(tok.encode_pairs(pre, 200))


def test_best_window_is_the_max_first_on_ties(tok):
    docs = [DocTokens(("a",)), DocTokens(("b", "c", "d"), ((0, 5), (3, 9), (7, 12)))]
    got = best_windows(docs, [0.1, 0.5, 0.9, 0.9])
    assert got == [(0.1, None), (0.9, Chunk(1, 3, 9, 0.9))]
    assert flatten(docs) == ["a", "b", "c", "d"]


def test_clean_cut_keeps_what_reads_as_one_character():
    for s, bad in [("e\u0301", 1), ("👍🏽", 1), ("👨\u200d👩", 1), ("👨\u200d👩", 2),
                   ("🇫🇷", 1), ("a\r\nb", 2), ("\u0915\u094d", 1)]:
        assert not clean_cut(s, bad), (s, bad)
    assert clean_cut("ab", 1)
    assert clean_cut("北京", 1) and clean_cut("a b", 1) and clean_cut("x", 0)
