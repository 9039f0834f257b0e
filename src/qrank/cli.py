"""The ``qrank`` command: serve, score, score-file, bench serve, bench throughput,
make-test-model."""

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
                            tie_word_embeddings=tie, calibrate_head=calibrate, progress=True,
                            layout=ns.layout)
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


def import_ray_extra():
    """The qrank.ray module, or a ValueError naming the extra to install."""
    try:
        import qrank.ray as qray
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    return qray


def cmd_score_file(ns: argparse.Namespace) -> int:
    if ns.ray:
        return import_ray_extra().score_file_command(ns)
    if ns.ray_address:
        raise ValueError("--ray-address needs --ray")
    from qrank.jobs.command import main as score_file_main

    return score_file_main(ns)


def cmd_serve(ns: argparse.Namespace) -> int:
    if ns.data_parallel_backend == "ray":
        return import_ray_extra().serve_command(ns)
    if ns.data_parallel_size > 1 or ns.min_replicas or ns.max_replicas or ns.ray_address:
        raise ValueError("qrank serve runs one engine per process: --data-parallel-size > 1, "
                         "--min-replicas, --max-replicas and --ray-address need "
                         "--data-parallel-backend ray (pip install 'qrank[ray]')")
    from qrank.server.app import run_server

    return run_server(ns)


def cmd_bench_serve(ns: argparse.Namespace) -> int:
    from qrank.bench.serve import main as bench_serve_main

    return bench_serve_main(ns)


def cmd_bench_throughput(ns: argparse.Namespace) -> int:
    from qrank.bench.throughput import main as bench_throughput_main

    return bench_throughput_main(ns)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; each flag's default shown, unless it is None or a switch's
    or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse's errors, plus where to look: the command's --help."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        hint = f"see `{self.prog} --help`"
        if "unrecognized arguments" in message:
            hint += ("; vLLM flags that mean nothing here (e.g. --gpu-memory-utilization) are "
                     "accepted and ignored, others are not")
        self.exit(2, f"{self.prog}: error: {message}\n{hint}\n")


EXAMPLES = """\
examples:
  qrank make-test-model models/tiny --tokenizer ../shared/qwen3-tokenizer
  qrank score models/tiny "capital of China?" "Beijing is the capital." "Gravity pulls."
  qrank serve Qwen/Qwen3-Reranker-0.6B --port 8000
  qrank bench throughput models/tiny --num-prompts 100

Each command has its own --help, e.g. `qrank serve --help`."""

SERVE_EXAMPLES = """\
examples:
  qrank serve Qwen/Qwen3-Reranker-0.6B --port 8000
  qrank serve models/qwen3-reranker-0.6b --host 0.0.0.0 --api-key SECRET --dtype bfloat16
  # vLLM's command line runs as it is (its GPU-only flags are accepted and ignored):
  qrank serve Qwen/Qwen3-Reranker-8B --port 8888 --gpu-memory-utilization 0.9 \\
    --hf_overrides '{"architectures": ["Qwen3ForSequenceClassification"],
                     "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true}'
  # then:
  curl -s localhost:8000/v1/rerank -H 'Content-Type: application/json' -d \\
    '{"query": "capital of China?", "documents": ["Beijing is the capital.", "Gravity pulls."]}'

MODEL is a directory (config.json, *.safetensors, tokenizer.json) or a Hugging Face Hub id,
found in the Hub cache or downloaded. No model at hand? `qrank make-test-model DIR --shape 0.6b
--tokenizer TOKENIZER_DIR` writes a random one of the real shape."""

SCORE_EXAMPLES = """\
examples:
  qrank score models/tiny "capital of China?" "Beijing is the capital." "Gravity pulls."
  qrank score Qwen/Qwen3-Reranker-0.6B "capital of China?" --documents-file docs.txt --top-n 3

Prints one JSON line per document, best first: index, relevance_score, document."""

SCORE_FILE_EXAMPLES = """\
examples:
  qrank score-file pairs.jsonl --output scored.parquet --model Qwen/Qwen3-Reranker-0.6B
  qrank score-file pairs.csv -o scored.csv --model models/tiny --id-column id --part-size 5000
  qrank score-file pairs.parquet -o scored.parquet --model MODEL --ray --concurrency 4

INPUT has a query and a document column (names set by --query-column, --document-column),
optionally an instruction column. Every row is written with its score. The job keeps its
finished parts in OUTPUT.parts/: killed and started again with the same --output, it scores
only what is left, and the output appears, whole, only at the end."""

BENCH_SERVE_EXAMPLES = """\
example (a server started with `qrank serve MODEL --port 8000`):
  qrank bench serve --model MODEL --backend vllm-rerank --endpoint /v1/rerank \\
    --dataset-name random-rerank --tokenizer MODEL --random-input 512 --num-prompts 100 \\
    --port 8000 --save-result --result-dir results"""

BENCH_THROUGHPUT_EXAMPLES = """\
example:
  qrank bench throughput models/qwen3-reranker-0.6b --dataset-name random-rerank \\
    --random-input-len 512 --num-prompts 100 --output-json throughput.json"""

MAKE_TEST_MODEL_EXAMPLES = """\
examples:
  qrank make-test-model models/tiny --tokenizer ../shared/qwen3-tokenizer
  qrank make-test-model models/qwen3-reranker-0.6b --shape 0.6b \\
    --tokenizer ../shared/qwen3-tokenizer

The 0.6b shape takes about a minute and 3.3 GB of memory on 2 cores: its head is calibrated
with a float32 forward (--calibrate false: ~10 s, 1.5 GB). 4b and 8b are not calibrated."""


