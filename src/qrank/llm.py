"""The offline Python API: :class:`Reranker` (ours) and :class:`LLM` (vLLM's ``LLM.score``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qrank.config import EngineArgs, check_reranker_mode
from qrank.engine.data_parallel import create_engine
from qrank.windows import DEFAULT_OVERLAP, Chunk, best_windows, flatten

logger = logging.getLogger(__name__)

# vLLM constructor arguments that have no meaning here; accepted so vLLM scripts run.
IGNORED_VLLM_KWARGS = {
    "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "enforce_eager",
    "trust_remote_code", "swap_space", "cpu_offload_gb", "disable_log_stats",
    "enable_prefix_caching", "max_num_seqs_per_batch", "distributed_executor_backend",
    "disable_custom_all_reduce", "tokenizer_mode", "kv_cache_dtype", "load_format",
}


@dataclass
class ScoreOutput:
    """One reranked document: its index in the input, its relevance score and its text;
    ``chunk``: the best window of a document split into windows (else None)."""

    index: int
    score: float
    document: str | None = None
    chunk: Chunk | None = None

    @property
    def relevance_score(self) -> float:
        return self.score


@dataclass
class ScoringOutput:
    """vLLM's ``ScoringOutput``; also indexable as ``outputs[0]`` as older vLLM scripts do.
    ``chunk`` (qrank's): the best window of a document split into windows, else None."""

    score: float
    chunk: Chunk | None = None

    def __getitem__(self, index: int) -> ScoringOutput:
        if index not in (0, -1):
            raise IndexError(index)
        return self

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self


@dataclass
class ScoringRequestOutput:
    """vLLM's ``ScoringRequestOutput``: ``output.outputs.score`` reads the score."""

    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int] = field(default_factory=list)
    finished: bool = True


