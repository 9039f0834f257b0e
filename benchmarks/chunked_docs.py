"""Long documents in windows against the same tokens sent as ordinary documents.

    python benchmarks/chunked_docs.py --model models/qwen3-reranker-0.6b \\
        --num-docs 20 --doc-tokens 30000 --dtype float32 --output-json chunked.json

``--num-docs`` documents of ``--doc-tokens`` tokens each (one-token words, so the count is
exact) against one query, scored twice on the offline engine: *chunked*, each document split
into windows (``max_chunks_per_doc``), and *plain*, every window's text ``document[start:end]``
sent as a document of its own. Both compute exactly the same token ids (a window is scored as
its text sent alone), so tokens/s should match: windows share the query's prefix as a query's
documents do. Each timed pass tokenizes and scores, the prefix cache emptied first; passes
alternate between the two set-ups, after one untimed pass of each. Prints the medians' tokens/s
and their ratio; ``--output-json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

QUERY = "Which clause of the agreement covers termination for convenience?"


def one_token_words(tokenizer, n: int = 400, seed: int = 0) -> list[str]:
    """Lower-case ASCII words that encode to one token with their leading space."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    words = sorted(t[1:] for t in vocab
                   if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha()
                   and t[1:].islower() and 3 <= len(t) - 1 <= 8)
    random.Random(seed).shuffle(words)
    return [w for w in words[: n * 2] if len(tokenizer.encode(" " + w).ids) == 1][:n]


def make_documents(tokenizer, num_docs: int, doc_tokens: int, seed: int) -> list[str]:
    words = one_token_words(tokenizer, seed=seed)
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(doc_tokens)) for _ in range(num_docs)]


def timed(engine, encode) -> tuple[float, float, int]:
    """(seconds tokenizing, seconds in all, tokens) of one pass; the prefix cache emptied."""
    engine.prefix_cache.clear()
    start = time.perf_counter()
    pairs = encode()
    tokenized = time.perf_counter()
    engine.score_tokens(pairs, use_tqdm=False)
    return tokenized - start, time.perf_counter() - start, sum(len(p) for p in pairs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    p.add_argument("--num-docs", type=int, default=20)
    p.add_argument("--doc-tokens", type=int, default=30_000)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-model-len", type=int, default=None,
                   help="the window size: tokens of a pair, query and template included")
    p.add_argument("--chunk-overlap-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="timed passes of each set-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default=None)
    ns = p.parse_args()

    from qrank import Reranker
    from qrank.windows import flatten

    reranker = Reranker(ns.model, dtype=ns.dtype, threads=ns.threads,
                        max_model_len=ns.max_model_len)
    engine = reranker.engine
    docs = make_documents(engine.tokenizer.tokenizer, ns.num_docs, ns.doc_tokens, ns.seed)
    big = ns.doc_tokens  # never the cap: every window is scored

    def chunked():
        return flatten(engine.encode_docs(QUERY, docs, max_chunks=big,
                                          overlap=ns.chunk_overlap_tokens))

    windows = engine.encode_docs(QUERY, docs, max_chunks=big, overlap=ns.chunk_overlap_tokens)
    texts = [d[s:e] for d, w in zip(docs, windows, strict=True) for s, e in w.spans or [(0, None)]]

    def plain():
        return engine.encode(QUERY, texts)

    if [p.ids for p in chunked()] != [p.ids for p in plain()]:
        raise RuntimeError("the windows and their texts sent alone gave different ids")
    setups = {"chunked": chunked, "plain": plain}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in setups}
    for encode in setups.values():  # untimed: warm-up
        timed(engine, encode)
    for r in range(ns.runs):
        for name, encode in (setups.items() if r % 2 == 0 else reversed(setups.items())):
            runs[name].append(timed(engine, encode))
            tok_s, total_s, tokens = runs[name][-1]
            print(f"run {r + 1} {name:<8} {total_s:8.2f} s ({tok_s:.2f} s tokenizing), "
                  f"{tokens / total_s:10.1f} tokens/s", flush=True)
    result = {
        "model": ns.model, "dtype": str(engine.trunk.dtype).removeprefix("torch."),
        "threads": ns.threads, "num_docs": ns.num_docs, "doc_tokens": ns.doc_tokens,
        "max_model_len": engine.max_model_len, "chunk_overlap_tokens": ns.chunk_overlap_tokens,
        "windows": len(texts), "tokens": runs["chunked"][0][2],
    }
    for name, rs in runs.items():
        seconds = statistics.median(t for _, t, _ in rs)
        result[name] = {"seconds": seconds,
                        "tokenize_seconds": statistics.median(t for t, _, _ in rs),
                        "tokens_per_second": rs[0][2] / seconds}
    result["ratio"] = result["chunked"]["tokens_per_second"] / result["plain"]["tokens_per_second"]
    print(f"{result['windows']} windows, {result['tokens']} tokens: chunked "
          f"{result['chunked']['tokens_per_second']:.1f} tokens/s, plain "
          f"{result['plain']['tokens_per_second']:.1f} tokens/s, ratio {result['ratio']:.3f}")
    if ns.output_json:
        with open(ns.output_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    reranker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
