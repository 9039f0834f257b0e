"""The ``qrank`` command: serve, score, bench serve, bench throughput, make-test-model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from qrank.config import add_engine_arguments, engine_args_from_namespace

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_make_test_model(ns: argparse.Namespace) -> int:
    from qrank.testing import write_test_model

    tie = None if ns.tie_word_embeddings is None else ns.tie_word_embeddings == "true"
    calibrate = None if ns.calibrate is None else ns.calibrate == "true"
    path = write_test_model(ns.out_dir, ns.tokenizer, shape=ns.shape, fmt=ns.format,
                            dtype=ns.dtype, seed=ns.seed, shards=ns.shards,
                            tie_word_embeddings=tie, calibrate_head=calibrate, progress=True)
    print(path)
    return 0


def cmd_score(ns: argparse.Namespace) -> int:
    from qrank.llm import Reranker

    reranker = Reranker(engine_args_from_namespace(ns))
    documents = list(ns.documents)
    if ns.documents_file:
        with open(ns.documents_file, encoding="utf-8") as f:
            documents += [line.rstrip("\n") for line in f if line.strip()]
    if not documents:
        print("qrank score: give documents as arguments or with --documents-file",
              file=sys.stderr)
        return 2
    results = reranker.rerank(ns.query, documents, top_n=ns.top_n, instruction=ns.instruction)
    for r in results:
        print(json.dumps({"index": r.index, "relevance_score": r.score, "document": r.document},
                         ensure_ascii=False))
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from qrank.server.app import run_server

    return run_server(ns)


def cmd_bench_serve(ns: argparse.Namespace) -> int:
    from qrank.bench.serve import main as bench_serve_main

    return bench_serve_main(ns)


def cmd_bench_throughput(ns: argparse.Namespace) -> int:
    from qrank.bench.throughput import main as bench_throughput_main

    return bench_throughput_main(ns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrank", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a reranker over HTTP (vLLM/Jina/Cohere APIs)")
    serve.add_argument("model", help="local directory or Hugging Face Hub id")
    from qrank.server.options import add_server_arguments

    add_server_arguments(serve)
    add_engine_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    score = sub.add_parser("score", help="rerank documents for one query, offline")
    score.add_argument("model")
    score.add_argument("query")
    score.add_argument("documents", nargs="*")
    score.add_argument("--documents-file", help="one document per line")
    score.add_argument("--top-n", type=int, default=None)
    score.add_argument("--instruction", default=None)
    add_engine_arguments(score)
    score.set_defaults(handler=cmd_score)

    bench = sub.add_parser("bench", help="benchmarks, as vLLM's bench")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    from qrank.bench.options import add_bench_serve_arguments, add_bench_throughput_arguments

    bs = bench_sub.add_parser("serve", help="load an HTTP rerank server and report")
    add_bench_serve_arguments(bs)
    bs.set_defaults(handler=cmd_bench_serve)
    bt = bench_sub.add_parser("throughput", help="offline engine throughput")
    add_bench_throughput_arguments(bt)
    add_engine_arguments(bt)
    bt.set_defaults(handler=cmd_bench_throughput)

    mk = sub.add_parser("make-test-model",
                        help="write a random-weight checkpoint in the Hugging Face layout")
    mk.add_argument("out_dir")
    mk.add_argument("--shape", default="tiny", choices=["tiny", "small", "0.6b", "4b", "8b"])
    mk.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    mk.add_argument("--format", default="original",
                    choices=["original", "seq-cls", "seq-cls-2way"])
    mk.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--shards", type=int, default=None)
    mk.add_argument("--tie-word-embeddings", choices=["true", "false"], default=None,
                    help="override the shape's default (0.6b/4b tie, 8b does not)")
    mk.add_argument("--calibrate", choices=["true", "false"], default=None,
                    help="spread the scores of varied pairs (default: tiny and 0.6b)")
    mk.set_defaults(handler=cmd_make_test_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    _setup_logging(ns.log_level)
    try:
        return ns.handler(ns)
    except (ValueError, FileNotFoundError) as exc:
        logger.debug("failed", exc_info=True)
        print(f"qrank {ns.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
