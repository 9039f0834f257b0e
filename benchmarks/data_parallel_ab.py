"""qrank's offline engine with N threads against ``data_parallel_size=N`` (N one-thread copies).

    python benchmarks/data_parallel_ab.py --model models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer --workload b --pairs 60 --rounds 3

Scores a ``vs_transformers.py`` workload with both set-ups, alternating round by round, each in a
fresh process: one untimed pass after loading, then ``--runs`` timed passes (prefix cache emptied
before each, in the calling engine). Prints each round's times and the medians' ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

from vs_transformers import QrankRunner, build_workloads


def measure(ns: argparse.Namespace, data_parallel_size: int, out) -> None:
    """Seconds of ``ns.runs`` timed passes of the workload, put on ``out``."""
    workload = build_workloads(ns.tokenizer, ns.pairs, ns.pairs, 0)[ns.workload]
    runner = QrankRunner(ns.model, ns.threads, data_parallel_size=data_parallel_size)
    runner.run(workload)
    times = []
    for _ in range(ns.runs):
        start = time.perf_counter()
        runner.run(workload)
        times.append(time.perf_counter() - start)
    runner.engine.close()
    out.put(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--workload", choices=["a", "b"], default="b")
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3, help="timed passes per round and set-up")
    ns = p.parse_args()
    ctx = mp.get_context("spawn")  # not a daemon: the engine starts its own workers
    setups = {f"{ns.threads} threads": 1,
              f"data_parallel_size={ns.threads}": ns.threads}
    medians: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(ns.rounds):
        for name, dp in setups.items():
            out = ctx.Queue()
            proc = ctx.Process(target=measure, args=(ns, dp, out))
            proc.start()
            times = out.get()
            proc.join()
            medians[name].append(statistics.median(times))
            print(f"round {r + 1} {name}: " + ", ".join(f"{t:.2f}" for t in times) + " s",
                  flush=True)
    base = statistics.median(medians[f"{ns.threads} threads"])
    for name, ms in medians.items():
        m = statistics.median(ms)
        print(f"{name:<24} median {m:.2f} s  x{base / m:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
