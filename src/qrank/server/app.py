"""The FastAPI app: routes, auth, limits, errors; and ``run_server`` for ``qrank serve``.

The app knows nothing of tensors: it tokenizes in a worker thread, submits token ids to the
:class:`~qrank.engine.engine.AsyncEngine` and awaits its Future, so the event loop never blocks
on model compute and requests in flight are batched together by the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import qrank
from qrank.engine.engine import AsyncEngine, EngineDeadError, QueueFullError, ScoreFuture
from qrank.llm import pair_up
from qrank.score_template import TemplateError
from qrank.server.metrics import CONTENT_TYPE, ServerMetrics
from qrank.server.protocol import (
    ChunkInfo,
    ErrorResponse,
    FieldError,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
    Usage,
    VLLMOptions,
    error_body,
    valid_request_id,
)
from qrank.server.waiting import (
    DISCONNECTED,
    TIMEOUT_HEADER,
    ClientDisconnected,
    DeadlineExceeded,
    DisconnectWatch,
    await_result,
    past,
    request_timeout,
)
from qrank.tokenize import InputTooLongError, PairTokens
from qrank.windows import DEFAULT_OVERLAP, Chunk, DocTokens, best_windows, flatten

logger = logging.getLogger(__name__)

OPEN_ROUTES = {"/health"}
REQUEST_ID_HEADER = "X-Request-Id"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503, 504)
}


class APIError(Exception):
    """An error the client gets as an OpenAI-style body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


@dataclass
class ServerSettings:
    served_model_names: list[str]
    api_key: str | None = None
    max_docs_per_request: int = 1000
    max_request_bytes: int = 32 * 1024 * 1024
    shutdown_timeout: float = 60.0
    max_chunks_per_doc: int = 1
    chunk_overlap_tokens: int = DEFAULT_OVERLAP
    max_chunks_per_request: int = 4000
    request_timeout: float | None = None  # seconds; the X-Request-Timeout header may cut it
    # a proxy in front (Ray Serve's) gives every request an X-Request-Id, the client's or its
    # own, and sends it back itself: the body's request_id then comes first for the id
    proxy_request_ids: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.max_chunks_per_doc < 1 or self.max_chunks_per_request < 1:
            raise ValueError("--max-chunks-per-doc and --max-chunks-per-request must be at "
                             "least 1")
        if self.chunk_overlap_tokens < 0:
            raise ValueError("--chunk-overlap-tokens must not be negative")


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length or by counting chunks.

    The body is read here, within the limit, and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413, f"the request body exceeds the limit of {self.max_bytes} bytes; send fewer "
                 "or shorter documents per request")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A readable message (and the offending field) from pydantic's errors."""
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {err.get('msg')}", None
        if not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            return ("the request body must be a JSON object, sent with "
                    "'Content-Type: application/json'"), None
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts), param


