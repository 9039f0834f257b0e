"""Ray Serve replicas against one engine, on this machine (docs/deployment.md, "On Ray").

    python benchmarks/ray_serve_ab.py MODEL [--out ray_serve_ab.json]

Starts, one after the other: `qrank serve MODEL --threads 2` (plain), the same app on Ray with
1 replica of 2 threads, and with 2 replicas of 1 thread (affinity routing, then Ray Serve's
power-of-two). On each: `qrank bench serve` random-rerank (one query, many documents),
distinct queries (every request its own query), repeated queries (each query sent 6 times
with other documents, shuffled: prefix-cache hits per request) and 1-document requests one at
a time (latency: the Ray ingress's added cost per request is the difference with plain;
GET /version, which no engine answers, splits it into the HTTP proxy's and the replica hop's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import ServerProcess  # noqa: E402

WORDS = ["river", "capital", "planet", "ocean", "engine", "protein", "market", "winter",
         "music", "theory", "language", "history", "garden", "energy", "silver", "network"]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


async def send(url: str, requests: list[dict], concurrency: int) -> float:
    """Seconds to send every request with ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def one(r: dict) -> None:
            async with sem:
                (await c.post("/v1/rerank", json=r)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*[one(r) for r in requests])
        return time.perf_counter() - start


def metric(url: str, name: str) -> float:
    body = httpx.get(url + "/metrics", timeout=30).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", body, flags=re.M)
    return float(m.group(1)) if m else 0.0


def bench_serve(model: str, port: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "qrank.cli", "bench", "serve", "--model", model,
                        "--tokenizer", model, "--dataset-name", "random-rerank",
                        "--random-input-len", "256", "--random-batch-size", "16",
                        "--num-prompts", "640", "--max-concurrency", "4", "--port", str(port),
                        "--disable-tqdm", "--save-result", "--result-dir", tmp,
                        "--result-filename", "r.json"], check=True, capture_output=True)
        r = json.loads((Path(tmp) / "r.json").read_text())
    out = {k: r[k] for k in r if k in ("duration", "completed", "failed", "mean_e2el_ms")}
    out["pairs_per_s"] = 640 / r["duration"]
    return out


def run(model: str, label: str, args: list[str]) -> dict:
    rng = random.Random(0)
    srv = ServerProcess.start(model, "--served-model-name", model, *args, timeout=600)
    try:
        url = srv.url
        out: dict = {"config": label}
        out["random_rerank"] = bench_serve(model, srv.port)
        distinct = [{"query": text(rng, 12) + f" {i}", "documents": [text(rng, 60)
                                                                      for _ in range(8)]}
                    for i in range(48)]
        secs = asyncio.run(send(url, distinct, 4))
        out["distinct_queries_pairs_per_s"] = 48 * 8 / secs
        queries = [text(rng, 40) + f" {q}" for q in range(16)]
        repeated = [{"query": q, "documents": [text(rng, 30) for _ in range(4)]}
                    for q in queries for _ in range(6)]
        rng.shuffle(repeated)
        before = metric(url, "qrank_prefix_cache_hits")
        asyncio.run(send(url, repeated, 4))
        out["prefix_hits_per_repeated_request"] = (metric(url, "qrank_prefix_cache_hits")
                                                   - before) / len(repeated)
        one = {"query": "latency", "documents": ["one short document"]}
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(5):
                c.post("/v1/rerank", json=one)
            lat = []
            for i in range(40):
                start = time.perf_counter()
                c.post("/v1/rerank", json={**one, "query": f"latency {i}"}).raise_for_status()
                lat.append(time.perf_counter() - start)
            ver = []
            for _ in range(40):
                start = time.perf_counter()
                c.get("/version").raise_for_status()
                ver.append(time.perf_counter() - start)
        lat.sort()
        ver.sort()
        out["one_doc_latency_ms_median"] = 1000 * lat[len(lat) // 2]
        out["version_latency_ms_median"] = 1000 * ver[len(ver) // 2]  # HTTP path, no engine
        return out
    finally:
        srv.terminate(120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", default="ray_serve_ab.json")
    a = p.parse_args()
    ray = ["--data-parallel-backend", "ray"]
    configs = [
        ("plain, 1 engine x 2 threads", ["--threads", "2"]),
        ("ray, 1 replica x 2 threads", [*ray, "--threads", "2", "--num-cpus-per-replica", "1"]),
        ("ray, 2 replicas x 1 thread, affinity", [*ray, "-dp", "2", "--threads", "1"]),
        ("ray, 2 replicas x 1 thread, power-of-two",
         [*ray, "-dp", "2", "--threads", "1", "--ray-routing", "power-of-two"]),
    ]
    results = []
    for label, args in configs:
        results.append(run(a.model, label, args))
        print(json.dumps(results[-1]), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
