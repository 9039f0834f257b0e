"""Windows of long documents: a document that does not fit beside its query is split into
windows that do, each scored as a document of its own; the document scores its best window.

Windows are cut at token boundaries of the document's encoding, preferring the pre-tokenizer's
word boundaries and never inside a character or a combining sequence (accents, emoji joiners
and modifiers), so that a window's text is a clean slice ``document[start:end]`` of the string
the client sent. A window's ids are those of that slice encoded alone, so a window scores
exactly as its text sent alone would. Consecutive windows share ``overlap`` tokens (at most
half a window), rounded up to a word boundary where one is near.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding

from qrank.prompts import PromptPair
from qrank.tokenize import InputTooLongError, PairTokens, RerankTokenizer

DEFAULT_OVERLAP = 64
_ZWJ = "\u200d"


@dataclass(frozen=True)
class DocTokens:
    """A document's pairs: one, or one per window of a document that was split; ``spans``
    then holds each window's (start, end) character offsets into the document."""

    pairs: tuple[PairTokens, ...]
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def split(self) -> bool:
        return bool(self.spans)


@dataclass(frozen=True)
class Chunk:
    """The best window of a split document: ``document[start:end]``, its index among the
    document's windows and its score (the document's score)."""

    index: int
    start: int
    end: int
    relevance_score: float


def flatten(docs: Sequence[DocTokens]) -> list[PairTokens]:
    """Every pair of every document, in order: what the engine scores."""
    return [p for d in docs for p in d.pairs]


def best_windows(docs: Sequence[DocTokens],
                 scores: Sequence[float]) -> list[tuple[float, Chunk | None]]:
    """Each document's score, the maximum over its windows (the first best on a tie), and
    for a split document the window that gave it; ``scores`` are those of :func:`flatten`."""
    out: list[tuple[float, Chunk | None]] = []
    i = 0
    for d in docs:
        mine = scores[i: i + len(d.pairs)]
        i += len(d.pairs)
        k = max(range(len(mine)), key=mine.__getitem__)
        out.append((mine[k], Chunk(k, *d.spans[k], mine[k]) if d.spans else None))
    if i != len(scores):
        raise ValueError(f"{len(scores)} scores for {i} pairs")
    return out


def encode_docs(tok: RerankTokenizer, pairs: list[PromptPair], max_length: int,
                truncate: bool = True, max_doc_tokens: int | None = None, max_chunks: int = 1,
                overlap: int = DEFAULT_OVERLAP, truncation_side: str = "right"
                ) -> list[DocTokens]:
    """Encode pairs; with ``max_chunks`` > 1 a document that does not fit is split into at
    most that many windows, from its start (what lies past them is cut, or with ``truncate``
    False refused). ``max_doc_tokens`` cuts each document first. A document whose place in the
    body is unknown (``doc_span`` None: the client formatted it) is truncated as ever, from
    ``truncation_side``; windows always run from the document's start."""
    if max_chunks < 1:
        raise ValueError("max_chunks_per_doc must be at least 1")
    if overlap < 0:
        raise ValueError("chunk_overlap_tokens must not be negative")
    if max_chunks == 1 or not pairs:
        return [DocTokens((p,))
                for p in tok.encode_pairs(pairs, max_length, truncate, max_doc_tokens,
                                          truncation_side)]
    encodings = tok.tokenizer.encode_batch([p.doc_body for p in pairs], add_special_tokens=False)
    pieces = tok.pieces(pairs, [e.ids for e in encodings], max_doc_tokens)
    out = []
    for p, enc, (shared, ids, head, suffix) in zip(pairs, encodings, pieces, strict=True):
        if p.doc_span is None or len(shared) + len(ids) + len(suffix) <= max_length:
            out.append(DocTokens((tok.fit(shared, ids, max_length, truncate, head, suffix,
                                          truncation_side),)))
            continue
        splitter = _Splitter(tok, p, enc, shared, head, max_length, suffix)
        out.append(splitter.split(max_doc_tokens, max_chunks, overlap, truncate))
    return out


def clean_cut(text: str, i: int) -> bool:
    """Whether cutting ``text`` at ``i`` keeps every character sequence a reader sees as one
    whole: no cut before a combining mark, an emoji modifier or tag, around a zero-width
    joiner, inside a flag (two regional indicators) or a CR LF."""
    if i <= 0 or i >= len(text):
        return True
    a, b = text[i - 1], text[i]
    if a == _ZWJ or b == _ZWJ or (a == "\r" and b == "\n"):
        return False
    if unicodedata.category(b) in ("Mn", "Mc", "Me"):
        return False
    cb = ord(b)
    if 0x1F3FB <= cb <= 0x1F3FF or 0xE0020 <= cb <= 0xE007F:  # skin tones, emoji tags
        return False
    return not (0x1F1E6 <= ord(a) <= 0x1F1FF and 0x1F1E6 <= cb <= 0x1F1FF)


