"""Token ids for template pieces, with truncation that never cuts the template's prefix or suffix.

The model card tokenizes ``prefix``, ``body`` and ``suffix`` separately and truncates the body
from the right (``truncation_side="left"`` cuts the document's start instead, keeping its
``<Document>:`` label). The Qwen3 pre-tokenizer always ends a piece at the newline that closes the
``<Query>`` line, so encoding the query side and the document body separately yields the same ids
as the card's single body encoding, and truncating the document from the right is the card's
truncation. When the query side alone leaves no room, the document is dropped and then the query
side is cut, keeping the system prefix whole.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from qrank.prompts import QUERY_LINE, BuiltinTemplate, PromptPair, ScoreTemplate

logger = logging.getLogger(__name__)


class InputTooLongError(ValueError):
    """A pair is longer than the limit and truncation was turned off."""


@dataclass(frozen=True)
class PairTokens:
    """Token ids of one pair: ``shared`` (query side, common to a query's documents) + ``own``.

    ``own`` is the document body followed by the suffix ids; ``shared + own`` is the full prompt.
    ``head``: how many leading ids of ``shared`` are the template's head (the system prefix and
    the ``<Instruct>`` line), common to every query under the same instruction; 0 when unknown.
    ``salt``: the request's ``cache_salt``; pairs of different salts never share cached scores.
    """

    shared: tuple[int, ...]
    own: tuple[int, ...]
    head: int = 0
    salt: str = ""

    def __len__(self) -> int:
        return len(self.shared) + len(self.own)

    @property
    def ids(self) -> list[int]:
        return [*self.shared, *self.own]


class RerankTokenizer:
    """Encodes prompt pairs for the reranker; caches the query side of recent queries.

    ``template`` gives the fixed pieces (prefix, suffix, document label); default: built-in."""

    def __init__(self, tokenizer: Tokenizer, query_cache_size: int = 256,
                 template: ScoreTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        template = template or BuiltinTemplate()
        self.prefix = template.prefix
        self.suffix = template.suffix
        self.prefix_ids = tuple(self._encode(self.prefix))
        self.suffix_ids = tuple(self._encode(self.suffix))
        # "<Document>:" before the text; the space after it joins the text's first word
        self.doc_label_len = len(self._encode(template.doc_label.rstrip()))
        self._query_cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._lock = threading.Lock()  # the server tokenizes in several threads

    @classmethod
    def from_file(cls, path: str | Path, template: ScoreTemplate | None = None
                  ) -> RerankTokenizer:
        return cls(Tokenizer.from_file(str(path)), template=template)

    def token_id(self, token: str) -> int:
        """The id of a single vocabulary token, e.g. ``"yes"``; KeyError when it is not one."""
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @property
    def template_overhead(self) -> int:
        """Tokens the template adds that can never be truncated (prefix and suffix)."""
        return len(self.prefix_ids) + len(self.suffix_ids)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_query_side(self, text: str) -> tuple[int, ...]:
        with self._lock:
            cached = self._query_cache.get(text)
            if cached is not None:
                self._query_cache.move_to_end(text)
                return cached
        ids = tuple(self._encode(text))
        with self._lock:
            self._query_cache[text] = ids
            if len(self._query_cache) > self._query_cache_size:
                self._query_cache.popitem(last=False)
        return ids

    def head_length(self, query_side: str, shared: tuple[int, ...],
                    head_chars: int | None = None) -> int:
        """How many leading ids of ``shared`` (the ids of ``query_side``) are the template's
        head: its first ``head_chars`` characters when given, else the text up to the
        ``<Query>`` line, or the template's prefix where there is none. Checked on the ids, so
        a head that does not tokenize as a prefix of the whole is 0."""
        if head_chars is not None:
            if head_chars <= 0:
                return 0
            head = self.encode_query_side(query_side[:head_chars])
        else:
            cut = query_side.find(QUERY_LINE)
            head = self.encode_query_side(query_side[: cut + 1] if cut >= 0 else self.prefix)
        n = len(head)
        return n if n <= len(shared) and shared[:n] == head else 0

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut to its first ``max_tokens`` tokens, at a token boundary (vLLM's
        ``max_tokens_per_query``); the cut text encodes to at most that many tokens."""
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens][0]]

    def encode_pairs(
        self, pairs: list[PromptPair], max_length: int, truncate: bool = True,
        max_doc_tokens: int | None = None, truncation_side: str = "right",
    ) -> list[PairTokens]:
        """Encode pairs, truncating each to ``max_length`` tokens (or raising when not allowed).

        ``max_doc_tokens`` first cuts each document's text to that many tokens (Cohere's
        ``max_tokens_per_doc``), whatever ``truncate`` says. ``truncation_side`` says which end
        of the document a pair too long for ``max_length`` loses (see :meth:`fit`).
        """
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', not {truncation_side!r}")
        if not pairs:
            return []
        body_ids = [e.ids for e in self.tokenizer.encode_batch([p.doc_body for p in pairs],
                                                               add_special_tokens=False)]
        return [self.fit(shared, ids, max_length, truncate, head, suffix, truncation_side)
                for shared, ids, head, suffix in self.pieces(pairs, body_ids, max_doc_tokens)]

    def pieces(self, pairs: list[PromptPair], body_ids: list[list[int]],
               max_doc_tokens: int | None = None
               ) -> Iterator[tuple[tuple[int, ...], list[int], int, tuple[int, ...]]]:
        """Per pair, what :meth:`fit` assembles: its query-side ids, its body's ids
        (``body_ids``, cut to ``max_doc_tokens`` of document), its head length and its
        suffix ids."""
        heads: dict[str, int] = {}  # per query side: a query's documents share it
        for p, ids in zip(pairs, body_ids, strict=True):
            shared = self.encode_query_side(p.query_side)
            if p.query_side not in heads:
                heads[p.query_side] = self.head_length(p.query_side, shared, p.head_chars)
            if max_doc_tokens is not None:
                ids = ids[: self.doc_label_len + max_doc_tokens]
            yield shared, ids, heads[p.query_side], self.suffix_of(p)

    def suffix_of(self, pair: PromptPair) -> tuple[int, ...]:
        """The ids that end ``pair``: the template's suffix, or the pair's own."""
        if pair.suffix == self.suffix:
            return self.suffix_ids
        return self.encode_query_side(pair.suffix)

    def fit(
        self, shared: tuple[int, ...], body: list[int], max_length: int, truncate: bool = True,
        head: int = 0, suffix: tuple[int, ...] | None = None, side: str = "right",
    ) -> PairTokens:
        """Assemble one pair, cutting the document body, then the query side, to fit; ``head``
        is the query side's head length (:meth:`head_length`); ``suffix``: ids ending this pair
        when they are not the template's. ``side`` "right" keeps the body's first tokens;
        "left" keeps its ``<Document>:`` label and its last tokens."""
        suffix = self.suffix_ids if suffix is None else suffix
        total = len(shared) + len(body) + len(suffix)
        if total <= max_length:
            return PairTokens(shared, (*body, *suffix), head)
        if not truncate:
            raise InputTooLongError(
                f"the input has {total} tokens, more than the maximum of {max_length}; "
                "shorten it or allow truncation"
            )
        room = max_length - len(suffix) - len(shared)
        if room >= 0:
            return PairTokens(shared, (*self._cut_body(body, room, side), *suffix), head)
        keep = max_length - len(suffix)
        if keep < len(self.prefix_ids):
            raise InputTooLongError(
                f"max length {max_length} leaves no room for the template's "
                f"{self.template_overhead} tokens"
            )
        return PairTokens(shared[:keep], suffix, min(head, keep))

    def _cut_body(self, body: list[int], room: int, side: str) -> list[int]:
        """``room`` tokens of a document body, from its start (right) or its end (left)."""
        label = self.doc_label_len
        if side == "right" or room <= label:
            return body[:room]
        return [*body[:label], *body[len(body) - (room - label) :]]

    def count(self, text: str) -> int:
        """Number of tokens of a plain text."""
        return len(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)
