"""``qrank bench serve``: load an HTTP rerank server as ``vllm bench serve --backend vllm-rerank``
does, and report in its layout, so that qrank, vLLM or any server with the same API can be
measured with one command.

Each request posts ``{model, query, documents, truncate_prompt_tokens: -1}`` to the endpoint. Its
end-to-end latency runs from sending to the response headers of a 200, and its input tokens are
the server's ``usage.prompt_tokens``. A request that fails (an HTTP error, a refused connection,
a malformed answer) is counted with its error and never stops the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm.auto import tqdm

from qrank.bench.datasets import RerankRequest, load_tokenizer, sample_from_namespace

logger = logging.getLogger(__name__)

MS_PER_S = 1000
# vLLM's metric names; a rerank answer is not streamed, so only e2el applies to it.
KNOWN_METRICS = ("ttft", "tpot", "itl", "e2el")
POOLING_METRICS = ("e2el",)
READY_RETRY_S = 1.0
MAX_PRINTED_ERRORS = 10


@dataclass
class RequestOutput:
    """What one request did."""

    success: bool = False
    latency: float = 0.0
    prompt_len: int = 0
    error: str = ""
    start_time: float = 0.0
    status: int | None = None


@dataclass(frozen=True)
class Target:
    """Where and how requests are sent."""

    api_url: str
    base_url: str
    model: str
    headers: dict[str, str]


@dataclass
class ServeMetrics:
    """The figures of vLLM's pooling report."""

    completed: int
    failed: int
    duration: float
    total_input: int
    request_throughput: float
    total_token_throughput: float
    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    percentiles_e2el_ms: list[tuple[float, float]]
    request_goodput: float | None = None  # requests/s within the --goodput SLO
    slo_attainment: float | None = None  # their share of all requests sent


