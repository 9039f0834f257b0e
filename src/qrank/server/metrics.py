"""Prometheus metrics of the server and its engine, in a registry of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from qrank.engine.engine import BatchStats
from qrank.engine.score_cache import ScoreCache

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# why a request was given up: its client went away, its time limit passed, or it failed
CANCEL_REASONS = ("disconnect", "timeout", "error")


class ServerMetrics:
    """Requests by route and status, latencies, pairs and tokens scored, batch shapes, queue,
    time waiting and in the engine, requests given up. It is the async engine's
    :class:`~qrank.engine.engine.RequestObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qrank_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("qrank_request_latency_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.pairs = Counter("qrank_pairs_scored", "query-document pairs scored", registry=r)
        self.prompt_tokens = Counter("qrank_prompt_tokens", "tokens of the pairs scored, "
                                     "template included", registry=r)
        self.batch_pairs = Histogram("qrank_batch_pairs", "pairs per forward batch",
                                     buckets=PAIR_BUCKETS, registry=r)
        self.batch_tokens = Histogram("qrank_batch_tokens", "tokens computed per forward batch",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram("qrank_batch_requests",
                                        "distinct requests whose pairs share a forward batch",
                                        buckets=REQUEST_BUCKETS, registry=r)
        self.batch_seconds = Histogram("qrank_batch_seconds", "forward time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("qrank_queue_pairs", "pairs waiting for the engine", registry=r)
        self.queue_requests = Gauge("qrank_queue_requests",
                                    "requests with pairs waiting for the engine", registry=r)
        self.queue_time = Histogram(
            "qrank_request_queue_time_seconds", "seconds from a request's arrival at the "
            "engine to the start of the first batch holding its pairs",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram(
            "qrank_request_inference_time_seconds", "seconds from the start of a request's "
            "first batch to its last score (time in the engine)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.cancelled = Counter(
            "qrank_requests_cancelled", "requests given up before all their pairs were "
            "scored, by reason: disconnect (the client went away), timeout (504), error",
            ["reason"], registry=r)
        self.cancelled_pairs = Counter(
            "qrank_pairs_cancelled", "pairs of requests given up, dropped from the queue "
            "without being computed, by reason", ["reason"], registry=r)
        for reason in CANCEL_REASONS:
            self.cancelled.labels(reason=reason)
            self.cancelled_pairs.labels(reason=reason)
        self.prefix_hits = Gauge("qrank_prefix_cache_hits", "prefix cache hits", registry=r)
        self.prefix_bytes = Gauge("qrank_prefix_cache_bytes", "bytes held by the prefix cache",
                                  registry=r)
        self.piece_bytes = Gauge("qrank_long_prefill_kv_bytes", "bytes of keys and values "
                                 "held between the pieces of long pairs (chunked prefill)",
                                 registry=r)

    def watch(self, queue_depth: Callable[[], float], prefix_hits: Callable[[], float],
              prefix_bytes: Callable[[], float],
              queue_requests: Callable[[], float] | None = None,
              piece_bytes: Callable[[], float] | None = None) -> None:
        """Gauges read at scrape time."""
        self.queue.set_function(queue_depth)
        if piece_bytes is not None:
            self.piece_bytes.set_function(piece_bytes)
        if queue_requests is not None:
            self.queue_requests.set_function(queue_requests)
        self.prefix_hits.set_function(prefix_hits)
        self.prefix_bytes.set_function(prefix_bytes)

    def watch_score_cache(self, cache: ScoreCache) -> None:
        """Hits, misses and entries of the score cache, read at scrape time."""
        self.registry.register(ScoreCacheCollector(cache))

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_pairs.observe(stats.num_pairs)
        self.batch_tokens.observe(stats.num_tokens)
        self.batch_requests.observe(stats.num_requests)
        self.batch_seconds.observe(stats.seconds)

    def request_scheduled(self, queue_seconds: float) -> None:
        self.queue_time.observe(queue_seconds)

    def request_finished(self, inference_seconds: float) -> None:
        self.inference_time.observe(inference_seconds)

    def request_cancelled(self, reason: str, pairs: int) -> None:
        self.cancelled.labels(reason=reason).inc()
        self.cancelled_pairs.labels(reason=reason).inc(pairs)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_scored(self, pairs: int, tokens: int) -> None:
        self.pairs.inc(pairs)
        self.prompt_tokens.inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ScoreCacheCollector:
    """The score cache's counters as Prometheus metrics, read from the cache when scraped."""

    def __init__(self, cache: ScoreCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        c = self.cache
        yield CounterMetricFamily("qrank_score_cache_hits", "pairs answered from the score "
                                  "cache", value=c.hits)
        yield CounterMetricFamily("qrank_score_cache_misses", "pairs looked up in the score "
                                  "cache and computed", value=c.misses)
        yield GaugeMetricFamily("qrank_score_cache_entries", "scores held by the score cache",
                                value=len(c))
        yield GaugeMetricFamily("qrank_score_cache_capacity", "most scores the score cache "
                                "holds (0: off)", value=c.capacity)
