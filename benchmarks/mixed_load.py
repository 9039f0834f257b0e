"""Foreground latency under bulk load: ``--scheduling-policy fair`` against ``fcfs`` and an idle
server (issue 18).

    python benchmarks/mixed_load.py models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer --duration 60 --slo-ms 500

For each policy a fresh ``qrank serve MODEL --scheduling-policy P --score-cache-entries 0``
(plus ``--server-args``) is started. ``--background-clients`` clients send
``--background-docs``-document requests back to back while one foreground client sends
``--foreground-docs``-document requests one at a time, for ``--duration`` seconds; then every
request still open is cancelled (the server drops its pairs), so a phase lasts its duration. The
idle figure is the foreground client alone, on the first server, before any load. Texts are
random-rerank's (``--input-len`` tokens a pair); background and foreground have their own
queries. Prints, per scenario, the foreground's p50/p99 latency (a request still open at the end
counts with its time so far, a lower bound, and is shown as unfinished), its goodput and share
within ``--slo-ms``, and the tokens/s the server computed during the phase (the growth of its
``qrank_batch_tokens`` sum: prompt tokens as computed, a shared prefix once); ``--json`` writes
the same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from itertools import cycle

import httpx
import numpy as np

from qrank.bench.datasets import RandomRerankDataset, RerankRequest, load_tokenizer
from qrank.bench.serve import RequestOutput, Target, send_rerank


@dataclass
class Phase:
    """What one scenario measured."""

    scenario: str
    fg_requests: int
    fg_failed: int
    fg_unfinished: int
    fg_p50_ms: float
    fg_p99_ms: float
    fg_goodput_rps: float
    fg_within_slo: float
    bg_requests: int
    tokens_per_s: float
    fg_latencies_ms: list[float]  # finished, then still open (their time so far)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ns: argparse.Namespace, policy: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "qrank.cli", "serve", ns.model, "--port", str(port),
            "--scheduling-policy", policy, "--score-cache-entries", "0",
            *shlex.split(ns.server_args)]
    print(f"$ {shlex.join(argv[2:])}", flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ns.ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"qrank serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"qrank serve not ready after {ns.ready_timeout}s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def client_loop(client: httpx.AsyncClient, target: Target,
                      requests: list[RerankRequest], outputs: list[RequestOutput]) -> None:
    """Send ``requests`` (cycling) one at a time, each output appended as it ends; a request
    open when the loop is cancelled is appended unfinished, with its time so far."""
    for request in cycle(requests):
        task = asyncio.ensure_future(send_rerank(client, target, request))
        start = time.perf_counter()
        try:
            outputs.append(await asyncio.shield(task))
        except asyncio.CancelledError:
            task.cancel()
            outputs.append(RequestOutput(latency=time.perf_counter() - start,
                                         error="unfinished"))
            raise


def computed_tokens(url: str) -> float:
    """The server's ``qrank_batch_tokens`` sum: every token its batches computed."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return float(re.search(r"^qrank_batch_tokens_sum (\S+)$", text, flags=re.M).group(1))


async def run_phase(url: str, ns: argparse.Namespace, fg: list[RerankRequest],
                    bg: list[RerankRequest], clients: int
                    ) -> tuple[list[RequestOutput], list[RequestOutput], float, float]:
    """Foreground and ``clients`` background loops for ``ns.duration`` s: their outputs, the
    phase's seconds and the tokens the server computed in them."""
    target = Target(url + "/v1/rerank", url, ns.model, {})
    fg_out: list[RequestOutput] = []
    bg_out: list[RequestOutput] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600)) as client:
        tokens0 = await asyncio.to_thread(computed_tokens, url)
        start = time.monotonic()
        loops = [asyncio.create_task(client_loop(client, target, bg[i::clients], bg_out))
                 for i in range(clients)]
        if clients:
            await asyncio.sleep(ns.warmup)  # the queue fills before the foreground starts
        loops.append(asyncio.create_task(client_loop(client, target, fg, fg_out)))
        await asyncio.sleep(max(0.0, start + ns.duration - time.monotonic()))
        tokens = await asyncio.to_thread(computed_tokens, url) - tokens0
        seconds = time.monotonic() - start
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    return fg_out, bg_out, seconds, tokens


