"""The workloads of ``qrank bench``: random-rerank, built as ``vllm bench`` builds its
``random-rerank`` dataset, and custom-rerank, requests replayed from a JSONL file.

One query is shared by every request. For ``--random-input-len L`` and ``--random-range-ratio r``
the query has about ``L // 2 - 1`` tokens and each document ``L - query_len - 1`` tokens (one
token is kept for the separator between the two), each length drawn uniformly from
``[floor(n (1 - r)), ceil(n (1 + r))]``. The text is made of runs of non-special token ids
decoded with the model's tokenizer, re-encoded and trimmed until it encodes to the drawn length.
``--num-prompts`` counts documents; ``--random-batch-size`` of them go into one request. A range
``MIN:MAX`` draws each request's count uniformly in it, after the texts (so they stay vLLM's),
the last request taking what is left.

custom-rerank (``--dataset-path FILE``) reads one request a line, ``{"query": "...",
"documents": ["...", ...]}`` (documents as strings or ``{"text": ...}``; other keys are
ignored), and sends the first ``--num-prompts`` lines in their order.

The random draws follow vLLM's order from one ``numpy.random.default_rng(seed)``, so the same
seed and tokenizer give the same texts as ``vllm bench serve --dataset-name random-rerank``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Tokens between query and document that vLLM counts for a reranker (the separator).
SEP_TOKENS = 1
# Decode/re-encode rounds before accepting a text whose length is off.
MAX_RETRIES = 10


@dataclass(frozen=True)
class RerankRequest:
    """One rerank request: the shared query and this request's documents.

    ``prompt_len`` is the dataset's own count, ``(query + 1) * len(documents) + sum(documents)``
    tokens, as vLLM counts it; the benchmark reports the server's ``usage.prompt_tokens``.
    """

    query: str
    documents: list[str]
    prompt_len: int
    request_id: str


def load_tokenizer(name: str | Path) -> Tokenizer:
    """The ``tokenizers`` tokenizer of a directory, a tokenizer.json file, or a model name."""
    path = Path(name).expanduser()
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from qrank.models.loader import resolve_model_path  # imports torch: only when needed

    model_dir = resolve_model_path(str(name))
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json for {name!r} (looked in {model_dir})")
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


class RandomRerankDataset:
    """Synthetic rerank requests from random token runs; reproducible from ``seed``."""

    def __init__(self, tokenizer: Tokenizer, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rng = np.random.default_rng(seed)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)
        self.num_special = len(tokenizer.encode("", add_special_tokens=True).ids)
        special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
        self.allowed = np.array([i for i in range(self.vocab_size) if i not in special])
        self.mismatch = 0

    # ---- lengths --------------------------------------------------------------------------
    def length_bounds(self, length: int, range_ratio: float) -> tuple[int, int]:
        """The inclusive range token counts are drawn from for a nominal ``length``."""
        if not 0.0 <= range_ratio < 1.0:
            raise ValueError(f"--random-range-ratio must be in [0, 1), not {range_ratio}")
        real = max(0, int(length) - self.num_special)
        return math.floor(real * (1 - range_ratio)), math.ceil(real * (1 + range_ratio))

    def draw(self, n: int, length: int, range_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """``n`` lengths and start offsets, drawing in vLLM's order (lengths, a discarded
        output length, offsets) so that the stream of random numbers matches."""
        low, high = self.length_bounds(length, range_ratio)
        lengths = self.rng.integers(low, high + 1, size=n)
        self.rng.integers(1, 2, size=n)  # vLLM's output lengths, unused by a reranker
        offsets = self.rng.integers(0, self.vocab_size, size=n)
        return lengths, offsets

    # ---- text -----------------------------------------------------------------------------
    def text_of_length(self, length: int, offset: int, index: int) -> tuple[str, int]:
        """A text that encodes to ``length`` tokens (or close, after retries) and its count."""
        n = len(self.allowed)
        ids = self.allowed[(offset + index + np.arange(length)) % n].tolist()
        for attempt in range(MAX_RETRIES + 1):
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(ids) == length or attempt == MAX_RETRIES:
                break
            if len(ids) < length:
                extra = self.rng.integers(0, self.vocab_size, size=length - len(ids))
                ids.extend(extra.tolist())
            else:
                ids = ids[:length]
        self.mismatch += len(ids) - length
        return text, len(ids)

    # ---- requests -------------------------------------------------------------------------
    def sample(
        self,
        num_prompts: int,
        input_len: int = 1024,
        range_ratio: float = 0.0,
        batch_size: int | tuple[int, int] = 1,
        request_id_prefix: str = "",
    ) -> list[RerankRequest]:
        """``num_prompts`` documents for one shared query, ``batch_size`` per request (or a
        count drawn in ``(min, max)`` for each request)."""
        low, high = batch_size if isinstance(batch_size, tuple) else (batch_size, batch_size)
        if num_prompts < 1 or not 1 <= low <= high:
            raise ValueError("--num-prompts and --random-batch-size must be positive")
        if input_len // 2 - SEP_TOKENS < 1:
            raise ValueError(f"--random-input-len {input_len} is too small for a query and a "
                             f"document; use at least 4")
        self.mismatch = 0
        query_lens, query_offsets = self.draw(1, input_len // 2 - SEP_TOKENS, range_ratio)
        query_len = int(query_lens[0])
        doc_len = input_len - query_len - SEP_TOKENS
        if self.length_bounds(doc_len, range_ratio)[0] < 1:
            raise ValueError(f"--random-input-len {input_len} with --random-range-ratio "
                             f"{range_ratio} can draw empty documents; raise the length")
        doc_lens, doc_offsets = self.draw(num_prompts, doc_len, range_ratio)
        query, query_tokens = self.text_of_length(query_len, int(query_offsets[0]), 0)
        docs = [self.text_of_length(int(doc_lens[i]), int(doc_offsets[i]), i + 1)
                for i in range(num_prompts)]
        if self.mismatch:
            logger.warning("the random texts have %d %s tokens than drawn in all (decoding and "
                           "re-encoding does not always round-trip)", abs(self.mismatch),
                           "more" if self.mismatch > 0 else "fewer")
        starts = [0]
        while starts[-1] < num_prompts:
            starts.append(starts[-1] + int(self.rng.integers(low, high + 1)) if high > low
                          else starts[-1] + low)
        return [self._request(query, query_tokens, docs[a:b], f"{request_id_prefix}{n}")
                for n, (a, b) in enumerate(zip(starts, starts[1:], strict=False))]

    @staticmethod
    def _request(query: str, query_tokens: int, docs: list[tuple[str, int]],
                 request_id: str) -> RerankRequest:
        prompt_len = (query_tokens + SEP_TOKENS) * len(docs) + sum(n for _, n in docs)
        return RerankRequest(query, [text for text, _ in docs], prompt_len, request_id)


def load_custom_rerank(path: str | Path, tokenizer: Tokenizer,
                       num_requests: int | None = None) -> list[RerankRequest]:
    """The first ``num_requests`` requests of a JSONL file (all when None), one a line:
    ``{"query": str, "documents": [str | {"text": str}, ...]}``; blank lines are skipped.
    ``prompt_len`` counts as random-rerank's does, with this tokenizer."""
    requests: list[RerankRequest] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if num_requests is not None and len(requests) >= num_requests:
                break
            if not line.strip():
                continue
            query, documents = _parse_line(line, f"{path}:{number}")
            ids = tokenizer.encode_batch([query, *documents], add_special_tokens=False)
            query_tokens = len(ids[0].ids)
            prompt_len = (query_tokens + SEP_TOKENS) * len(documents) + sum(
                len(e.ids) for e in ids[1:])
            requests.append(RerankRequest(query, documents, prompt_len, str(len(requests))))
    if not requests:
        raise ValueError(f"{path} holds no request")
    if num_requests is not None and len(requests) < num_requests:
        logger.warning("%s holds %d requests, fewer than --num-prompts %d: sending them all",
                       path, len(requests), num_requests)
    return requests