def create_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    """The HTTP app serving ``engine`` under ``settings``."""
    metrics = ServerMetrics()
    core = engine.engine
    piece_kv = getattr(core, "piece_kv", None)  # none at a Ray ingress: replicas hold them
    metrics.watch(lambda: engine.num_pending_pairs, lambda: core.prefix_cache.hits,
                  lambda: core.prefix_cache.nbytes,
                  queue_requests=lambda: engine.num_pending_requests,
                  piece_bytes=None if piece_kv is None else lambda: piece_kv.nbytes)
    engine.observer = metrics
    metrics.watch_score_cache(core.score_cache)
    core.on_batch = metrics.observe_batch
    display_name = settings.served_model_names[0]
    own_ids = settings.proxy_request_ids  # the proxy sends X-Request-Id back, not the app

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        logger.info("qrank ready: serving %s as %s", core.model_path,
                    ", ".join(settings.served_model_names))
        yield
        logger.info("shutting down: finishing queued pairs")
        await run_in_threadpool(engine.shutdown, settings.shutdown_timeout)

    options: dict[str, Any] = {}
    if "strict_content_type" in inspect.signature(FastAPI).parameters:
        options["strict_content_type"] = False  # parse JSON without a Content-Type, as vLLM
    app = FastAPI(title="qrank", version=qrank.__version__, lifespan=lifespan,
                  description="Reranking with Qwen3-Reranker: vLLM, Jina and Cohere "
                              "compatible rerank and score APIs.", **options)
    app.state.metrics = metrics

    # ---- middleware ------------------------------------------------------------------------
    @app.middleware("http")
    async def auth_and_metrics(request: Request,
                               call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        request.state.arrival = time.monotonic()  # deadlines run from here
        if settings.api_key and request.url.path not in OPEN_ROUTES:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), settings.api_key.encode()
            ):
                response: Response = error_response(
                    401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
                metrics.observe_request("unauthorized", 401, time.perf_counter() - start)
                return response
        response = await call_next(request)
        sent_id = request.headers.get(REQUEST_ID_HEADER)
        if sent_id and REQUEST_ID_HEADER not in response.headers and not own_ids:
            with contextlib.suppress(ValueError):  # a bad one got its 400 from the route
                response.headers[REQUEST_ID_HEADER] = valid_request_id(sent_id)
        route = request.scope.get("route")
        label = getattr(route, "path", "unmatched")
        metrics.observe_request(label, response.status_code, time.perf_counter() - start)
        return response

    app.add_middleware(DisconnectWatch)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    # ---- errors ------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(FieldError)
    async def on_field_error(_: Request, exc: FieldError) -> JSONResponse:
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    # ---- helpers -----------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name is not None and name not in settings.served_model_names:
            raise APIError(404, f"the model `{name}` does not exist; this server serves "
                                f"{', '.join(settings.served_model_names)}", "model")

    def check_count(n: int, what: str) -> None:
        if n > settings.max_docs_per_request:
            raise APIError(400, f"{n} {what} in one request; the limit is "
                                f"{settings.max_docs_per_request}: split the request", what)

    def max_length(truncate_prompt_tokens: int | None) -> int | None:
        if truncate_prompt_tokens in (None, -1):
            return None
        if truncate_prompt_tokens > core.max_model_len:
            raise APIError(400, f"truncate_prompt_tokens ({truncate_prompt_tokens}) is greater "
                                f"than max_model_len ({core.max_model_len})",
                           "truncate_prompt_tokens")
        return truncate_prompt_tokens

    def encode_options(req: RerankRequest | ScoreRequest) -> dict[str, Any]:
        """What both routes tell the tokenizer, from the request's fields."""
        chunks = req.max_chunks_per_doc or settings.max_chunks_per_doc
        overlap = req.chunk_overlap_tokens
        return dict(instruction=req.template_instruction(),
                    max_length=max_length(req.truncate_prompt_tokens), truncate=req.truncate,
                    truncation_side=req.truncation_side or "right",
                    max_query_tokens=req.max_tokens_per_query,
                    chat_template_kwargs=req.chat_template_kwargs, max_chunks=chunks,
                    overlap=settings.chunk_overlap_tokens if overlap is None else overlap)

    def request_id(req: VLLMOptions, request: Request, kind: str) -> str:
        """The request's id: its X-Request-Id header, else its request_id, else a new one
        (behind a proxy that sets the header: request_id first)."""
        if settings.proxy_request_ids and req.request_id:
            return req.request_id
        sent = request.headers.get(REQUEST_ID_HEADER)
        if sent is not None:
            try:
                return valid_request_id(sent)
            except ValueError as exc:
                raise APIError(400, f"the {REQUEST_ID_HEADER} header {exc}",
                               REQUEST_ID_HEADER) from exc
        return req.request_id or f"{kind}-{uuid.uuid4().hex}"

    async def tokenize(fn: Callable[..., list[DocTokens]], *args: Any, salt: str | None = None,
                       **options: Any) -> tuple[list[DocTokens], list[PairTokens]]:
        """The documents' pairs (a split document's windows) and all pairs, flat, salted;
        400 when the windows are more than a request may have."""
        try:
            docs = await run_in_threadpool(fn, *args, **options)
        except InputTooLongError as exc:
            raise APIError(400, str(exc), "documents") from exc
        except TemplateError as exc:  # a score template that refuses the request's variables
            raise APIError(400, str(exc)) from exc
        pairs = flatten(docs)
        if len(pairs) > max(settings.max_chunks_per_request, len(docs)):
            raise APIError(400, f"the documents split into {len(pairs)} windows; this server "
                                f"scores at most {settings.max_chunks_per_request} in one "
                                "request: lower max_chunks_per_doc, or send fewer or shorter "
                                "documents", "max_chunks_per_doc")
        return docs, [replace(p, salt=salt) for p in pairs] if salt else pairs

    def time_limit(http: Request) -> float | None:
        """Seconds the request may take: X-Request-Timeout capped by --request-timeout."""
        try:
            return request_timeout(http.headers.get(TIMEOUT_HEADER), settings.request_timeout)
        except ValueError as exc:
            raise APIError(400, str(exc), TIMEOUT_HEADER) from exc

    def check_priority(priority: int) -> None:
        if priority and engine.policy != "priority":
            raise APIError(400, f"priority {priority} needs a server started with "
                                f"--scheduling-policy priority; this one schedules "
                                f"{engine.policy}", "priority")

    def busy(exc: QueueFullError) -> APIError:
        return APIError(503, f"the server is busy ({exc}); retry shortly",
                        headers={"Retry-After": "1"})

    def timed_out(limit: float) -> APIError:
        return APIError(504, f"the request did not finish within its time limit of {limit:g} s "
                             f"({TIMEOUT_HEADER} or --request-timeout); its waiting pairs were "
                             "dropped")

    async def score(pairs: list[PairTokens], http: Request, limit: float | None,
                    priority: int = 0, use_activation: bool | None = None
                    ) -> tuple[list[float], int]:
        """The pairs' scores (or logits, ``use_activation`` False) and how many of them the
        score cache answered. Past its time
        ``limit`` (504) or when the client goes away (499) the request is given up and its
        waiting pairs dropped."""
        deadline = None
        if limit is not None:
            deadline = getattr(http.state, "arrival", time.monotonic()) + limit
            if past(deadline):
                metrics.request_cancelled("timeout", len(pairs))
                raise timed_out(limit)
        try:
            future = await run_in_threadpool(engine.submit, pairs, use_activation is not False,
                                              priority)
        except QueueFullError as exc:
            raise busy(exc) from exc
        except EngineDeadError as exc:
            raise APIError(503, str(exc)) from exc
        except ValueError as exc:
            raise APIError(400, str(exc), "documents") from exc
        try:
            scores = await wait_for(future, http, deadline, limit)
        except QueueFullError as exc:  # an engine that queues elsewhere (Ray replicas)
            raise busy(exc) from exc
        except EngineDeadError as exc:
            raise APIError(503, str(exc)) from exc
        metrics.observe_scored(len(pairs), sum(len(p) for p in pairs))
        return scores, future.cached

    async def wait_for(future: ScoreFuture, http: Request, deadline: float | None,
                       limit: float | None) -> list[float]:
        """The future's scores, unless the deadline passes or the client goes away first; a
        request given up for any reason has its waiting pairs dropped."""
        try:
            return await await_result(future, deadline, http.scope.get(DISCONNECTED))
        except DeadlineExceeded:
            if engine.abort(future, "timeout") is not None:
                raise timed_out(limit or 0.0) from None
        except ClientDisconnected:
            if engine.abort(future, "disconnect") is not None:
                raise APIError(499, "the client closed the request") from None
        except asyncio.CancelledError:  # a proxy (Ray Serve's) cancels when the client left
            engine.abort(future, "disconnect")
            raise
        except BaseException:
            engine.abort(future, "error")  # this handler failed
            raise
        return await asyncio.wrap_future(future)  # it finished just as it was given up

    # ---- routes ------------------------------------------------------------------------------
    @app.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
    @app.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
    @app.post("/v2/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
    async def rerank(req: RerankRequest, http: Request) -> JSONResponse:
        """Rerank documents by relevance to the query (vLLM / Jina / Cohere)."""
        check_model(req.model)
        rid = request_id(req, http, "rerank")
        check_priority(req.priority)
        limit = time_limit(http)
        docs = req.document_texts()
        check_count(len(docs), "documents")
        windows, pairs = await tokenize(core.encode_docs, req.query, docs,
                                        max_doc_tokens=req.max_tokens_per_doc,
                                        salt=req.cache_salt, **encode_options(req))
        pair_scores, cached = await score(pairs, http, limit, req.priority, req.use_activation)
        best = best_windows(windows, pair_scores)
        order = sorted(range(len(docs)), key=lambda i: -best[i][0])
        if req.top_n:
            order = order[: req.top_n]
        results = [
            RerankResult(index=i, relevance_score=best[i][0],
                         document=RerankDocument(text=docs[i]) if req.return_documents else None,
                         chunk=chunk_info(best[i][1]))
            for i in order
        ]
        tokens = sum(len(p) for p in pairs)
        body = RerankResponse(id=rid, model=req.model or display_name,
                              usage=Usage(prompt_tokens=tokens, total_tokens=tokens,
                                          cached_pairs=cached),
                              results=results).model_dump()
        if not req.return_documents:
            for r in body["results"]:
                del r["document"]
        return JSONResponse(body, headers=None if own_ids else {REQUEST_ID_HEADER: rid})

    @app.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    @app.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    async def score_pairs(req: ScoreRequest, http: Request, response: Response
                          ) -> ScoreResponse:
        """Score 1:1, 1:N or N:N text pairs (vLLM's score API)."""
        check_model(req.model)
        rid = request_id(req, http, "score")
        check_priority(req.priority)
        limit = time_limit(http)
        (name_1, side_1), (name_2, side_2) = req.sides()
        try:
            queries, docs = pair_up(side_1, side_2)
        except ValueError as exc:
            raise APIError(400, f"N:N scoring needs as many texts on each side (or one {name_1} "
                                f"for 1:N): {name_1} has {len(side_1)} texts and {name_2} has "
                                f"{1 if isinstance(side_2, str) else len(side_2)}",
                           name_2) from exc
        check_count(len(docs), "pairs")
        windows, pairs = await tokenize(core.encode_pair_docs, queries, docs,
                                        salt=req.cache_salt, **encode_options(req))
        pair_scores, cached = await score(pairs, http, limit, req.priority, req.use_activation)
        best = best_windows(windows, pair_scores)
        tokens = sum(len(p) for p in pairs)
        if not own_ids:
            response.headers[REQUEST_ID_HEADER] = rid
        return ScoreResponse(
            id=rid, model=req.model or display_name,
            data=[ScoreData(index=i, score=s, chunk=chunk_info(c))
                  for i, (s, c) in enumerate(best)],
            usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens, cached_pairs=cached),
        )

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[
            ModelCard(id=name, created=settings.created, root=str(core.model_path),
                      max_model_len=core.max_model_len)
            for name in settings.served_model_names
        ])

    @app.get("/health")
    async def health() -> Response:
        if not engine.alive:
            return error_response(503, "the engine is not running")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": qrank.__version__}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def chunk_info(chunk: Chunk | None) -> ChunkInfo | None:
    return None if chunk is None else ChunkInfo(**asdict(chunk))


