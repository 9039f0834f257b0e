"""Where qrank's time goes on one of ``vs_transformers.py``'s workloads (torch profiler).

    python benchmarks/profile_workload.py --model models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer --workload b --pairs 40

Runs the workload once to warm up (and compile), then once under the profiler, and prints the
operators by their own CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from torch.profiler import ProfilerActivity, profile
from vs_transformers import QrankRunner, build_workloads


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--workload", choices=["a", "b"], default="b")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rows", type=int, default=15, help="operators to print")
    ns = p.parse_args()
    workload = build_workloads(ns.tokenizer or ns.model, ns.pairs, ns.pairs, 0)[ns.workload]
    runner = QrankRunner(ns.model, ns.threads)
    runner.run(workload)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        runner.run(workload)
        elapsed = time.perf_counter() - start
    print(f"workload {ns.workload}, {ns.pairs} pairs: {elapsed:.2f} s under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ns.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
