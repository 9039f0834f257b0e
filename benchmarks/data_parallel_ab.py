"""One engine process with N threads against N engine processes with one thread each.

    python benchmarks/data_parallel_ab.py --model models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer --workload b --pairs 60 --rounds 3

The measurement behind ``EngineArgs.data_parallel_size`` (engine copies in worker processes),
outside the engine: the pairs of a ``vs_transformers.py`` workload are dealt round-robin to the
workers, each a process with its own model copy, one torch thread and its own batches; the wall
time counts from the start signal to the last worker's end. The two set-ups alternate round by
round, each in fresh processes; each runs the workload once untimed after loading, then
``--runs`` timed passes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

from vs_transformers import QrankRunner, build_workloads


def worker(model: str, tokenizer: str, workload: str, pairs: int, part: int, parts: int,
           threads: int, go, done) -> None:
    """Load an engine, score this worker's share once untimed, then once per start signal."""
    share = build_workloads(tokenizer, pairs, pairs, 0)[workload][part::parts]
    runner = QrankRunner(model, threads)
    runner.run(share)
    done.put(0.0)
    while go.get():
        start = time.perf_counter()
        runner.run(share)
        done.put(time.perf_counter() - start)


def wall_times(ns: argparse.Namespace, parts: int, threads: int) -> list[float]:
    """Wall seconds of ``ns.runs`` timed passes of ``parts`` workers with ``threads`` each."""
    ctx = mp.get_context("spawn")
    goes = [ctx.Queue() for _ in range(parts)]
    done = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(ns.model, ns.tokenizer, ns.workload, ns.pairs,
                                              i, parts, threads, goes[i], done))
             for i in range(parts)]
    for p in procs:
        p.start()
    for _ in procs:  # every worker loaded and warm
        done.get()
    walls = []
    for _ in range(ns.runs):
        start = time.perf_counter()
        for g in goes:
            g.put(True)
        for _ in procs:
            done.get()
        walls.append(time.perf_counter() - start)
    for g in goes:
        g.put(False)
    for p in procs:
        p.join()
    return walls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--workload", choices=["a", "b"], default="b")
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3, help="timed passes per round and set-up")
    ns = p.parse_args()
    n = ns.workers
    setups = {f"1 process x {n} threads": (1, n), f"{n} processes x 1 thread": (n, 1)}
    medians: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(ns.rounds):
        for name, (parts, threads) in setups.items():
            walls = wall_times(ns, parts, threads)
            medians[name].append(statistics.median(walls))
            print(f"round {r + 1} {name}: " + ", ".join(f"{w:.2f}" for w in walls) + " s",
                  flush=True)
    base = statistics.median(medians[f"1 process x {n} threads"])
    for name, ms in medians.items():
        m = statistics.median(ms)
        print(f"{name:<24} median {m:.2f} s  x{base / m:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
