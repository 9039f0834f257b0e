"""``qrank serve --data-parallel-backend ray``: engine replicas as Ray Serve deployments behind
one ingress that runs the plain server's FastAPI app (:func:`qrank.server.app.create_app`).

The ingress tokenizes, as the plain server does, and its "engine" is a :class:`ReplicaPool`:
each request's pairs go to one replica through a DeploymentHandle, routed by
:class:`~qrank.ray.router.QueryAffinityRouter`. A replica that dies mid-request is retried on
another; with none running, requests get 503 with Retry-After while Serve starts new ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from qrank.config import EngineArgs, engine_args_from_namespace
from qrank.engine.engine import (
    AsyncEngine,
    BatchStats,
    Engine,
    EngineDeadError,
    QueueFullError,
    ScoreFuture,
    new_future,
)
from qrank.models.loader import (
    find_tokenizer_file,
    read_sentence_transformers_layout,
    resolve_model_path,
)
from qrank.models.registry import score_template
from qrank.ray.router import QueryAffinityRouter, affinity_key
from qrank.server.app import ServerSettings, create_app
from qrank.tokenize import PairTokens, RerankTokenizer

logger = logging.getLogger(__name__)

ENGINE_DEPLOYMENT = "QrankEngine"
INGRESS_DEPLOYMENT = "QrankIngress"
SERVER_SCORE_CACHE_ENTRIES = 1_000_000  # qrank serve's default (--score-cache-entries)


class NoReplicaError(QueueFullError):
    """No engine replica is running (Serve is starting new ones): 503 with Retry-After."""


class EngineReplica:
    """One engine in a Serve replica; scores the pairs of the requests routed to it."""

    def __init__(self, engine_args: dict[str, Any], max_queued_pairs: int,
                 policy: str = "fair") -> None:
        self.engine = AsyncEngine(Engine(EngineArgs(**engine_args)), max_queued_pairs, policy)
        self.batches: deque[BatchStats] = deque()
        self.engine.engine.on_batch = self.batches.append

    def info(self) -> dict[str, Any]:
        core = self.engine.engine
        return {"max_model_len": core.max_model_len, "model_path": str(core.model_path),
                "pid": os.getpid()}

    async def score(self, pairs: list[PairTokens], affinity: int | None = None,
                    use_activation: bool = True, priority: int = 0
                    ) -> tuple[list[float], int, dict[str, Any]]:
        """The pairs' scores (or logits), how many the score cache answered, and this
        replica's stats. (``affinity`` is read by the router.) A request the ingress gives
        up (its client left, its deadline passed) is cancelled here too: its waiting pairs
        are dropped."""
        future = self.engine.submit(pairs, use_activation, priority)
        try:
            scores = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self.engine.abort(future, "disconnect")
            raise
        return scores, future.cached, self.stats()

    def stats(self) -> dict[str, Any]:
        core = self.engine.engine
        batches = []
        while self.batches:
            batches.append(self.batches.popleft())
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "prefix_hits": core.prefix_cache.hits, "prefix_bytes": core.prefix_cache.nbytes,
                "score_hits": core.score_cache.hits, "score_misses": core.score_cache.misses,
                "score_entries": len(core.score_cache), "batches": batches}

    def check_health(self) -> None:
        if not self.engine.alive:
            raise RuntimeError("the engine's worker thread has stopped")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.shutdown(5)


class ReplicaStats:
    """The replicas' caches as the metrics read them: the last figures each replica sent."""

    def __init__(self, score_capacity: int) -> None:
        self.by_replica: dict[str, dict[str, Any]] = {}
        self.capacity = score_capacity

    def _sum(self, name: str) -> int:
        return sum(s[name] for s in list(self.by_replica.values()))

    hits = property(lambda self: self._sum("prefix_hits"))
    nbytes = property(lambda self: self._sum("prefix_bytes"))


class ScoreCacheStats:
    """The replicas' score caches, summed, with the attributes the metrics read."""

    def __init__(self, stats: ReplicaStats) -> None:
        self.stats = stats

    hits = property(lambda self: self.stats._sum("score_hits"))
    misses = property(lambda self: self.stats._sum("score_misses"))
    capacity = property(lambda self: self.stats.capacity)
    enabled = property(lambda self: self.stats.capacity > 0)

    def __len__(self) -> int:
        return self.stats._sum("score_entries")