# ---- request -----------------------------------------------------------------------------
def target_from_namespace(ns: argparse.Namespace) -> Target:
    """The URL, model name and headers that the flags ask for."""
    if ns.base_url:
        base_url = ns.base_url.rstrip("/")
    else:
        host = f"[{ns.host}]" if ":" in ns.host and not ns.host.startswith("[") else ns.host
        base_url = f"http://{host}:{ns.port}"
    api_url = f"{base_url}{ns.endpoint}"
    if not api_url.endswith("rerank"):
        raise ValueError(f"the {ns.backend} backend posts to a rerank endpoint; {api_url} does "
                         f"not end with 'rerank' (try --endpoint /v1/rerank)")
    api_key = ns.api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("QRANK_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Target(api_url, base_url, ns.served_model_name or ns.model, headers)


def rerank_payload(model: str, request: RerankRequest) -> dict[str, Any]:
    """The body of the vllm-rerank backend's request."""
    return {"model": model, "query": request.query, "documents": list(request.documents),
            "truncate_prompt_tokens": -1}


def describe_http_error(status: int, reason: str, body: bytes) -> str:
    """``"404 Not Found: <the server's message>"``, from an OpenAI-style error body if any."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
        elif data.get("detail"):
            text = json.dumps(data["detail"]) if not isinstance(data["detail"], str) \
                else data["detail"]
    text = text[:500]
    return f"{status} {reason}: {text}" if text else f"{status} {reason}"


async def send_rerank(client: httpx.AsyncClient, target: Target, request: RerankRequest,
                      pbar: tqdm | None = None) -> RequestOutput:
    """Post one request; every failure ends up in the returned output, never raised."""
    headers = {**target.headers, "x-request-id": request.request_id}
    out = RequestOutput()
    start = time.perf_counter()
    out.start_time = start
    try:
        async with client.stream("POST", target.api_url, headers=headers,
                                 json=rerank_payload(target.model, request)) as resp:
            out.status = resp.status_code
            if resp.status_code == 200:
                out.latency = time.perf_counter() - start
                usage = json.loads(await resp.aread()).get("usage") or {}
                out.prompt_len = int(usage.get("prompt_tokens") or 0)
                out.success = True
            else:
                out.error = describe_http_error(resp.status_code, resp.reason_phrase,
                                                await resp.aread())
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        out.success = False
        out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if pbar is not None:
        pbar.update(1)
    return out


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: one socket per request in flight."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_client(ns: argparse.Namespace) -> httpx.AsyncClient:
    """One connection pool for the whole run; unbounded unless --max-concurrency bounds it."""
    limit = ns.max_concurrency or None
    return httpx.AsyncClient(
        timeout=httpx.Timeout(ns.request_timeout),
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
    )


# ---- before the run ----------------------------------------------------------------------
def _refused(out: RequestOutput) -> bool:
    """The server answered and refused: retrying the same request will not help."""
    return out.status is not None and 400 <= out.status < 500 and out.status not in (408, 429)


async def wait_until_ready(client: httpx.AsyncClient, target: Target, request: RerankRequest,
                           timeout_s: float) -> RequestOutput:
    """Send the first request until it succeeds, the server refuses it, or time runs out."""
    print(f"Waiting for endpoint to become up in {timeout_s} seconds")
    deadline = time.perf_counter() + timeout_s
    while True:
        remaining = deadline - time.perf_counter()
        try:
            out = await asyncio.wait_for(send_rerank(client, target, request),
                                         timeout=max(remaining, 0.1))
        except asyncio.TimeoutError:
            out = RequestOutput(error=f"no answer within {timeout_s}s")
        if out.success or _refused(out):
            return out
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            out.error = f"endpoint not ready after {timeout_s}s; last error: {out.error}"
            return out
        logger.warning("endpoint is not ready: %s", out.error.rstrip().rsplit("\n", 1)[-1])
        await asyncio.sleep(min(READY_RETRY_S, remaining))


async def warm_up(client: httpx.AsyncClient, target: Target, request: RerankRequest,
                  num_warmups: int, max_concurrency: int | None, disable_tqdm: bool) -> None:
    """Send the first request ``num_warmups`` times; their results are not counted."""
    print(f"Warming up with {num_warmups} requests...")
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    with tqdm(total=num_warmups, disable=disable_tqdm, desc="Warmup") as pbar:
        async def one() -> RequestOutput:
            async with sem:
                return await send_rerank(client, target, request, pbar)

        await asyncio.gather(*(one() for _ in range(num_warmups)))
    print("Warmup run completed.")


# ---- the run -----------------------------------------------------------------------------
def arrival_offsets(n: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds from the start at which each request is sent.

    All at 0 for an infinite rate; otherwise gamma-distributed gaps of mean ``1/rate`` (shape
    ``burstiness``; 1 is a Poisson process), rescaled so the last one falls at ``n / rate``.
    The gaps come from ``numpy.random`` seeded with ``seed``, as in vLLM.
    """
    if burstiness <= 0:
        raise ValueError(f"--burstiness must be positive, not {burstiness}")
    if request_rate <= 0:
        raise ValueError(f"--request-rate must be positive, not {request_rate}")
    if math.isinf(request_rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = [1.0 / request_rate] * n
    else:
        state = np.random.RandomState(seed)
        scale = 1.0 / (request_rate * burstiness)
        gaps = [float(state.gamma(shape=burstiness, scale=scale)) for _ in range(n)]
    offsets = np.cumsum(gaps)
    if offsets[-1] != 0:
        offsets *= (n / request_rate) / offsets[-1]
    return offsets.tolist()


async def run_requests(client: httpx.AsyncClient, target: Target, requests: list[RerankRequest],
                       offsets: list[float], max_concurrency: int | None,
                       disable_tqdm: bool) -> tuple[list[RequestOutput], float]:
    """Send every request at its arrival time; returns their outputs and the run's seconds."""
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    with tqdm(total=len(requests), disable=disable_tqdm) as pbar:
        async def limited(request: RerankRequest) -> RequestOutput:
            async with sem:
                return await send_rerank(client, target, request, pbar)

        start = time.perf_counter()
        tasks = []
        for request, offset in zip(requests, offsets, strict=True):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(limited(request)))
        outputs = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
    return outputs, duration


# ---- report ------------------------------------------------------------------------------
def calculate_metrics(outputs: list[RequestOutput], duration: float,
                      percentiles: list[float],
                      goodput: dict[str, float] | None = None) -> ServeMetrics:
    """vLLM's pooling metrics: counts, token totals and E2EL statistics of the successes.

    With ``goodput`` (``{"e2el": ms}``, vLLM's --goodput) a request is good when it succeeded
    within the SLO; ``request_goodput`` counts good requests per second and ``slo_attainment``
    is their share of all requests, failed ones included.
    """
    ok = [o for o in outputs if o.success]
    e2els: list[float] | int = [o.latency for o in ok] or 0
    total_input = sum(o.prompt_len for o in ok)
    good_rate = share = None
    if goodput:
        slo_s = goodput.get("e2el", math.inf) / MS_PER_S
        good = sum(o.latency <= slo_s for o in ok)
        good_rate, share = good / duration, good / max(1, len(outputs))
    return ServeMetrics(
        completed=len(ok),
        failed=len(outputs) - len(ok),
        duration=duration,
        total_input=total_input,
        request_throughput=len(ok) / duration,
        total_token_throughput=total_input / duration,
        mean_e2el_ms=float(np.mean(e2els)) * MS_PER_S,
        median_e2el_ms=float(np.median(e2els)) * MS_PER_S,
        std_e2el_ms=float(np.std(e2els)) * MS_PER_S,
        percentiles_e2el_ms=[(p, float(np.percentile(e2els, p)) * MS_PER_S)
                             for p in percentiles],
        request_goodput=good_rate,
        slo_attainment=share,
    )


def percentile_word(p: float) -> str:
    """``99`` for 99.0, ``99.9`` for 99.9, as vLLM names percentiles."""
    return str(int(p)) if int(p) == p else str(p)


def report_lines(metrics: ServeMetrics, max_concurrency: int | None, request_rate: float,
                 selected_metrics: list[str]) -> list[str]:
    """The block that starts ``============ Serving Benchmark Result ============``."""
    row = "{:<40} {:<10}".format
    num = "{:<40} {:<10.2f}".format
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="),
             row("Successful requests:", metrics.completed),
             row("Failed requests:", metrics.failed)]
    if max_concurrency is not None:
        lines.append(row("Maximum request concurrency:", max_concurrency))
    if request_rate != float("inf"):
        lines.append(num("Request rate configured (RPS):", request_rate))
    lines += [num("Benchmark duration (s):", metrics.duration),
              row("Total input tokens:", metrics.total_input),
              num("Request throughput (req/s):", metrics.request_throughput)]
    if metrics.request_goodput is not None:
        lines += [num("Request goodput (req/s):", metrics.request_goodput),
                  num("Requests within the SLO (%):", 100 * (metrics.slo_attainment or 0.0))]
    lines += [num("Total Token throughput (tok/s):", metrics.total_token_throughput)]
    if "e2el" in selected_metrics:
        lines += ["{s:{c}^{n}}".format(s="End-to-end Latency", n=50, c="-"),
                  num("Mean E2EL (ms):", metrics.mean_e2el_ms),
                  num("Median E2EL (ms):", metrics.median_e2el_ms)]
        lines += [num(f"P{percentile_word(p)} E2EL (ms):", v)
                  for p, v in metrics.percentiles_e2el_ms]
    lines.append("=" * 50)
    return lines


