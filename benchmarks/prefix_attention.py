"""Documents over a prefix: the mask-free attention (prefix unmasked + document causal, merged
by log-sum-exp) against SDPA under one boolean mask, at Qwen3-Reranker-0.6B's heads (16 query,
8 kv, head_dim 128), one document at a time, float32 by default.

    PYTHONPATH=src python benchmarks/prefix_attention.py [--dtype bfloat16] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch
import torch.nn.functional as F

from qrank.models.attention import prefix_causal_attention

CASES = [(48, 1024), (48, 4096), (12288, 3072)]  # (prefix, document) tokens


def masked(q, k, v, pk, pv):
    p, n = pk.shape[1], q.shape[2]
    keys = torch.cat((pk[None], k), dim=2)
    values = torch.cat((pv[None], v), dim=2)
    mask = torch.ones(n, p + n, dtype=torch.bool).tril(diagonal=p)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


def best_of(fn, args: tuple, rounds: int) -> float:
    fn(*args)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{a.dtype}")
    print(f"{'prefix':>7} {'doc':>6} {'mask s':>8} {'mask-free s':>12} {'speed-up':>9}")
    g = torch.Generator().manual_seed(0)
    for p, n in CASES:
        q = torch.randn(1, 16, n, 128, generator=g).to(dtype)
        k, v = (torch.randn(1, 8, n, 128, generator=g).to(dtype) for _ in range(2))
        pk, pv = (torch.randn(8, p, 128, generator=g).to(dtype) for _ in range(2))
        t_mask = best_of(masked, (q, k, v, pk, pv), a.rounds)
        t_free = best_of(prefix_causal_attention, (q, k, v, pk, pv), a.rounds)
        print(f"{p:>7} {n:>6} {t_mask:>8.3f} {t_free:>12.3f} {t_mask / t_free:>8.2f}x")


if __name__ == "__main__":
    main()
