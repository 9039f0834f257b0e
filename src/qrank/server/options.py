"""Flags of ``qrank serve`` beyond the engine's, spelled as vLLM spells them."""

from __future__ import annotations

import argparse
import math
import os

from qrank.engine.scheduler import POLICIES


def positive_seconds(text: str) -> float:
    """A flag's positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def add_server_arguments(parser: argparse.ArgumentParser,
                         common: argparse._ArgumentGroup | None = None) -> None:
    """Add the server flags; --host, --port, --served-model-name and --api-key go to
    ``common`` when given, listed first in --help."""
    g = parser.add_argument_group("server")
    c = common or g
    c.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    c.add_argument("--port", type=int, default=8000, help="port to listen on")
    c.add_argument("--served-model-name", "--served_model_name", nargs="+", default=None,
                   help="name(s) clients use in 'model' (default: the model argument)")
    # the key's value is never shown: the help names the variable, not its default
    c.add_argument("--api-key", "--api_key", default=os.environ.get("QRANK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $QRANK_API_KEY)")
    g.add_argument("--max-docs-per-request", type=int, default=1000,
                   help="most documents (or pairs) in one request")
    g.add_argument("--max-request-bytes", type=int, default=32 * 1024 * 1024,
                   help="largest request body accepted")
    g.add_argument("--max-queued-pairs", type=int, default=100_000,
                   help="pairs waiting in the engine before new requests get 503")
    g.add_argument("--scheduling-policy", "--scheduling_policy", default="fair",
                   choices=POLICIES,
                   help="which waiting request's pairs go next: fair shares each batch among "
                        "the requests waiting, by tokens (a small request waits about one "
                        "batch behind a large one); fcfs serves them in arrival order; "
                        "priority: lowest 'priority' field first, ties fair")
    g.add_argument("--request-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                   help="answer 504 to a request not done this many seconds after it "
                        "arrived, dropping its waiting pairs; a client's X-Request-Timeout "
                        "header may set a shorter limit (default: none)")
    g.add_argument("--score-cache-entries", type=int, default=1_000_000,
                   help="scores of repeated pairs (same token ids and cache_salt) kept and "
                        "answered without computing them: 1,000,000 take 64 MiB (0: off)")
    g.add_argument("--max-chunks-per-doc", type=int, default=1,
                   help="split a document too long to fit into at most this many windows and "
                        "score its best (1: truncate it; requests may set max_chunks_per_doc)")
    g.add_argument("--chunk-overlap-tokens", type=int, default=64,
                   help="tokens consecutive windows share (requests may set "
                        "chunk_overlap_tokens)")
    g.add_argument("--max-chunks-per-request", type=int, default=4000,
                   help="most windows (a document not split counts one) in one request; over "
                        "it the request gets 400")
    g.add_argument("--uvicorn-log-level", default="warning", help="uvicorn's own log level")
    g.add_argument("--shutdown-timeout", type=float, default=60.0,
                   help="seconds to finish in-flight requests after SIGTERM")
    r = parser.add_argument_group("data parallel (Ray Serve: pip install 'qrank[ray]')")
    r.add_argument("--data-parallel-size", "--data_parallel_size", "-dp", type=int, default=1,
                   help="engine replicas (more than 1 needs --data-parallel-backend ray)")
    r.add_argument("--data-parallel-backend", "--data_parallel_backend", "-dpb",
                   choices=["mp", "ray"], default="mp",
                   help="ray: the replicas run as Ray Serve deployments behind one ingress; "
                        "mp: one engine in this process")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto: the running one; default: start a local one)")
    r.add_argument("--min-replicas", type=int, default=None,
                   help="with --max-replicas: Ray Serve autoscales on ongoing requests")
    r.add_argument("--max-replicas", type=int, default=None, help="see --min-replicas")
    r.add_argument("--ray-routing", choices=["affinity", "power-of-two"], default="affinity",
                   help="affinity: a query's requests go to one replica while it is not "
                        "overloaded; power-of-two: Ray Serve's default (for comparison)")
    r.add_argument("--num-cpus-per-replica", type=float, default=1.0,
                   help="CPUs Ray reserves for each replica (its torch threads unless "
                        "--threads)")
