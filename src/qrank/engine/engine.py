"""The engines: :class:`Engine` scores pairs in the caller's thread; :class:`AsyncEngine` runs it
in a worker thread that batches the pairs of all in-flight requests together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from qrank.config import EngineArgs
from qrank.engine.pieces import PieceKV
from qrank.engine.prefix_cache import PrefixCache
from qrank.engine.scheduler import Batch, Piece, Scheduler, WorkItem, prefix_key
from qrank.engine.score_cache import ScoreCache
from qrank.kernels.build import find_compiler
from qrank.models.heads import sigmoid_scores
from qrank.models.qwen3 import PrefixKV, SeqGroup
from qrank.models.registry import load_model
from qrank.prompts import PromptPair, already_rendered
from qrank.tokenize import PairTokens
from qrank.windows import DEFAULT_OVERLAP, DocTokens, encode_docs

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What one forward did, for metrics and logs."""

    num_pairs: int
    num_tokens: int
    num_requests: int
    seconds: float


class ParallelScorer(Protocol):
    """Logits of a job's pairs over several engine copies (:mod:`qrank.engine.data_parallel`)."""

    def __call__(self, pairs: list[PairTokens], use_tqdm: bool | None) -> list[float]: ...

    def close(self) -> None: ...


class Engine:
    """Loads a model once and scores tokenized pairs in batches (one thread).

    ``parallel``, when set (by :func:`qrank.engine.data_parallel.create_engine`), scores
    offline jobs over this engine and copies of it in other processes.
    """

    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        threads = args.threads_per_engine()
        if args.device == "cpu":
            torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        loaded = load_model(args)
        self.trunk = loaded.trunk
        self.head = loaded.head
        self.tokenizer = loaded.tokenizer
        self.template = loaded.template
        self.config = loaded.config
        self.model_path = loaded.path
        self.max_model_len = loaded.max_model_len
        self.prefix_cache = PrefixCache(args.prefix_cache_bytes if args.prefix_sharing else 0)
        self.piece_kv = PieceKV()  # of long pairs between their pieces
        self.score_cache = ScoreCache(
            args.score_cache_entries,
            namespace=f"{self.model_path}|{self.trunk.dtype}|{args.quantization}|{args.device}")
        self.on_batch: Callable[[BatchStats], None] | None = None
        if (args.resolved_cpu_attention_kernel(self.trunk.shape.hidden_size)
                and not self.trunk.use_cpu_attention_kernel()):
            log = logger.warning if args.cpu_attention_kernel == "on" else logger.info
            log("the CPU attention kernel is not in use (it runs bfloat16 on CPUs with AMX); "
                "attention stays on SDPA")
        compile_now = args.resolved_compile(self.trunk.shape.hidden_size)
        if compile_now and self.trunk.device.type == "cpu" and find_compiler() is None:
            logger.warning("no C++ compiler (install g++ or set CXX): the decoder runs eager, "
                           "without torch.compile's fused element-wise work")
            compile_now = False
        if compile_now:
            logger.info("compiling the decoder's element-wise work (torch.compile, cache in %s); "
                        "the warm-up runs it before the server says it is ready",
                        inductor_cache_dir())
            self.trunk.compile()
            self.warm_up()
        self.parallel: ParallelScorer | None = None
        logger.info("engine ready: %d x %d threads, batch budget %d tokens, prefix cache %d MiB, "
                    "score cache %d entries", args.data_parallel_size, threads,
                    args.max_num_batched_tokens, self.prefix_cache.capacity >> 20,
                    self.score_cache.capacity)

    # ---- inputs -------------------------------------------------------------------------
    def encode(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        max_doc_tokens: int | None = None,
        truncation_side: str = "right",
        max_query_tokens: int | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[PairTokens]:
        """Template and tokenize one query with its documents.

        ``max_query_tokens`` cuts the query's text before the template is applied (not a
        query the client already formatted); ``truncation_side`` is the end of a document cut
        to fit ``max_length``. ``chat_template_kwargs`` are variables of a Jinja score
        template (the built-in template reads ``instruction``).
        """
        pairs = self._render(query, documents, instruction, max_query_tokens,
                             chat_template_kwargs)
        return self.tokenizer.encode_pairs(pairs, self._limit(max_length), truncate,
                                           max_doc_tokens, truncation_side)

    def encode_docs(
        self, query: str, documents: list[str], instruction: str | None = None,
        max_length: int | None = None, truncate: bool = True, max_doc_tokens: int | None = None,
        max_chunks: int = 1, overlap: int = DEFAULT_OVERLAP, truncation_side: str = "right",
        max_query_tokens: int | None = None, chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[DocTokens]:
        """:meth:`encode`, but with ``max_chunks`` > 1 a document too long to fit is split
        into windows (:mod:`qrank.windows`)."""
        if max_chunks == 1:
            return [DocTokens((p,)) for p in self.encode(
                query, documents, instruction, max_length, truncate, max_doc_tokens,
                truncation_side, max_query_tokens, chat_template_kwargs)]
        pairs = self._render(query, documents, instruction, max_query_tokens,
                             chat_template_kwargs)
        return encode_docs(self.tokenizer, pairs, self._limit(max_length), truncate,
                           max_doc_tokens, max_chunks, overlap, truncation_side)

    def encode_pairs(
        self, queries: list[str], documents: list[str], instruction: str | None = None,
        max_length: int | None = None, truncate: bool = True, **options: Any,
    ) -> list[PairTokens]:
        """Tokenize N:N pairs, grouping equal queries so each is rendered once; ``options``
        as :meth:`encode` takes them."""
        return self._per_query(self.encode, queries, documents, instruction, max_length,
                               truncate, **options)

    def encode_pair_docs(
        self, queries: list[str], documents: list[str], instruction: str | None = None,
        max_length: int | None = None, truncate: bool = True, **options: Any,
    ) -> list[DocTokens]:
        """:meth:`encode_docs` for N:N pairs, grouping equal queries."""
        return self._per_query(self.encode_docs, queries, documents, instruction, max_length,
                               truncate, **options)

    @staticmethod
    def _per_query(encode: Callable[..., list[Any]], queries: list[str], documents: list[str],
                   *args: Any, **options: Any) -> list[Any]:
        """``encode(query, its documents, ...)`` once per distinct query, back in pair order."""
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        out: list[Any] = [None] * len(queries)
        for q, idx in by_query.items():
            for i, toks in zip(idx, encode(q, [documents[i] for i in idx], *args, **options),
                               strict=True):
                out[i] = toks
        return out

    def _limit(self, max_length: int | None) -> int:
        return min(max_length or self.max_model_len, self.max_model_len)

    def _render(self, query: str, documents: list[str], instruction: str | None,
                max_query_tokens: int | None, chat_template_kwargs: dict[str, Any] | None
                ) -> list[PromptPair]:
        """The prompt pairs of one query's documents, the query first cut to
        ``max_query_tokens`` unless the client already applied the template."""
        if max_query_tokens is not None and not already_rendered(self.template, query,
                                                                documents):
            query = self.tokenizer.cut_text(query, max_query_tokens)
        return self.template.render(query, documents, instruction, chat_template_kwargs)

    # ---- compute ------------------------------------------------------------------------
    def make_scheduler(self, policy: str = "fcfs") -> Scheduler:
        return Scheduler(
            self.args.max_num_batched_tokens,
            self.args.max_num_seqs,
            share_prefixes=self.args.prefix_sharing,
            is_cached=self.prefix_cache.__contains__,
            policy=policy,
            long_prefill_threshold=self.args.resolved_long_prefill_threshold(),
        )

    def _seq_groups(
        self, batch: Batch
    ) -> tuple[list[SeqGroup], list[list[Any]], list[Hashable | None]]:
        """Model inputs for a batch; keys[g][d] is the key of group g's document d and
        cache_keys[g] the prefix-cache key of group g's prefix (None: no prefix).

        Pairs sharing their query side (and salt) form a group under it; a pair alone with its
        query is a document under its template head (system prefix and instruction), shared
        with the batch's other lone pairs of its salt and kept in the prefix cache; what has no
        head goes alone.
        """
        sharing = self.args.prefix_sharing
        groups: list[SeqGroup] = []
        keys: list[list[Any]] = []
        cache_keys: list[Hashable | None] = []
        under_head: dict[Hashable, tuple[SeqGroup, list[Any]]] = {}
        singles = SeqGroup([], [])
        single_keys: list[Any] = []
        for bg in batch.groups:
            kv = self.prefix_cache.get(bg.key()) if sharing else None
            if kv is not None or (sharing and len(bg.items) > 1):
                groups.append(self._prefix_group(bg.shared, kv,
                                                 [list(it.tokens.own) for it in bg.items]))
                keys.append([it.key for it in bg.items])
                cache_keys.append(bg.key())
                continue
            for it in bg.items:
                t = it.tokens
                if not (sharing and t.head):
                    singles.docs.append(t.ids)
                    single_keys.append(it.key)
                    continue
                head = t.shared[: t.head]
                head_key = prefix_key(head, t.salt)
                if head_key not in under_head:
                    under_head[head_key] = (
                        self._prefix_group(head, self.prefix_cache.get(head_key), []), [])
                group, group_keys = under_head[head_key]
                group.docs.append([*t.shared[t.head :], *t.own])
                group_keys.append(it.key)
        for head_key, (group, group_keys) in under_head.items():
            groups.append(group)
            keys.append(group_keys)
            cache_keys.append(head_key)
        if singles.docs:
            groups.append(singles)
            keys.append(single_keys)
            cache_keys.append(None)
        return groups, keys, cache_keys

    def _prefix_group(self, prefix: tuple[int, ...], kv: PrefixKV | None,
                      docs: list[list[int]]) -> SeqGroup:
        """Documents under one prefix, its keys and values cached (``kv``) or computed here
        and then kept for the cache."""
        return SeqGroup(list(prefix), docs, prefix_kv=kv,
                        keep_prefix_kv=kv is None and self.prefix_cache.enabled)

    def _piece_group(self, piece: Piece) -> tuple[SeqGroup, Hashable | None]:
        """The model input of one piece of a long pair, and the prefix-cache key of the head
        it computes (None: none). The first piece goes under the pair's template head (cached,
        or computed and then cached); the others over the keys and values of those before."""
        t = piece.item.tokens
        ids = t.ids
        doc = ids[piece.head + piece.start : piece.head + piece.end]
        keep = not piece.last
        if piece.start:
            kv = self.piece_kv.get(piece.item)
            if kv is None:
                raise RuntimeError("a piece of a long pair came without the keys and values "
                                   "of the pieces before it")
            return SeqGroup(ids[: piece.head + piece.start], [doc], prefix_kv=kv,
                            keep_kv=keep), None
        if not piece.head:
            return SeqGroup([], [doc], keep_kv=keep), None
        head = t.shared[: piece.head]
        head_key = prefix_key(head, t.salt)
        group = self._prefix_group(head, self.prefix_cache.get(head_key), [doc])
        group.keep_kv = keep
        return group, head_key

    def run_batch(self, batch: Batch) -> list[tuple[Any, float]]:
        """Run one batch; returns (key, logit) for each of its items: the head's value
        before the sigmoid (:func:`~qrank.models.heads.sigmoid_scores` makes it a score).
        A long pair's piece gives its logit when it is the last; the keys and values of the
        others are held for the next (:attr:`piece_kv`)."""
        start = time.perf_counter()
        groups, keys, cache_keys = self._seq_groups(batch)
        pieces: dict[int, Piece] = {}
        for piece in batch.pieces:
            group, cache_key = self._piece_group(piece)
            pieces[len(groups)] = piece
            groups.append(group)
            keys.append([piece.item.key])
            cache_keys.append(cache_key)
        hidden, order, kept = self.trunk(groups)
        logits = self.head.logits(hidden).tolist()
        for g, kv in kept.items():
            piece = pieces.get(g)
            if piece is None or not groups[g].keep_kv:
                self.prefix_cache.put(cache_keys[g], kv)
                continue
            self.piece_kv.put(piece.item, kv)
            if groups[g].keep_prefix_kv:  # the head, computed here: its own copy to cache
                n = piece.head
                self.prefix_cache.put(cache_keys[g], [(k[:, :n].clone(), v[:, :n].clone())
                                                      for k, v in kv])
        for piece in batch.pieces:
            if piece.last:
                self.piece_kv.drop(piece.item)
        out = [(keys[g][d], s) for (g, d), s in zip(order, logits, strict=True)
               if g not in pieces or pieces[g].last]
        if self.on_batch is not None:
            requests = {k[0] if isinstance(k, tuple) else k for k, _ in out}
            self.on_batch(BatchStats(len(out), batch.num_tokens, len(requests),
                                     time.perf_counter() - start))
        return out

    def score_tokens(self, pairs: list[PairTokens], use_tqdm: bool | None = None,
                     use_activation: bool = True) -> list[float]:
        """Scores of tokenized pairs, in their order (``use_activation`` False: the logits
        the scores are the sigmoid of). A progress bar shows for long jobs.

        With the score cache on, pairs seen before are answered from it and a pair repeated
        within the job is computed once.
        """
        logits = self._logits(pairs, use_tqdm)
        return sigmoid_scores(logits) if use_activation else logits

    def _logits(self, pairs: list[PairTokens], use_tqdm: bool | None) -> list[float]:
        """Logits of tokenized pairs, from the score cache (which holds logits) or computed."""
        cache = self.score_cache
        if not cache.enabled:
            return self._score_computed(pairs, use_tqdm)
        keys, scores = cache.lookup(pairs)
        first: dict[tuple[int, int], int] = {}
        for i, s in enumerate(scores):
            if s is None:
                first.setdefault(keys[i], i)
        computed = self._score_computed([pairs[i] for i in first.values()], use_tqdm)
        fresh = dict(zip(first, computed, strict=True))
        for key, s in fresh.items():
            cache.put(key, s)
        return [fresh[keys[i]] if s is None else s for i, s in enumerate(scores)]

    def _score_computed(self, pairs: list[PairTokens], use_tqdm: bool | None) -> list[float]:
        """Logits of tokenized pairs, all computed, here or over the engine copies."""
        if self.parallel is None or len(pairs) < 2:
            return self.score_here(pairs, use_tqdm)
        return self.parallel(pairs, use_tqdm)

    def score_here(self, pairs: list[PairTokens], use_tqdm: bool | None) -> list[float]:
        """Logits of tokenized pairs, in their order, from this process's engine."""
        scheduler = self.make_scheduler()
        items = [WorkItem(p, i) for i, p in enumerate(pairs)]
        scheduler.add(sorted(items, key=lambda it: len(it.tokens)))
        total_tokens = sum(len(p) for p in pairs)
        if use_tqdm is None:
            use_tqdm = total_tokens > self.args.max_num_batched_tokens
        scores = [0.0] * len(pairs)
        try:
            with tqdm(total=len(pairs), desc="Scoring", unit="pair",
                      disable=not use_tqdm) as bar:
                while (batch := scheduler.next_batch()) is not None:
                    for key, s in self.run_batch(batch):
                        scores[key] = s
                    bar.update(batch.num_pairs)
        finally:  # a job that failed half-way leaves no long pair's keys and values behind
            mine = {id(it) for it in items}
            self.piece_kv.drop_where(lambda it: id(it) in mine)
        return scores

    def warm_up(self) -> None:
        """Run small batches of every kind once (compiles the graphs when compiling)."""
        start = time.perf_counter()
        prefix = list(self.tokenizer.prefix_ids)
        docs = [list(self.tokenizer.suffix_ids) * 3, list(self.tokenizer.suffix_ids)]
        self.trunk([SeqGroup(prefix, docs)])  # shared prefix, two lengths
        self.trunk([SeqGroup([], docs[:1])])  # one sequence alone: single-row last layer
        logger.info("warm-up took %.1f s", time.perf_counter() - start)

    def hidden_states(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """Final-norm hidden states of the last token of (query, document) pairs, float32."""
        toks = self.encode_pairs([q for q, _ in pairs], [d for _, d in pairs])
        groups = [SeqGroup([], [t.ids]) for t in toks]
        hidden, _, _ = self.trunk(groups)
        return hidden.to(torch.float32)

    def close(self) -> None:
        self.prefix_cache.clear()
        self.score_cache.clear()
        if self.parallel is not None:
            self.parallel.close()
            self.parallel = None


class QueueFullError(RuntimeError):
    """More pairs are waiting than the engine accepts."""


class EngineDeadError(RuntimeError):
    """The worker thread has stopped."""


class ScoreFuture(Future):
    """The Future of one request's scores; ``cached`` counts those the score cache answered,
    ``request_id`` names it to :meth:`AsyncEngine.abort` (None: it was never queued)."""

    cached: int = 0
    request_id: int | None = None


class RequestObserver(Protocol):
    """What the async engine reports of each request (the server's metrics); called in the
    engine's threads, so it must be quick."""

    def request_scheduled(self, queue_seconds: float) -> None:
        """A request's first pair went into a batch, ``queue_seconds`` after it was queued."""

    def request_finished(self, inference_seconds: float) -> None:
        """A request's last score came, ``inference_seconds`` after its first batch began."""

    def request_cancelled(self, reason: str, pairs: int) -> None:
        """A request was dropped (``reason``: disconnect, timeout, error) with ``pairs`` of
        its pairs still waiting, never computed."""


@dataclass
class _Request:
    future: Future
    scores: list[float]  # logits until the request completes
    remaining: int
    keys: list[tuple[int, int]] | None  # score-cache keys, by pair index
    use_activation: bool = True
    queued: float = 0.0  # time.monotonic() when submitted
    started: float | None = None  # when its first batch began

    def finish(self) -> None:
        self.future.set_result(sigmoid_scores(self.scores) if self.use_activation
                               else self.scores)


def new_future(pairs: list[PairTokens], max_queued_pairs: int) -> ScoreFuture:
    """The Future of a request's scores: already done when it has no pairs; ValueError when
    it has more than an engine queues."""
    future = ScoreFuture()
    if not pairs:
        future.set_result([])
    elif len(pairs) > max_queued_pairs:
        raise ValueError(f"{len(pairs)} pairs in one request; the engine queues at most "
                         f"{max_queued_pairs}: split the request")
    return future


class AsyncEngine:
    """Runs an :class:`Engine` in a worker thread; requests submitted from any thread are
    batched together under ``policy`` (:mod:`qrank.engine.scheduler`) and each gets a Future
    of its scores. :meth:`abort` drops a request's waiting pairs."""

    def __init__(self, engine: Engine, max_queued_pairs: int = 100_000,
                 policy: str = "fair") -> None:
        if engine.parallel is not None:
            raise ValueError("data-parallel workers score offline jobs (score_tokens); the "
                             "async engine runs batches on its own engine")
        self.engine = engine
        self.max_queued_pairs = max_queued_pairs
        self.policy = policy
        self.scheduler = engine.make_scheduler(policy)
        self.observer: RequestObserver | None = None
        self._requests: dict[int, _Request] = {}
        self._next_id = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="qrank-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    @property
    def num_pending_pairs(self) -> int:
        return len(self.scheduler)

    @property
    def num_pending_requests(self) -> int:
        """Requests with pairs waiting (not those whose pairs are all in a batch)."""
        return self.scheduler.num_requests

    def submit(self, pairs: list[PairTokens], use_activation: bool = True,
               priority: int = 0) -> ScoreFuture:
        """Queue the pairs of one request; the Future resolves to their scores, in order
        (``use_activation`` False: their logits). Pairs the score cache holds are answered at
        once and never queued. ``priority`` counts under the ``priority`` policy (lower
        first)."""
        future = new_future(pairs, self.max_queued_pairs)
        if future.done():
            return future
        cache = self.engine.score_cache
        scores = [0.0] * len(pairs)
        keys = None
        todo: list[int] = list(range(len(pairs)))
        if cache.enabled:
            keys, found = cache.lookup(pairs)
            todo = [i for i, hit in enumerate(found) if hit is None]
            scores = [0.0 if hit is None else hit for hit in found]
            future.cached = len(pairs) - len(todo)
            if not todo:
                _Request(future, scores, 0, keys, use_activation).finish()
                return future
        with self._cond:
            if not self.alive or self._stopping:
                raise EngineDeadError("the engine is not running")
            if len(self.scheduler) + len(todo) > self.max_queued_pairs:
                raise QueueFullError(
                    f"{len(self.scheduler)} pairs are queued; the limit is {self.max_queued_pairs}"
                )
            rid = self._next_id
            self._next_id += 1
            future.request_id = rid
            self._requests[rid] = _Request(future, scores, len(todo), keys, use_activation,
                                           time.monotonic())
            self.scheduler.add([WorkItem(pairs[i], (rid, i)) for i in todo], rid, priority)
            self._cond.notify()
        return future

    def abort(self, future: ScoreFuture, reason: str) -> int | None:
        """Give up a request (``reason``: disconnect, timeout, error): its waiting pairs are
        dropped and its Future cancelled; a batch in flight with some of its pairs finishes
        for the others. Returns the pairs dropped, or None when the request had already
        finished (or failed), so its Future holds the outcome."""
        with self._cond:
            req = self._requests.pop(future.request_id, None) if future.request_id is not None \
                else None
            if req is None:
                return None
            dropped = self.scheduler.remove(future.request_id)
            if self.observer is not None:
                self.observer.request_cancelled(reason, dropped)
            self._cond.notify()  # the worker drops the keys and values of its long pairs
        future.cancel()
        return dropped

    def _drop_given_up(self) -> None:
        """Drop the keys and values held for long pairs of requests given up (in the worker
        thread, under the lock, so never those of a piece about to run)."""
        self.engine.piece_kv.drop_where(lambda it: it.key[0] not in self._requests)

    def _started(self, batch: Batch) -> None:
        """Note the requests whose first pairs this batch holds (under the lock)."""
        now = time.monotonic()
        for rid in {key[0] for key in batch.keys}:
            req = self._requests.get(rid)
            if req is not None and req.started is None:
                req.started = now
                if self.observer is not None:
                    self.observer.request_scheduled(now - req.queued)

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._drop_given_up()
                    while not len(self.scheduler) and not self._stopping:
                        self._cond.wait()
                        self._drop_given_up()
                    if self._stopping and not len(self.scheduler):
                        return
                    batch = self.scheduler.next_batch()
                    if batch is not None:
                        self._started(batch)
                if batch is not None:
                    self._run(batch)
        except BaseException as exc:  # noqa: BLE001 - report and fail what waits
            logger.exception("engine worker died")
            self._error = exc
            with self._cond:
                for req in self._requests.values():
                    if not req.future.done():
                        req.future.set_exception(EngineDeadError(f"engine died: {exc}"))
                self._requests.clear()

    def _run(self, batch: Batch) -> None:
        try:
            results = self.engine.run_batch(batch)
        except Exception as exc:  # noqa: BLE001 - a failed batch must not kill the worker
            logger.exception("batch of %d pairs failed", batch.num_pairs)
            results = self._retry_per_request(batch, exc)
        with self._cond:
            for key, value in results:
                rid, i = key
                req = self._requests.get(rid)
                if req is None:
                    continue
                if isinstance(value, BaseException):
                    del self._requests[rid]
                    dropped = self.scheduler.remove(rid)  # its other pairs: not computed
                    if self.observer is not None:
                        self.observer.request_cancelled("error", dropped)
                    if not req.future.done():
                        req.future.set_exception(value)
                    continue
                req.scores[i] = value
                if req.keys is not None:
                    self.engine.score_cache.put(req.keys[i], value)
                req.remaining -= 1
                if req.remaining == 0:
                    del self._requests[rid]
                    if self.observer is not None and req.started is not None:
                        self.observer.request_finished(time.monotonic() - req.started)
                    req.finish()

    def _retry_per_request(self, batch: Batch, exc: Exception) -> list[tuple[Any, Any]]:
        """Score a failed batch's requests one by one, so one bad request fails alone (a
        long pair's piece alone, over the keys and values kept before the failure)."""
        by_request: dict[int, list[WorkItem]] = {}
        for g in batch.groups:
            for it in g.items:
                by_request.setdefault(it.key[0], []).append(it)
        out: list[tuple[Any, Any]] = []
        for piece in batch.pieces:
            try:
                out += self.engine.run_batch(Batch([], piece.end - piece.start, [piece]))
            except Exception as err:  # noqa: BLE001
                out.append((piece.item.key, err))
        for items in by_request.values():
            sched = self.engine.make_scheduler()
            sched.add(items)
            try:
                while (b := sched.next_batch()) is not None:
                    out += self.engine.run_batch(b)
            except Exception as err:  # noqa: BLE001
                out += [(it.key, err) for it in items]
        return out

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


def inductor_cache_dir() -> str:
    """Where torch.compile keeps what it built (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # a torch that moved it: say where to look instead
        return "TORCHINDUCTOR_CACHE_DIR"
    return cache_dir()