class FrontCore(Engine):
    """What the app reads of an engine, at the ingress: the template, the tokenizer and the
    model's limits. It is the inputs side of :class:`Engine` (``encode``, ``encode_docs``...,
    inherited as they are) without a model: the scoring runs on replicas."""

    def __init__(self, args: EngineArgs, info: dict[str, Any]) -> None:  # no model loaded
        self.args = args
        path = resolve_model_path(args.model, args.revision)
        self.template = score_template(args, read_sentence_transformers_layout(path), path)
        self.tokenizer = RerankTokenizer.from_file(find_tokenizer_file(path, args.tokenizer),
                                                   self.template)
        self.max_model_len = info["max_model_len"]
        self.model_path = info["model_path"]
        self.replica_stats = ReplicaStats(args.score_cache_entries)
        self.prefix_cache = self.replica_stats
        self.score_cache = ScoreCacheStats(self.replica_stats)
        self.on_batch = None


class ReplicaPool:
    """The ingress's engine: :class:`AsyncEngine`'s interface, each request's pairs scored on
    one replica. Runs its calls on its own event loop thread."""

    def __init__(self, handle: Any, core: FrontCore, max_queued_pairs: int, app_name: str,
                 retries: int = 5, status_period_s: float = 1.0, policy: str = "fair") -> None:
        self.handle = handle
        self.engine = core
        self.policy = policy  # the replicas' scheduling policy
        self.observer: Any = None  # the app's metrics; cancellations are counted here
        self._calls: dict[int, tuple[Any, int]] = {}  # id(future) -> (its call, its pairs)
        self.max_queued_pairs = max_queued_pairs
        self.app_name = app_name
        self.retries = retries
        self.running = 1
        self._pending = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="qrank-replica-pool")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._watch(status_period_s), self._loop)

    @property
    def alive(self) -> bool:
        return not self._stopping and self.running > 0

    @property
    def num_pending_pairs(self) -> int:
        return self._pending

    @property
    def num_pending_requests(self) -> int:
        return len(self._calls)

    def submit(self, pairs: list[PairTokens], use_activation: bool = True,
               priority: int = 0) -> ScoreFuture:
        future = new_future(pairs, self.max_queued_pairs)
        if future.done():
            return future
        if self._stopping:
            raise EngineDeadError("the server is shutting down")
        if self.running == 0:
            raise NoReplicaError("no engine replica is running; Ray Serve is starting new ones")
        with self._lock:
            if self._pending + len(pairs) > self.max_queued_pairs:
                raise QueueFullError(f"{self._pending} pairs are in flight; the limit is "
                                     f"{self.max_queued_pairs}")
            self._pending += len(pairs)
            call = asyncio.run_coroutine_threadsafe(
                self._score(pairs, future, use_activation, priority), self._loop)
            self._calls[id(future)] = (call, len(pairs))
        return future

    def abort(self, future: ScoreFuture, reason: str) -> int | None:
        """Give up a request: its call to the replica is cancelled (the replica drops its
        waiting pairs). None when it had already finished."""
        with self._lock:
            call, n = self._calls.pop(id(future), (None, 0))
        if call is None or future.done():
            return None
        call.cancel()
        future.cancel()
        if self.observer is not None:
            self.observer.request_cancelled(reason, n)
        return n

    async def _score(self, pairs: list[PairTokens], future: ScoreFuture,
                     use_activation: bool = True, priority: int = 0) -> None:
        key = affinity_key(pairs[0])
        try:
            for attempt in range(self.retries + 1):
                try:
                    scores, cached, stats = await self.handle.score.remote(
                        pairs, affinity=key, use_activation=use_activation, priority=priority)
                except (RayActorError, ActorUnavailableError) as exc:
                    logger.warning("a replica failed during a request (%s); retrying",
                                   type(exc).__name__)
                    self.running = await self._count_running()
                    if self.running == 0 or attempt == self.retries:
                        future.set_exception(NoReplicaError(
                            "no engine replica could answer; Ray Serve is starting new ones"))
                        return
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                except asyncio.CancelledError:  # given up (abort): the future is cancelled
                    raise
                except BaseException as exc:  # noqa: BLE001 - the request's own failure
                    if not future.done():
                        future.set_exception(exc)
                    return
                self._absorb(stats)
                future.cached = cached
                if not future.done():
                    future.set_result(scores)
                return
        finally:
            with self._lock:
                self._pending -= len(pairs)
                self._calls.pop(id(future), None)

    def _absorb(self, stats: dict[str, Any]) -> None:
        batches = stats.pop("batches")
        self.engine.replica_stats.by_replica[stats["replica"]] = stats
        if self.engine.on_batch is not None:
            for b in batches:
                self.engine.on_batch(b)

    async def _count_running(self) -> int:
        def count() -> int:
            app = serve.status().applications.get(self.app_name)
            if app is None or ENGINE_DEPLOYMENT not in app.deployments:
                return 0
            states = app.deployments[ENGINE_DEPLOYMENT].replica_states
            return sum(n for state, n in states.items() if str(state).endswith("RUNNING"))

        try:
            return await self._loop.run_in_executor(None, count)
        except Exception:  # noqa: BLE001 - the controller is busy: assume replicas are there
            logger.debug("serve.status() failed", exc_info=True)
            return max(self.running, 1)

    async def _watch(self, period: float) -> None:
        while not self._stopping:
            self.running = await self._count_running()
            await asyncio.sleep(period)

    def shutdown(self, timeout: float | None = None) -> None:
        """Wait for the requests in flight (up to ``timeout``), then stop."""
        deadline = time.monotonic() + (timeout or 0)
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stopping = True
        self._loop.call_soon_threadsafe(self._loop.stop)