def _command(sub, name: str, help: str, epilog: str, usage: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its defaults and examples, its common flags first."""
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            usage=f"%(prog)s {usage}", formatter_class=HelpFormatter)
    parser.set_defaults(command_parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from qrank.bench.options import add_bench_serve_arguments, add_bench_throughput_arguments
    from qrank.jobs.options import add_score_file_arguments
    from qrank.server.options import add_server_arguments

    parser = Parser(prog="qrank", description=__doc__, epilog=EXAMPLES,
                    formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO",
                        help="DEBUG, INFO, WARNING or ERROR (before the command)")
    parser.set_defaults(command_parser=parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(sub, "serve", "serve a reranker over HTTP (vLLM/Jina/Cohere APIs)",
                     SERVE_EXAMPLES, "MODEL [flags]")
    serve.add_argument("model", metavar="MODEL", help="local directory or Hugging Face Hub id")
    common = serve.add_argument_group("common")
    add_server_arguments(serve, common)
    add_engine_arguments(serve, common)
    serve.set_defaults(handler=cmd_serve)

    score = _command(sub, "score", "rerank documents for one query, offline", SCORE_EXAMPLES,
                     "MODEL QUERY [DOCUMENT ...] [flags]")
    score.add_argument("model", metavar="MODEL", help="local directory or Hugging Face Hub id")
    score.add_argument("query", metavar="QUERY", help="the query")
    score.add_argument("documents", metavar="DOCUMENT", nargs="*",
                       help="documents to rank (or --documents-file)")
    common = score.add_argument_group("common")
    common.add_argument("--documents-file", help="one document per line")
    common.add_argument("--top-n", type=int, default=None, help="print only the best N")
    common.add_argument("--instruction", default=None,
                        help="the task instruction (default: the model card's web search one)")
    add_engine_arguments(score, common)
    score.set_defaults(handler=cmd_score)

    sf = _command(sub, "score-file", "score every (query, document) row of a file, offline",
                  SCORE_FILE_EXAMPLES, "INPUT --output OUTPUT --model MODEL [flags]")
    common = sf.add_argument_group("common")
    add_score_file_arguments(sf, common)
    add_engine_arguments(sf, common)
    sf.set_defaults(handler=cmd_score_file)

    bench = sub.add_parser("bench", help="benchmarks, as vLLM's bench",
                           description="benchmarks, as vLLM's bench: `qrank bench serve --help`, "
                                       "`qrank bench throughput --help`")
    bench.set_defaults(command_parser=bench)
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    bs = _command(bench_sub, "serve", "load an HTTP rerank server and report",
                  BENCH_SERVE_EXAMPLES, "--model NAME [flags]")
    add_bench_serve_arguments(bs)
    bs.set_defaults(handler=cmd_bench_serve)
    bt = _command(bench_sub, "throughput", "offline engine throughput",
                  BENCH_THROUGHPUT_EXAMPLES, "MODEL [flags]")
    add_bench_throughput_arguments(bt)
    add_engine_arguments(bt, bt.add_argument_group("common engine"))
    bt.set_defaults(handler=cmd_bench_throughput)

    mk = _command(sub, "make-test-model",
                  "write a random-weight checkpoint in the Hugging Face layout",
                  MAKE_TEST_MODEL_EXAMPLES, "OUT_DIR --tokenizer DIR [flags]")
    mk.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created)")
    mk.add_argument("--tokenizer", required=True,
                    help="directory holding tokenizer.json (e.g. ../shared/qwen3-tokenizer)")
    mk.add_argument("--shape", default="tiny", choices=["tiny", "small", "0.6b", "4b", "8b"],
                    help="tiny/small for tests, or a real Qwen3-Reranker size")
    mk.add_argument("--format", default="original",
                    choices=["original", "seq-cls", "seq-cls-2way"],
                    help="the release's causal-LM layout, or a sequence-classification one")
    mk.add_argument("--layout", default="hf", choices=["hf", "st"],
                    help="hf: the release's files; st: also the Sentence Transformers v6 "
                         "CrossEncoder files (modules.json, prompt, chat template, LogitScore)")
    mk.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the written weights")
    mk.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    mk.add_argument("--shards", type=int, default=None,
                    help="safetensors files (default: one up to 4 GiB, more beyond)")
    mk.add_argument("--tie-word-embeddings", choices=["true", "false"], default=None,
                    help="override the shape's default (0.6b/4b tie, 8b does not)")
    mk.add_argument("--calibrate", choices=["true", "false"], default=None,
                    help="spread the scores of varied pairs (default: tiny, small and 0.6b)")
    mk.set_defaults(handler=cmd_make_test_model)
    return parser


MODEL_HINT = ("hint: give a local model directory (config.json, *.safetensors, tokenizer.json) "
              "or a Hub id such as Qwen/Qwen3-Reranker-0.6B; `qrank make-test-model DIR --shape "
              "0.6b --tokenizer TOKENIZER_DIR` writes a random model to try qrank with")


def main(argv: list[str] | None = None) -> int:
    from qrank.config import warn_ignored_flags

    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = vars(ns).pop("command_parser")
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(ns.log_level)
    warn_ignored_flags(ns, logger)
    try:
        return ns.handler(ns)
    except (ValueError, FileNotFoundError) as exc:
        logger.debug("failed", exc_info=True)
        print(f"qrank {ns.command}: error: {exc}", file=sys.stderr)
        from qrank.models.loader import ModelNotFoundError

        if isinstance(exc, ModelNotFoundError):
            print(MODEL_HINT, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