class _Splitter:
    """Cuts one document's tokens into windows (token indices count the document's tokens,
    after the ``<Document>:`` label; boundary k lies before token k)."""

    def __init__(self, tok: RerankTokenizer, pair: PromptPair, enc: Encoding,
                 shared: tuple[int, ...], head: int, max_length: int,
                 suffix: tuple[int, ...]) -> None:
        assert pair.doc_span is not None
        self.tok, self.pair, self.shared, self.head = tok, pair, shared, head
        self.suffix = suffix
        self.max_length = max_length
        lo, hi = pair.doc_span
        self.doc = pair.doc_body[lo:hi]
        offsets = enc.offsets
        label = 0
        while label < len(offsets) and offsets[label][1] <= lo:
            label += 1
        end = label
        while end < len(offsets) and offsets[end][0] < hi:
            end += 1
        self.starts = [max(0, s - lo) for s, _ in offsets[label:end]]
        self.ends = [max(0, e - lo) for _, e in offsets[label:end]]
        self.words = enc.word_ids[label:end]
        # tokens each window's ids may hold beside the query side, the label and the suffix
        self.room = max_length - len(shared) - len(suffix) - label
        if self.room < 1:
            raise InputTooLongError(
                f"the query with the template and instruction takes {max_length - self.room} "
                f"of the {max_length} tokens a pair may have, leaving no room for a window of "
                "the document; shorten the query or raise the length limit")

    # ---- where to cut --------------------------------------------------------------------
    def quality(self, k: int) -> int:
        """How well boundary k cuts: 3 a clean word boundary, 2 clean, 1 it splits a
        combining sequence, 0 it splits a character (never cut there)."""
        if k <= 0 or k >= len(self.starts):
            return 3
        c = self.starts[k]
        if c < self.ends[k - 1] or c <= self.starts[k - 1]:
            return 0
        if not clean_cut(self.doc, c):
            return 1
        return 3 if self.words[k] != self.words[k - 1] else 2

    def cut_before(self, k: int, lo: int, words_from: int) -> int | None:
        """The best boundary in [lo, k]: the highest word boundary at or above ``words_from``,
        else the highest clean one, else the highest one that keeps characters whole."""
        best: dict[int, int] = {}
        for j in range(k, lo - 1, -1):
            q = self.quality(j)
            if q == 3 and j >= words_from:
                return j
            if q:
                best.setdefault(min(q, 2), j)
            if j < words_from and 2 in best:
                break
        return best.get(2, best.get(1))

    def cut_after(self, k: int, hi: int) -> int | None:
        """The lowest boundary in [k, hi] that keeps characters whole, clean ones first."""
        found = None
        for j in range(k, hi + 1):
            q = self.quality(j)
            if q >= 2:
                return j
            if q and found is None:
                found = j
        return found

    # ---- the windows ---------------------------------------------------------------------
    def span(self, a: int, b: int, n: int, doc_end: int) -> tuple[int, int]:
        """Character offsets of tokens [a, b); a window after the first starts after the
        space that begins its first word (the label's space stands in for it)."""
        start = 0 if a == 0 else self.starts[a]
        if a and self.doc[start: start + 1] == " " and not self.doc[start + 1: start + 2].isspace():
            start += 1
        return start, (doc_end if b >= n else self.starts[b])

    def encode(self, start: int, end: int) -> tuple[int, ...]:
        """The window's own ids: its text encoded alone as a document, then the suffix."""
        lo, hi = self.pair.doc_span  # type: ignore[misc]
        body = self.pair.doc_body[:lo] + self.doc[start:end] + self.pair.doc_body[hi:]
        ids = self.tok.tokenizer.encode(body, add_special_tokens=False).ids
        return (*ids, *self.suffix)

    def split(self, max_doc_tokens: int | None, max_chunks: int, overlap: int,
              truncate: bool) -> DocTokens:
        n = len(self.starts)
        doc_end = len(self.doc)
        if max_doc_tokens is not None and max_doc_tokens < n:
            n = self.cut_before(max_doc_tokens, 1, max_doc_tokens) or max_doc_tokens
            doc_end = self.starts[n]
        room, overlap = self.room, min(overlap, self.room // 2)
        pairs: list[PairTokens] = []
        spans: list[tuple[int, int]] = []
        end_slack, start_slack = min(room // 4, 128), max(16, overlap // 2)
        a = 0
        while True:
            limit, failed = min(n, a + room), n + 1
            while True:
                b = limit if limit >= n else self.cut_before(limit, a + 1, limit - end_slack)
                if b is None:
                    b = self.cut_after(limit + 1, n) or n
                if b >= failed:
                    raise InputTooLongError(
                        f"no window of the document fits in {self.max_length} tokens beside "
                        "the query; shorten the query or raise the length limit")
                start, end = self.span(a, b, n, doc_end)
                own = self.encode(start, end)
                excess = len(self.shared) + len(own) - self.max_length
                if excess <= 0:
                    break
                failed, limit = b, max(a + 1, min(limit, b) - excess)
            pairs.append(PairTokens(self.shared, own, self.head))
            spans.append((start, end))
            if b >= n:
                break
            if len(pairs) == max_chunks:
                if not truncate:
                    raise InputTooLongError(
                        f"a document needs more than max_chunks_per_doc={max_chunks} windows "
                        f"of up to {self.max_length} tokens; raise max_chunks_per_doc or allow "
                        "truncation")
                break
            target = b - overlap
            nxt = self.cut_before(target, a + 1, target - start_slack) if target > a else None
            a = nxt if nxt is not None else (self.cut_after(max(a + 1, target), b) or b)
        return DocTokens(tuple(pairs), tuple(spans))
