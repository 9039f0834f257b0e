"""Long pairs, one at a time: qrank against transformers at document lengths up to 32k tokens.

    python benchmarks/long_pairs.py --model models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer --dtype float32 --output-json results/long.json

One pair per document length (``--lengths``, default 1k-32k tokens, k = 1024; a query of ~24
tokens), each engine in its own process (``vs_transformers.py``'s workers), a warm-up pair at
the shortest length first, then ``--rounds`` rounds over the lengths, the engines' order
alternating from length to length and round to round; medians over the rounds:
- ``qrank``: the offline engine, ``max_model_len`` raised to fit the longest pair, chunked
  prefill as it is by default (``--qrank-options`` for EngineArgs overrides);
- ``transformers``: ``AutoModelForCausalLM`` (SDPA) with ``logits_to_keep=1``, one pair a batch,
  the model card's template and score.
Both in ``--dtype`` (``auto``: what ``qrank serve --dtype auto`` picks on this CPU). It prints
the seconds, the achieved GFLOP/s (the work counted as ``vs_transformers.py``'s MFU counts it:
2 x non-embedding parameters per token plus causal attention, 2 x 2 x layers x heads x
head_dim x T(T+1)/2), qrank's rate at each length relative to its rate at the shortest, and the
largest score difference between the two.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path

from gemm_paths import model_shape
from vs_transformers import (
    Workload,
    model_flops,
    pair_lengths,
    resolved_dtype,
    run,
    start,
    stop,
)

from qrank.kernels import cpu_features

QUERY_TOKENS = 24
ENGINES = ("qrank", "transformers")


def parse_lengths(text: str) -> list[int]:
    """``1k,2k,512`` -> [1024, 2048, 512]."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(int(part[:-1]) * 1024 if part.endswith("k") else int(part))
    return out


def build_pairs(tokenizer_dir: str, lengths: list[int], seed: int) -> list[Workload]:
    """One (query, [document]) workload per document length, distinct texts."""
    from qrank.bench.datasets import RandomRerankDataset, load_tokenizer

    gen = RandomRerankDataset(load_tokenizer(tokenizer_dir), seed=seed)
    pairs = []
    for i, n in enumerate(lengths):
        query, _ = gen.text_of_length(QUERY_TOKENS, 1000 + 7919 * i, 0)
        doc, _ = gen.text_of_length(n, 50_000 + 104_729 * i, 1)
        pairs.append([(query, [doc])])
    return pairs


def attention_flops(model: str, n: int) -> float:
    """The causal attention part of :func:`vs_transformers.model_flops` for one pair."""
    shape = model_shape(model)
    return 2.0 * shape.num_heads * shape.head_dim * shape.num_layers * n * (n + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--lengths", default="1k,2k,4k,8k,16k,32k",
                   help="document lengths in tokens (k = 1024)")
    p.add_argument("--dtype", default="bfloat16",
                   choices=["bfloat16", "float32", "float16", "auto"])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--engines", default=",".join(ENGINES), help="qrank, transformers or both")
    p.add_argument("--qrank-options", default="{}", help="JSON EngineArgs overrides for qrank")
    p.add_argument("--output-json", default=None)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args()
    names = [e.strip() for e in ns.engines.split(",") if e.strip()]
    if not names or set(names) - set(ENGINES):
        p.error(f"--engines takes {' and '.join(ENGINES)}")
    dtype = resolved_dtype(ns.dtype)
    doc_lengths = parse_lengths(ns.lengths)
    pairs = build_pairs(ns.tokenizer or ns.model, doc_lengths, ns.seed)
    tokens = [pair_lengths(ns.model, w, max_length=10**7)[0] for w in pairs]
    flops = [model_flops(ns.model, [n]) for n in tokens]
    max_len = max(8192, *tokens)
    cpu = cpu_features.describe()
    print(f"machine: {os.cpu_count()} CPUs, {ns.threads} threads; CPU {cpu['model']} (family "
          f"{cpu['family']}, model {cpu['model_number']}; "
          f"{', '.join(f for f, has in cpu['flags'].items() if has) or 'no recorded flags'}); "
          f"model {ns.model}; dtype {dtype}; pairs of {', '.join(map(str, tokens))} tokens",
          flush=True)

    ctx = mp.get_context("spawn")
    setups = {
        "qrank": ("qrank", {"dtype": dtype, "max_model_len": max_len,
                            **json.loads(ns.qrank_options)}),
        "transformers": ("tuned", {"dtype": dtype, "batch_size": 1, "max_length": max_len}),
    }
    engines = {}
    times: dict[tuple[str, int], list[float]] = {}
    scores: dict[tuple[str, int], float] = {}
    try:
        for name in names:
            kind, options = setups[name]
            engines[name] = start(ctx, name, kind, ns.model, ns.threads, options)
            elapsed, _, _ = run(engines[name], pairs[0])
            print(f"{name}: warm-up pair of {tokens[0]} tokens {elapsed:.2f} s", flush=True)
        for r in range(ns.rounds):
            for i, pair in enumerate(pairs):
                order = names if (r + i) % 2 == 0 else names[::-1]
                for name in order:
                    elapsed, s, _ = run(engines[name], pair)
                    times.setdefault((name, i), []).append(elapsed)
                    scores[(name, i)] = s[0]
                    print(f"round {r + 1}, {tokens[i]} tokens, {name}: {elapsed:.2f} s "
                          f"({flops[i] / elapsed / 1e9:.0f} GFLOP/s)", flush=True)
    finally:
        for e in engines.values():
            stop(e)

    report(ns, names, doc_lengths, tokens, flops, times, scores, cpu, dtype,
           {n: e.info for n, e in engines.items()})
    return 0