class Reranker:
    """Score documents against a query with a Qwen3-Reranker checkpoint.

    >>> reranker = Reranker("Qwen/Qwen3-Reranker-0.6B")
    >>> reranker.rerank("capital of China?", ["Beijing is ...", "Gravity is ..."], top_n=1)

    ``chat_template=`` (a file or a Jinja template's text) renders prompts with a score
    template; ``chat_template_kwargs`` of :meth:`score` are then its variables.
    """

    def __init__(self, model: str | EngineArgs, **kwargs: Any) -> None:
        args = model if isinstance(model, EngineArgs) else EngineArgs(model=model, **kwargs)
        self.engine = create_engine(args)

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def score(self, query: str, documents: list[str], instruction: str | None = None,
              use_tqdm: bool | None = None, *, max_chunks_per_doc: int = 1,
              chunk_overlap_tokens: int = DEFAULT_OVERLAP,
              truncate_prompt_tokens: int | None = None,
              chat_template_kwargs: dict[str, Any] | None = None,
              use_activation: bool = True) -> list[float]:
        """Relevance of each document to the query, in the documents' order.

        ``max_chunks_per_doc`` > 1 splits a document too long to fit into up to that many
        windows overlapping by ``chunk_overlap_tokens``; it scores its best window's score.
        ``truncate_prompt_tokens``: the most tokens of a pair (or window), at most (and by
        default) ``max_model_len``. ``use_activation`` False: the logits the scores are the
        sigmoid of.
        """
        return [s for s, _ in self._score_docs(
            query, documents, instruction, use_tqdm, max_chunks_per_doc, chunk_overlap_tokens,
            truncate_prompt_tokens, chat_template_kwargs, use_activation)]

    def rerank(self, query: str, documents: list[str], top_n: int | None = None,
               instruction: str | None = None, use_tqdm: bool | None = None, *,
               max_chunks_per_doc: int = 1, chunk_overlap_tokens: int = DEFAULT_OVERLAP,
               truncate_prompt_tokens: int | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> list[ScoreOutput]:
        """Documents sorted by relevance, best first, with their original index; a document
        split into windows (see :meth:`score`) carries its best window as ``chunk``."""
        scored = self._score_docs(query, documents, instruction, use_tqdm, max_chunks_per_doc,
                                  chunk_overlap_tokens, truncate_prompt_tokens,
                                  chat_template_kwargs)
        ranked = sorted(range(len(documents)), key=lambda i: -scored[i][0])
        if top_n is not None:
            ranked = ranked[: max(0, top_n)]
        return [ScoreOutput(i, scored[i][0], documents[i], scored[i][1]) for i in ranked]

    def _score_docs(self, query: str, documents: list[str], instruction: str | None,
                    use_tqdm: bool | None, max_chunks: int, overlap: int,
                    max_length: int | None, chat_template_kwargs: dict[str, Any] | None,
                    use_activation: bool = True) -> list[tuple[float, Chunk | None]]:
        if max_length == -1:
            max_length = None
        docs = self.engine.encode_docs(query, documents, instruction, max_length,
                                       max_chunks=max_chunks, overlap=overlap,
                                       chat_template_kwargs=chat_template_kwargs)
        scores = self.engine.score_tokens(flatten(docs), use_tqdm=use_tqdm,
                                          use_activation=use_activation)
        return best_windows(docs, scores)

    def close(self) -> None:
        self.engine.close()


class LLM:
    """vLLM's offline ``LLM`` for scoring: ``LLM(model, task="score").score(q, docs)``.

    ``runner="pooling"``, ``convert="classify"`` and ``task="score"`` are what a reranker is;
    ``chat_template=`` renders prompts with a Jinja score template."""

    def __init__(self, model: str, task: str = "score", hf_overrides: dict | None = None,
                 runner: str | None = None, convert: str | None = None,
                 **kwargs: Any) -> None:
        check_reranker_mode("task", task)
        check_reranker_mode("runner", runner)
        check_reranker_mode("convert", convert)
        for key in set(kwargs) & IGNORED_VLLM_KWARGS:
            logger.info("ignoring vLLM argument %s=%r", key, kwargs.pop(key))
        self.engine = create_engine(EngineArgs(model=model, hf_overrides=hf_overrides or {},
                                               **kwargs))
        self._counter = 0

    def score(
        self,
        data_1: str | list[str],
        data_2: str | list[str],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        instruction: str | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        use_activation: bool | None = None,
        truncation_side: str | None = None,
        max_chunks_per_doc: int = 1,
        chunk_overlap_tokens: int = DEFAULT_OVERLAP,
        **_: Any,
    ) -> list[ScoringRequestOutput]:
        """Score 1:1, 1:N or N:N text pairs, as vLLM's ``LLM.score``; ``use_activation``
        False gives logits, ``truncation_side`` "left" cuts a long document's start;
        ``max_chunks_per_doc`` as :meth:`Reranker.score` (a split document's
        ``prompt_token_ids`` are its best window's)."""
        if chat_template is not None:
            raise ValueError("qrank takes the score template once, as LLM(model, "
                             "chat_template=...), not per score() call")
        queries, documents = pair_up(data_1, data_2)
        max_length = None if truncate_prompt_tokens in (None, -1) else truncate_prompt_tokens
        docs = self.engine.encode_pair_docs(queries, documents, instruction, max_length,
                                            max_chunks=max_chunks_per_doc,
                                            overlap=chunk_overlap_tokens,
                                            truncation_side=truncation_side or "right",
                                            chat_template_kwargs=chat_template_kwargs)
        toks = flatten(docs)
        many = sum(len(t) for t in toks) > self.engine.args.max_num_batched_tokens
        scores = self.engine.score_tokens(toks, use_tqdm=use_tqdm and many,
                                          use_activation=use_activation is not False)
        outputs = []
        for d, (s, chunk) in zip(docs, best_windows(docs, scores), strict=True):
            ids = d.pairs[chunk.index if chunk else 0].ids
            outputs.append(ScoringRequestOutput(str(self._counter), ScoringOutput(s, chunk), ids))
            self._counter += 1
        return outputs


def pair_up(data_1: str | list[str], data_2: str | list[str]) -> tuple[list[str], list[str]]:
    """Expand vLLM's 1:1, 1:N and N:N forms into equal-length query and document lists."""
    q = [data_1] if isinstance(data_1, str) else list(data_1)
    d = [data_2] if isinstance(data_2, str) else list(data_2)
    if not q or not d:
        raise ValueError("nothing to score: both inputs need at least one text")
    if len(q) == 1:
        q = q * len(d)
    if len(q) != len(d):
        raise ValueError(f"N:N scoring needs as many texts on each side, got {len(q)} and {len(d)}")
    return q, d