def summarize(scenario: str, fg: list[RequestOutput], bg: list[RequestOutput], seconds: float,
              tokens: float, slo_ms: float) -> Phase:
    ok = [o.latency * 1000 for o in fg if o.success]
    open_ = [o.latency * 1000 for o in fg if o.error == "unfinished"]
    lat = ok + open_ or [float("nan")]
    good = sum(ms <= slo_ms for ms in ok)
    return Phase(scenario, len(ok), len(fg) - len(ok) - len(open_), len(open_),
                 float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), good / seconds,
                 good / max(1, len(fg)), sum(o.success for o in bg), tokens / seconds,
                 ok + open_)


def report(phases: list[Phase], ns: argparse.Namespace) -> None:
    head = (f"{'scenario':<10} {'fg req':>7} {'open':>5} {'fg p50 ms':>10} {'fg p99 ms':>10} "
            f"{'goodput/s':>10} {'<=SLO %':>8} {'bg req':>7} {'tokens/s':>10}")
    print(f"\nforeground: {ns.foreground_docs} docs a request, one at a time; background: "
          f"{ns.background_clients} clients x {ns.background_docs} docs back to back; "
          f"SLO e2el <= {ns.slo_ms:g} ms; {ns.duration:g} s a phase")
    print(head)
    print("-" * len(head))
    for p in phases:
        print(f"{p.scenario:<10} {p.fg_requests:>7} {p.fg_unfinished:>5} {p.fg_p50_ms:>10.1f} "
              f"{p.fg_p99_ms:>10.1f} "
              f"{p.fg_goodput_rps:>10.2f} {100 * p.fg_within_slo:>8.1f} {p.bg_requests:>7} "
              f"{p.tokens_per_s:>10.0f}")
    by = {p.scenario: p for p in phases}
    if "idle" in by:
        for name in ("fair", "fcfs"):
            if name in by:
                print(f"{name}: foreground p50 x{by[name].fg_p50_ms / by['idle'].fg_p50_ms:.2f}, "
                      f"p99 x{by[name].fg_p99_ms / by['idle'].fg_p99_ms:.2f} of idle")
    if "fair" in by and "fcfs" in by:
        print(f"fair: total tokens/s x{by['fair'].tokens_per_s / by['fcfs'].tokens_per_s:.3f} "
              "of fcfs")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory or Hub id, as `qrank serve` takes it")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: model)")
    p.add_argument("--policies", default="fair,fcfs", help="comma-separated policies to run")
    p.add_argument("--background-clients", type=int, default=2)
    p.add_argument("--background-docs", type=int, default=500)
    p.add_argument("--foreground-docs", type=int, default=10)
    p.add_argument("--input-len", type=int, default=256, help="tokens of query + document")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of each phase")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of background load before the foreground starts")
    p.add_argument("--slo-ms", type=float, default=500.0, help="foreground e2el SLO")
    p.add_argument("--server-args", default="", help="more `qrank serve` flags, one string")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--json", default=None, help="write the figures here")
    ns = p.parse_args()
    tok = load_tokenizer(ns.tokenizer or ns.model)
    fg_n, bg_n = 64, max(2, 2 * ns.background_clients)
    fg = RandomRerankDataset(tok, seed=1).sample(fg_n * ns.foreground_docs, ns.input_len,
                                                 batch_size=ns.foreground_docs)
    bg = RandomRerankDataset(tok, seed=2).sample(bg_n * ns.background_docs, ns.input_len,
                                                 batch_size=ns.background_docs)
    phases = []
    for i, policy in enumerate(ns.policies.split(",")):
        proc, url = start_server(ns, policy.strip())
        try:
            if i == 0:
                fg_out, _, secs, tokens = asyncio.run(run_phase(url, ns, fg, bg, 0))
                phases.append(summarize("idle", fg_out, [], secs, tokens, ns.slo_ms))
            fg_out, bg_out, secs, tokens = asyncio.run(run_phase(url, ns, fg, bg,
                                                                 ns.background_clients))
            phases.append(summarize(policy.strip(), fg_out, bg_out, secs, tokens, ns.slo_ms))
        finally:
            stop_server(proc)
    report(phases, ns)
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(ns), "phases": [asdict(x) for x in phases]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