def _ingress_builder(engine_args: dict[str, Any], settings: ServerSettings,
                     max_queued_pairs: int, policy: str):
    """The ASGI app builder Serve runs in the ingress replica: the plain server's app over a
    :class:`ReplicaPool`."""

    def build():
        app_name = serve.get_replica_context().app_name
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
        # this runs inside the replica's event loop: ask from a thread, not the loop
        with ThreadPoolExecutor(1) as pool:
            info = pool.submit(lambda: handle.info.remote().result()).result()
        core = FrontCore(EngineArgs(**engine_args), info)
        pool = ReplicaPool(handle, core, max_queued_pairs, app_name, policy=policy)
        return create_app(pool, settings)

    return build


def build_app(model: str | None = None, *, engine_args: EngineArgs | None = None,
              settings: ServerSettings | None = None, num_replicas: int = 1,
              min_replicas: int | None = None, max_replicas: int | None = None,
              num_cpus_per_replica: float = 1.0, max_ongoing_requests: int = 64,
              max_queued_pairs: int = 100_000, load_factor: float = 1.25,
              ingress_replicas: int = 1, routing: str = "affinity",
              scheduling_policy: str = "fair", **engine_kwargs: Any) -> serve.Application:
    """The qrank application for Ray Serve: ``num_replicas`` engines (or between
    ``min_replicas`` and ``max_replicas``, autoscaled on ongoing requests) behind one
    ingress serving the plain server's routes. For ``serve.run``, ``serve run module:app``
    and a KubeRay ``RayService``'s import path.

    ``ingress_replicas`` ingresses tokenize and route (their affinity hashing agrees, so a
    query keeps its replica whichever ingress takes it). ``routing="power-of-two"`` uses Ray
    Serve's default router instead of query affinity (for comparison). Each replica batches
    its requests under ``scheduling_policy`` (``--scheduling-policy``)."""
    if routing not in ("affinity", "power-of-two"):
        raise ValueError(f"routing must be 'affinity' or 'power-of-two', not {routing!r}")
    if engine_args is None:
        if model is None:
            raise ValueError("give the model (model=...) or engine_args")
        engine_kwargs.setdefault("score_cache_entries", SERVER_SCORE_CACHE_ENTRIES)
        engine_args = EngineArgs(model=model, **engine_kwargs)
    engine_args = replace(engine_args, data_parallel_size=1,
                          threads=engine_args.threads or max(1, int(num_cpus_per_replica)))
    settings = replace(settings or ServerSettings(served_model_names=[engine_args.model]),
                       proxy_request_ids=True)  # Serve's proxy sets and echoes X-Request-Id
    scaling: dict[str, Any] = {"num_replicas": num_replicas}
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        high = max_replicas if max_replicas is not None else max(low, num_replicas)
        scaling = {"autoscaling_config": AutoscalingConfig(
            min_replicas=low, max_replicas=high, initial_replicas=max(low, min(num_replicas,
                                                                               high)),
            target_ongoing_requests=max(1, max_ongoing_requests // 2))}
    if routing == "affinity":
        scaling["request_router_config"] = RequestRouterConfig(
            request_router_class=QueryAffinityRouter,
            request_router_kwargs={"load_factor": load_factor})
    replica = serve.deployment(EngineReplica, name=ENGINE_DEPLOYMENT,
                               ray_actor_options={"num_cpus": num_cpus_per_replica},
                               max_ongoing_requests=max_ongoing_requests, **scaling)
    args = asdict(engine_args)
    ingress = serve.deployment(
        serve.ingress(_ingress_builder(args, settings, max_queued_pairs,
                                      scheduling_policy))(),
        name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0},
        num_replicas=ingress_replicas, max_ongoing_requests=10_000)
    return ingress.bind(replica.bind(args, max_queued_pairs, scheduling_policy))


def serve_command(ns: argparse.Namespace) -> int:
    """``qrank serve MODEL --data-parallel-size N --data-parallel-backend ray``."""
    from qrank.ray.data import connect

    engine_args = engine_args_from_namespace(ns)
    settings = ServerSettings(
        served_model_names=ns.served_model_name or [ns.model], api_key=ns.api_key or None,
        max_docs_per_request=ns.max_docs_per_request, max_request_bytes=ns.max_request_bytes,
        shutdown_timeout=ns.shutdown_timeout, max_chunks_per_doc=ns.max_chunks_per_doc,
        chunk_overlap_tokens=ns.chunk_overlap_tokens,
        max_chunks_per_request=ns.max_chunks_per_request, request_timeout=ns.request_timeout)
    app = build_app(engine_args=engine_args, settings=settings,
                    scheduling_policy=ns.scheduling_policy,
                    num_replicas=ns.data_parallel_size, min_replicas=ns.min_replicas,
                    max_replicas=ns.max_replicas,
                    num_cpus_per_replica=ns.num_cpus_per_replica,
                    max_queued_pairs=ns.max_queued_pairs, routing=ns.ray_routing)
    connect(ns.ray_address, log_to_driver=True)  # the replicas' logs and errors show here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # shut Serve down on SIGTERM too
    serve.start(http_options={"host": ns.host, "port": ns.port})
    serve.run(app, name="qrank", route_prefix="/")
    logger.info("listening on http://%s:%d with %d Ray Serve replica(s)", ns.host, ns.port,
                ns.data_parallel_size)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        logger.info("shutting down the Ray Serve application")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def app_from_env() -> serve.Application:
    """The application configured by environment variables (``qrank.ray.entry:app``):
    QRANK_MODEL (required), QRANK_REPLICAS, QRANK_MIN_REPLICAS, QRANK_MAX_REPLICAS,
    QRANK_CPUS_PER_REPLICA, QRANK_INGRESS_REPLICAS, QRANK_DTYPE, QRANK_API_KEY,
    QRANK_SERVED_MODEL_NAME."""
    env = os.environ
    model = env.get("QRANK_MODEL")
    if not model:
        raise ValueError("set QRANK_MODEL to the model directory or Hub id")

    def number(name: str, cast=int):
        return cast(env[name]) if env.get(name) else None

    settings = ServerSettings(served_model_names=[env.get("QRANK_SERVED_MODEL_NAME") or model],
                              api_key=env.get("QRANK_API_KEY") or None)
    return build_app(model, settings=settings, dtype=env.get("QRANK_DTYPE", "auto"),
                     num_replicas=number("QRANK_REPLICAS") or 1,
                     min_replicas=number("QRANK_MIN_REPLICAS"),
                     max_replicas=number("QRANK_MAX_REPLICAS"),
                     num_cpus_per_replica=number("QRANK_CPUS_PER_REPLICA", float) or 1.0,
                     ingress_replicas=number("QRANK_INGRESS_REPLICAS") or 1)