def report(ns, names: list[str], doc_lengths: list[int], tokens: list[int], flops: list[float],
           times: dict[tuple[str, int], list[float]], scores: dict[tuple[str, int], float],
           cpu: dict, dtype: str, infos: dict[str, dict]) -> None:
    """Print the table (medians over the rounds) and write the JSON."""
    med = {key: statistics.median(ts) for key, ts in times.items()}
    first = names[0]
    base_rate = flops[0] / med[(first, 0)]
    print(f"\n=== one pair at a time, {dtype}, {ns.threads} threads, medians of {ns.rounds} "
          f"round(s); GFLOP/s counts matmuls and causal attention; rate/first: {first}'s "
          f"rate against its rate at {tokens[0]} tokens ===")
    header = f"{'document':>9}{'pair':>7}{'attn':>6}"
    for name in names:
        header += f"{name + ' s':>16}{'GFLOP/s':>9}"
    if len(names) == 2:
        header += f"{'x ' + names[1]:>17}{'max |Δ|':>10}"
    print(header + f"{'rate/first':>11}")
    rows = []
    for i, (doc, n) in enumerate(zip(doc_lengths, tokens, strict=True)):
        share = attention_flops(ns.model, n) / flops[i]
        row = {"doc_tokens": doc, "pair_tokens": n, "flops": flops[i],
               "attention_share": share, "engines": {}}
        line = f"{doc:>9}{n:>7}{share:>6.0%}"
        for name in names:
            t = med[(name, i)]
            row["engines"][name] = {"seconds": t, "gflops": flops[i] / t / 1e9,
                                    "runs": times[(name, i)], "score": scores[(name, i)]}
            line += f"{t:>16.2f}{flops[i] / t / 1e9:>9.1f}"
        if len(names) == 2:
            a, b = names
            row["speedup"] = med[(b, i)] / med[(a, i)]
            row["max_abs_diff"] = abs(scores[(a, i)] - scores[(b, i)])
            line += f"{row['speedup']:>17.2f}{row['max_abs_diff']:>10.1e}"
        row["rate_vs_first"] = flops[i] / med[(first, i)] / base_rate
        print(line + f"{row['rate_vs_first']:>11.2f}")
        rows.append(row)
    print("attn: causal attention's share of the FLOPs; x: how many times faster the first "
          "engine is")
    if ns.output_json:
        Path(ns.output_json).write_text(json.dumps(
            {"cpu": cpu, "dtype": dtype, "threads": ns.threads, "rounds": ns.rounds,
             "model": ns.model, "engines_info": infos, "lengths": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