def metric_results(metrics: ServeMetrics, selected_metrics: list[str]) -> dict[str, float]:
    """``mean_e2el_ms``, ``median_e2el_ms``, ``std_e2el_ms`` and ``p<N>_e2el_ms``."""
    if "e2el" not in selected_metrics:
        return {}
    out = {"mean_e2el_ms": metrics.mean_e2el_ms, "median_e2el_ms": metrics.median_e2el_ms,
           "std_e2el_ms": metrics.std_e2el_ms}
    for p, v in metrics.percentiles_e2el_ms:
        out[f"p{percentile_word(p)}_e2el_ms"] = v
    return out


def parse_metadata(items: list[str] | None) -> dict[str, str]:
    """``--metadata k=v ...`` as a dict."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"invalid --metadata {item!r}; use KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def build_result(ns: argparse.Namespace, metrics: ServeMetrics, outputs: list[RequestOutput],
                 selected_metrics: list[str], current_dt: str) -> dict[str, Any]:
    """The result JSON, keys in vLLM's order; per-request lists only with --save-detailed."""
    result: dict[str, Any] = {
        "date": current_dt,
        "endpoint_type": ns.backend,
        "backend": ns.backend,
        "model_id": ns.model,
        "tokenizer_id": ns.tokenizer or ns.model,
        "num_prompts": ns.num_prompts,
        **parse_metadata(ns.metadata),
        "request_rate": ns.request_rate if ns.request_rate < float("inf") else "inf",
        "burstiness": ns.burstiness,
        "max_concurrency": ns.max_concurrency,
        "duration": metrics.duration,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "total_token_throughput": metrics.total_token_throughput,
    }
    if ns.goodput:
        result["goodput_slo_ms"] = dict(ns.goodput)
        result["slo_attainment"] = metrics.slo_attainment
    if ns.save_detailed:
        result["input_lens"] = [o.prompt_len for o in outputs]
        result["latencies"] = [o.latency for o in outputs]
        result["errors"] = [o.error for o in outputs]
    result.update(metric_results(metrics, selected_metrics))
    return result


