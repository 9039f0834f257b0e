"""``qrank bench throughput MODEL``: the offline engine on the random-rerank workload, no HTTP.

The timed part tokenizes every request's pairs and scores them all, as ``vllm bench throughput``
times its engine on the whole dataset. Tokens are those the engine computes (template included),
which is what a qrank server reports as ``usage.prompt_tokens``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass

from qrank.bench.datasets import RerankRequest, sample_from_namespace
from qrank.config import engine_args_from_namespace
from qrank.engine.data_parallel import create_engine
from qrank.engine.engine import Engine

logger = logging.getLogger(__name__)


@dataclass
class ThroughputResult:
    """What the timed run did; the keys of ``--output-json``."""

    elapsed_time: float
    num_requests: int
    num_pairs: int
    total_num_tokens: int
    requests_per_second: float
    pairs_per_second: float
    tokens_per_second: float


def warm_up(engine: Engine, request: RerankRequest, num_warmups: int) -> None:
    """Score the first request ``num_warmups`` times before timing."""
    pairs = engine.encode(request.query, request.documents)
    for _ in range(num_warmups):
        engine.score_tokens(pairs, use_tqdm=False)


def run(engine: Engine, requests: list[RerankRequest]) -> ThroughputResult:
    """Tokenize and score every pair of ``requests``; the figures of that run."""
    start = time.perf_counter()
    pairs = [p for r in requests for p in engine.encode(r.query, r.documents)]
    scores = engine.score_tokens(pairs)
    elapsed = time.perf_counter() - start
    if len(scores) != len(pairs):
        raise RuntimeError(f"the engine returned {len(scores)} scores for {len(pairs)} pairs")
    tokens = sum(len(p) for p in pairs)
    return ThroughputResult(elapsed, len(requests), len(pairs), tokens, len(requests) / elapsed,
                            len(pairs) / elapsed, tokens / elapsed)


def report_lines(result: ThroughputResult) -> list[str]:
    """vLLM's throughput lines, with pairs in place of output tokens."""
    return [f"Throughput: {result.requests_per_second:.2f} requests/s, "
            f"{result.pairs_per_second:.2f} pairs/s, "
            f"{result.tokens_per_second:.2f} total tokens/s",
            f"Total num prompt tokens:  {result.total_num_tokens}",
            f"Total num pairs:  {result.num_pairs}"]


def main(ns: argparse.Namespace) -> int:
    """Run ``qrank bench throughput``."""
    if ns.num_warmups < 0:
        raise ValueError("--num-warmups must not be negative")
    engine = create_engine(engine_args_from_namespace(ns))
    try:
        requests = sample_from_namespace(ns, engine.tokenizer.tokenizer)
        logger.info("%d requests, %d pairs", len(requests), ns.num_prompts)
        warm_up(engine, requests[0], ns.num_warmups)
        result = run(engine, requests)
    finally:
        engine.close()
    print("\n".join(report_lines(result)))
    if ns.output_json:
        with open(ns.output_json, "w", encoding="utf-8") as f:
            json.dump(asdict(result), f, indent=4)
    return 0
