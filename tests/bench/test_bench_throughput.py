"""``qrank bench throughput``: the offline engine on the random-rerank workload."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from qrank.bench.datasets import RandomRerankDataset
from qrank.config import EngineArgs
from qrank.engine.engine import Engine


def test_bench_throughput_reports_pairs_and_tokens(tiny_model, tmp_path):
    out_json = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, "-m", "qrank.cli", "bench", "throughput", str(tiny_model),
         "--dataset-name", "random-rerank", "--random-input-len", "64", "--num-prompts", "20",
         "--random-batch-size", "4", "--seed", "3", "--dtype", "float32",
         "--output-json", str(out_json)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"^Throughput: (\d+\.\d\d) requests/s, (\d+\.\d\d) pairs/s, "
                  r"(\d+\.\d\d) total tokens/s$", proc.stdout, flags=re.M)
    assert m, proc.stdout
    result = json.loads(out_json.read_text())
    assert (result["num_requests"], result["num_pairs"]) == (5, 20)
    assert f"{result['pairs_per_second']:.2f}" == m.group(2)
    assert result["pairs_per_second"] == result["num_pairs"] / result["elapsed_time"]
    assert result["tokens_per_second"] == result["total_num_tokens"] / result["elapsed_time"]
    assert f"Total num prompt tokens:  {result['total_num_tokens']}" in proc.stdout

    # the tokens counted are the engine's own, template included, for the same dataset
    engine = Engine(EngineArgs(model=str(tiny_model), dtype="float32"))
    requests = RandomRerankDataset(engine.tokenizer.tokenizer, seed=3).sample(
        20, input_len=64, batch_size=4)
    expected = sum(len(p) for r in requests for p in engine.encode(r.query, r.documents))
    engine.close()
    assert result["total_num_tokens"] == expected > 20 * 64