def result_filename(ns: argparse.Namespace, current_dt: str) -> str:
    """``{backend}-{rate}qps[-concurrency{N}]-{model basename}-{date}.json`` in --result-dir,
    as vLLM composes it, unless --result-filename names it."""
    concurrency = f"-concurrency{ns.max_concurrency}" if ns.max_concurrency is not None else ""
    base_model_id = ns.model.rstrip("/").split("/")[-1]
    name = ns.result_filename or (
        f"{ns.backend}-{ns.request_rate}qps{concurrency}-{base_model_id}-{current_dt}.json")
    if ns.result_dir:
        os.makedirs(ns.result_dir, exist_ok=True)
        name = os.path.join(ns.result_dir, name)
    return name


def plot_path(file_name: str) -> Path:
    return Path(file_name).with_suffix(".e2el.png")


def write_plot(path: Path, outputs: list[RequestOutput], metrics: ServeMetrics) -> None:
    """A histogram of the successful requests' E2E latencies, mean/median/percentiles marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = [o.latency * MS_PER_S for o in outputs if o.success]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(latencies, bins=max(10, min(60, len(latencies) // 5)), color="#4878a8")
    marks = [("mean", metrics.mean_e2el_ms), ("median", metrics.median_e2el_ms)]
    marks += [(f"P{percentile_word(p)}", v) for p, v in metrics.percentiles_e2el_ms]
    for (label, value), style in zip(marks, ["-", "--", ":", "-.", ":"] * 4, strict=False):
        ax.axvline(value, color="#c44e52", linestyle=style, label=f"{label} {value:.1f} ms")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"E2EL of {metrics.completed} requests ({metrics.failed} failed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_errors(outputs: list[RequestOutput]) -> None:
    failed = [o for o in outputs if not o.success]
    if failed:
        print(f"Failed requests during benchmark run detected (capping to {MAX_PRINTED_ERRORS}):")
        for i, o in enumerate(failed[:MAX_PRINTED_ERRORS]):
            print(f"Error {i}: {o.error}")


# ---- main --------------------------------------------------------------------------------
def check_arguments(ns: argparse.Namespace) -> tuple[list[str], list[float]]:
    """Fail fast on bad flags; returns the selected metrics and percentiles."""
    if ns.max_concurrency is not None and ns.max_concurrency <= 0:
        raise ValueError("--max-concurrency must be greater than 0")
    if ns.num_warmups < 0:
        raise ValueError("--num-warmups must not be negative")
    arrival_offsets(1, ns.request_rate, ns.burstiness, ns.seed)  # validates rate and burstiness
    metrics = [m.strip() for m in ns.percentile_metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown --percentile-metrics {unknown}; known: {list(KNOWN_METRICS)}")
    if any(m not in POOLING_METRICS for m in metrics):
        logger.info("a rerank answer is not streamed: only e2el of %s applies", metrics)
    try:
        percentiles = [float(p) for p in ns.metric_percentiles.split(",")]
    except ValueError as exc:
        raise ValueError(f"--metric-percentiles must be numbers: {exc}") from exc
    if any(not 0 <= p <= 100 for p in percentiles):
        raise ValueError("--metric-percentiles must lie in [0, 100]")
    if ns.goodput and any(name not in POOLING_METRICS for name, _ in ns.goodput):
        raise ValueError("a rerank answer is not streamed: --goodput takes e2el:MS only")
    if ns.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'qrank[plot]'")
    return metrics, percentiles


async def benchmark(ns: argparse.Namespace, target: Target,
                    requests: list[RerankRequest]) -> tuple[list[RequestOutput], float]:
    """Readiness check, warmups and the timed run."""
    async with make_client(ns) as client:
        if ns.ready_check_timeout_sec > 0:
            print("Starting initial single prompt test run...")
            test = await wait_until_ready(client, target, requests[0], ns.ready_check_timeout_sec)
            if not test.success:
                raise ValueError("Initial test run failed - Please make sure benchmark arguments "
                                 f"are correctly specified. Error: {test.error}")
            print("Initial test run completed.")
        else:
            print("Skipping endpoint ready check.")
        if ns.num_warmups > 0:
            await warm_up(client, target, requests[0], ns.num_warmups, ns.max_concurrency,
                          ns.disable_tqdm)
        print("Starting main benchmark run...")
        distribution = "Poisson process" if ns.burstiness == 1.0 else "Gamma distribution"
        print(f"Traffic request rate: {ns.request_rate}")
        print(f"Burstiness factor: {ns.burstiness} ({distribution})")
        print(f"Maximum request concurrency: {ns.max_concurrency}")
        offsets = arrival_offsets(len(requests), ns.request_rate, ns.burstiness, ns.seed)
        return await run_requests(client, target, requests, offsets, ns.max_concurrency,
                                  ns.disable_tqdm)


def main(ns: argparse.Namespace) -> int:
    """Run ``qrank bench serve``; 0 when at least one request succeeded, else 1."""
    selected_metrics, percentiles = check_arguments(ns)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    raise_open_files_limit()
    target = target_from_namespace(ns)
    tokenizer = load_tokenizer(ns.tokenizer or ns.model)
    requests = sample_from_namespace(ns, tokenizer)
    run_id = f"bench-{uuid.uuid4().hex[:8]}-"
    requests = [RerankRequest(r.query, r.documents, r.prompt_len, run_id + r.request_id)
                for r in requests]
    logger.info("%d requests of %d documents at most, to %s", len(requests),
                max(len(r.documents) for r in requests), target.api_url)

    outputs, duration = asyncio.run(benchmark(ns, target, requests))
    metrics = calculate_metrics(outputs, duration, percentiles,
                                dict(ns.goodput) if ns.goodput else None)
    print_errors(outputs)
    print("\n".join(report_lines(metrics, ns.max_concurrency, ns.request_rate,
                                 selected_metrics)))

    current_dt = datetime.now().strftime("%Y%m%d-%H%M%S")
    if ns.save_result or ns.plot:
        file_name = result_filename(ns, current_dt)
        if ns.save_result:
            with open(file_name, "w", encoding="utf-8") as f:
                json.dump(build_result(ns, metrics, outputs, selected_metrics, current_dt), f)
            print(f"Results saved to {file_name}")
        if ns.plot:
            if metrics.completed:
                write_plot(plot_path(file_name), outputs, metrics)
                print(f"Latency histogram saved to {plot_path(file_name)}")
            else:
                logger.warning("no request succeeded: no latency histogram")
    if not metrics.completed:
        logger.warning("all %d requests failed; check the benchmark arguments", metrics.failed)
        return 1
    return 0