def _parse_line(line: str, where: str) -> tuple[str, list[str]]:
    """``(query, documents)`` of one JSONL line; ValueError naming ``where`` otherwise."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        raise ValueError(f'{where}: expected {{"query": "...", "documents": [...]}}')
    docs = data.get("documents")
    if not isinstance(docs, list) or not docs:
        raise ValueError(f"{where}: 'documents' must be a non-empty list")
    texts = [d.get("text") if isinstance(d, dict) else d for d in docs]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: each document must be a string or {{\"text\": \"...\"}}")
    return data["query"], texts


def sample_from_namespace(ns: argparse.Namespace, tokenizer: Tokenizer) -> list[RerankRequest]:
    """The requests that the dataset flags of ``qrank bench`` ask for."""
    if ns.dataset_name == "custom-rerank":
        if not getattr(ns, "dataset_path", None):
            raise ValueError("--dataset-name custom-rerank reads --dataset-path FILE (JSONL)")
        return load_custom_rerank(ns.dataset_path, tokenizer, ns.num_prompts)
    if ns.dataset_name != "random-rerank":
        raise ValueError(f"unknown dataset {ns.dataset_name!r}; random-rerank and "
                         "custom-rerank are built in")
    dataset = RandomRerankDataset(tokenizer, seed=ns.seed)
    return dataset.sample(ns.num_prompts, input_len=ns.random_input_len,
                          range_ratio=ns.random_range_ratio, batch_size=ns.random_batch_size)