def run_server(ns: argparse.Namespace) -> int:
    """``qrank serve``: load the model once, then serve until SIGINT/SIGTERM."""
    import uvicorn

    from qrank.config import engine_args_from_namespace
    from qrank.engine.engine import Engine

    args = engine_args_from_namespace(ns)
    settings = ServerSettings(
        served_model_names=ns.served_model_name or [ns.model],
        api_key=ns.api_key or None,
        max_docs_per_request=ns.max_docs_per_request,
        max_request_bytes=ns.max_request_bytes,
        shutdown_timeout=ns.shutdown_timeout,
        max_chunks_per_doc=ns.max_chunks_per_doc,
        chunk_overlap_tokens=ns.chunk_overlap_tokens,
        max_chunks_per_request=ns.max_chunks_per_request,
        request_timeout=ns.request_timeout,
    )  # checked before the model loads
    engine = AsyncEngine(Engine(args), max_queued_pairs=ns.max_queued_pairs,
                         policy=ns.scheduling_policy)
    app = create_app(engine, settings)
    logger.info("listening on http://%s:%d (auth %s)", ns.host, ns.port,
                "on" if settings.api_key else "off")
    uvicorn.run(app, host=ns.host, port=ns.port, log_level=ns.uvicorn_log_level,
                timeout_graceful_shutdown=ns.shutdown_timeout)
    return 0
