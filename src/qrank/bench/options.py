"""Flags of ``qrank bench serve`` and ``qrank bench throughput``, spelled as vLLM's bench."""

from __future__ import annotations

import argparse

DATASETS = ("random-rerank", "custom-rerank")


def batch_size_range(text: str) -> int | tuple[int, int]:
    """``N`` documents per request, or ``MIN:MAX``: each request's count drawn in the range."""
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        lo = hi = 0
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"must be N or MIN:MAX with 1 <= MIN <= MAX, not "
                                         f"{text!r}")
    return lo if lo == hi and not sep else (lo, hi)


def goodput_slo(text: str) -> tuple[str, float]:
    """``e2el:MS`` of --goodput (vLLM's KEY:VALUE, milliseconds)."""
    name, sep, value = text.partition(":")
    try:
        ms = float(value) if sep else -1.0
    except ValueError:
        ms = -1.0
    if name not in ("ttft", "tpot", "e2el") or not ms >= 0:
        raise argparse.ArgumentTypeError(f"must be KEY:MS with KEY ttft, tpot or e2el and MS a "
                                         f"non-negative number of milliseconds, not {text!r}")
    return name, ms


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset-name", default="random-rerank", choices=DATASETS,
                   help="the dataset; random-rerank builds vLLM's random rerank workload; "
                        "custom-rerank replays the requests of --dataset-path")
    g.add_argument("--dataset-path", default=None,
                   help="custom-rerank: a JSONL file, one request a line: "
                        '{"query": "...", "documents": ["...", ...]}')
    g.add_argument("--num-prompts", type=int, default=1000,
                   help="random-rerank: documents to draw; custom-rerank: requests (lines) "
                        "to send, at most the file's")
    g.add_argument("--random-input-len", "--random-input", dest="random_input_len", type=int,
                   default=1024, help="tokens of query + document of each pair")
    g.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="document lengths are drawn in [L(1-r), L(1+r)]")
    g.add_argument("--random-batch-size", type=batch_size_range, default=1, metavar="N|MIN:MAX",
                   help="documents per rerank request; MIN:MAX draws each request's count "
                        "uniformly in the range (a mix of small and large requests)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random dataset")


def add_bench_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """vLLM ``bench serve`` flags that apply to rerank servers."""
    parser.add_argument("--backend", default="vllm-rerank", choices=["vllm-rerank"],
                        help="the request format (vLLM's rerank API)")
    parser.add_argument("--model", required=True, help="model name sent in requests")
    parser.add_argument("--served-model-name", default=None,
                        help="name sent in requests when it differs from --model")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address")
    parser.add_argument("--port", type=int, default=8000, help="the server's port")
    parser.add_argument("--base-url", default=None, help="overrides --host and --port")
    parser.add_argument("--endpoint", default="/v1/rerank", help="path requests are sent to")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second (inf: all at once); Poisson arrivals")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="gamma shape of inter-arrival times (1: Poisson)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="most requests in flight (default: no limit)")
    parser.add_argument("--num-warmups", type=int, default=0,
                        help="requests sent before timing")
    parser.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    parser.add_argument("--save-result", action="store_true",
                        help="write the results as JSON (see --result-dir)")
    parser.add_argument("--save-detailed", action="store_true",
                        help="with --save-result, add every request's latency")
    parser.add_argument("--result-dir", default=None,
                        help="directory of the result JSON (default: the current one)")
    parser.add_argument("--result-filename", default=None,
                        help="name of the result JSON (default: from backend, rate, model and "
                             "time, as vLLM names it)")
    parser.add_argument("--metadata", nargs="*", default=None, metavar="KEY=VALUE")
    parser.add_argument("--goodput", nargs="+", type=goodput_slo, default=None,
                        metavar="KEY:MS",
                        help="service level objective, vLLM's: e2el:MS counts the requests "
                             "answered within MS milliseconds; reports their share and the "
                             "goodput (such requests per second)")
    parser.add_argument("--percentile-metrics", default="e2el",
                        help="comma-separated metrics to report percentiles of (e2el)")
    parser.add_argument("--metric-percentiles", default="99",
                        help="comma-separated percentiles, e.g. 25,50,99")
    parser.add_argument("--api-key", default=None,
                        help="Bearer token (default: $OPENAI_API_KEY or $QRANK_API_KEY)")
    parser.add_argument("--ready-check-timeout-sec", type=int, default=600,
                        help="seconds to wait for the server to answer before starting")
    parser.add_argument("--request-timeout", type=float, default=6 * 3600,
                        help="seconds before one request fails")
    parser.add_argument("--plot", action="store_true",
                        help="write a latency histogram PNG beside the result JSON")
    add_dataset_arguments(parser)


def add_bench_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    """``qrank bench throughput MODEL``: the offline engine on the same dataset."""
    parser.add_argument("model", help="local directory or Hub id of the model")
    parser.add_argument("--output-json", default=None, help="write the results as JSON here")
    parser.add_argument("--num-warmups", type=int, default=1,
                        help="batches scored before timing")
    add_dataset_arguments(parser)
