"""``qrank bench serve`` against a live ``qrank serve`` (both real subprocesses, tiny model)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe import bench_command
from serving import ServerProcess, free_port

BLOCK_START = "============ Serving Benchmark Result ============"
ROW = re.compile(r"^(.{40}) (\S+)\s*$")
REQUIRED_KEYS = {
    "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
    "request_throughput", "total_token_throughput", "mean_e2el_ms", "median_e2el_ms",
    "std_e2el_ms", "p99_e2el_ms",
}


def qrank(*args: str, cwd: Path | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "qrank.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """``qrank serve`` on a free port; yields its port once /health answers 200."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    srv = ServerProcess.start(tiny_model, "--host", "127.0.0.1", "--dtype", "float32", log=log)
    try:
        yield srv.port
    finally:
        srv.terminate()


def bench_args(model: Path, tokenizer_dir: Path, port: int, *extra: str) -> list[str]:
    return ["bench", "serve", "--backend", "vllm-rerank", "--model", str(model),
            "--tokenizer", str(tokenizer_dir), "--dataset-name", "random-rerank",
            "--host", "127.0.0.1", "--port", str(port), "--endpoint", "/v1/rerank",
            "--random-input-len", "64", "--num-prompts", "20", *extra]


def result_block(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index(BLOCK_START)
    end = lines.index("=" * 50, start)
    return lines[start:end + 1]


def rows(block: list[str]) -> dict[str, str]:
    """``label: value`` rows of the block; every value starts in column 41 as in vLLM."""
    out = {}
    for line in block:
        m = ROW.match(line)
        if m:
            out[m.group(1).rstrip()] = m.group(2)
    return out


def test_bench_serve_against_qrank_serve(server, tiny_model, tokenizer_dir, tmp_path):
    proc = qrank(*bench_args(tiny_model, tokenizer_dir, server, "--save-result",
                             "--save-detailed", "--result-dir", str(tmp_path), "--metadata",
                             "run=test", "--plot", "--max-concurrency", "8"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20/20" in proc.stderr  # the progress bar ran to the end
    block = result_block(proc.stdout)
    assert block == [
        BLOCK_START,
        *block[1:8],
        "----------------End-to-end Latency----------------",
        *block[9:12],
        "=" * 50,
    ]
    r = rows(block)
    assert list(r) == [
        "Successful requests:", "Failed requests:", "Maximum request concurrency:",
        "Benchmark duration (s):", "Total input tokens:", "Request throughput (req/s):",
        "Total Token throughput (tok/s):", "Mean E2EL (ms):", "Median E2EL (ms):",
        "P99 E2EL (ms):"]
    assert (r["Successful requests:"], r["Failed requests:"]) == ("20", "0")
    assert r["Maximum request concurrency:"] == "8"
    for label in ("Benchmark duration (s):", "Request throughput (req/s):",
                  "Total Token throughput (tok/s):", "Mean E2EL (ms):", "Median E2EL (ms):",
                  "P99 E2EL (ms):"):
        assert re.fullmatch(r"\d+\.\d\d", r[label]), (label, r[label])
    total_input = int(r["Total input tokens:"])
    # each pair: 64 random tokens inside the reranker template, counted by the server
    assert 20 * 64 < total_input < 20 * 64 * 4
    assert float(r["Median E2EL (ms):"]) <= float(r["P99 E2EL (ms):"])

    (json_path,) = tmp_path.glob("vllm-rerank-infqps-concurrency8-*.json")
    assert re.fullmatch(r"vllm-rerank-infqps-concurrency8-[^-].*-\d{8}-\d{6}\.json",
                        json_path.name)
    result = json.loads(json_path.read_text())
    assert set(result) >= REQUIRED_KEYS
    assert {"input_lens", "errors", "run"} <= set(result)
    assert (result["completed"], result["failed"], result["num_prompts"]) == (20, 0, 20)
    assert result["backend"] == "vllm-rerank" and result["request_rate"] == "inf"
    assert result["model_id"] == str(tiny_model) and result["run"] == "test"
    assert result["tokenizer_id"] == str(tokenizer_dir) and result["max_concurrency"] == 8
    assert result["total_input_tokens"] == sum(result["input_lens"]) == total_input
    assert result["errors"] == [""] * 20
    assert f"{result['mean_e2el_ms']:.2f}" == r["Mean E2EL (ms):"]
    assert f"{result['request_throughput']:.2f}" == r["Request throughput (req/s):"]
    png = json_path.with_suffix(".e2el.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_recipes_bench_command_runs_with_qrank(server, tiny_model, tokenizer_dir,
                                                   tmp_path):
    argv = shlex.split(bench_command())
    assert argv[:3] == ["vllm", "bench", "serve"]
    adapted = {"--model": str(tiny_model), "--tokenizer": str(tokenizer_dir),
               "--host": "127.0.0.1", "--port": str(server)}
    args = argv[1:]
    for i in range(1, len(args)):
        if args[i - 1] in adapted:
            args[i] = adapted[args[i - 1]]
    # the recipe's other flags stay as they are (--random-input 200, --result-dir ./ ...);
    # fewer prompts than its default 1000 keep the test short
    proc = qrank(*args, "--num-prompts", "20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = rows(result_block(proc.stdout))
    assert (r["Successful requests:"], r["Failed requests:"]) == ("20", "0")
    assert int(r["Total input tokens:"]) > 20 * 200
    (saved,) = tmp_path.glob("vllm-rerank-infqps-*.json")  # --save-result --result-dir ./
    assert json.loads(saved.read_text())["completed"] == 20


def test_wrong_endpoint_requests_are_counted_as_failed(server, tiny_model, tokenizer_dir,
                                                       tmp_path):
    proc = qrank(*bench_args(tiny_model, tokenizer_dir, server, "--endpoint",
                             "/v1/missing/rerank", "--ready-check-timeout-sec", "0",
                             "--save-result", "--save-detailed", "--result-filename",
                             "failed.json", "--result-dir", str(tmp_path)))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing succeeded
    r = rows(result_block(proc.stdout))
    assert (r["Successful requests:"], r["Failed requests:"]) == ("0", "20")
    assert "Error 0: 404" in proc.stdout
    result = json.loads((tmp_path / "failed.json").read_text())
    assert (result["completed"], result["failed"]) == (0, 20)
    assert all(e.startswith("404 Not Found") for e in result["errors"])


def test_the_ready_check_refuses_a_server_that_rejects_the_request(server, tiny_model,
                                                                   tokenizer_dir):
    proc = qrank(*bench_args(tiny_model, tokenizer_dir, server, "--served-model-name",
                             "no-such-model"), timeout=60)
    assert proc.returncode == 1
    assert "Initial test run failed" in proc.stderr and "4" in proc.stderr
    assert BLOCK_START not in proc.stdout


def test_nothing_listening(tiny_model, tokenizer_dir):
    port = str(free_port())
    base = bench_args(tiny_model, tokenizer_dir, int(port), "--disable-tqdm")
    counted = qrank(*base, "--ready-check-timeout-sec", "0")
    assert counted.returncode == 1
    r = rows(result_block(counted.stdout))
    assert (r["Successful requests:"], r["Failed requests:"]) == ("0", "20")
    assert "ConnectError" in counted.stdout
    started = time.monotonic()
    waited = qrank(*base, "--ready-check-timeout-sec", "1")
    assert waited.returncode == 1 and "Initial test run failed" in waited.stderr
    assert time.monotonic() - started < 30


def test_custom_rerank_with_goodput_against_qrank_serve(server, tiny_model, tokenizer_dir,
                                                        tmp_path, capsys):
    from qrank.bench.serve import main
    from qrank.cli import build_parser

    path = tmp_path / "mix.jsonl"
    mix = [{"query": f"question {i}", "documents": [f"answer {i}-{j}" for j in range(n)]}
           for i, n in enumerate([3, 40, 3, 3, 40, 3])]
    path.write_text("".join(json.dumps(x) + "\n" for x in mix))
    ns = build_parser().parse_args([
        "bench", "serve", "--model", str(tiny_model), "--tokenizer", str(tokenizer_dir),
        "--port", str(server), "--dataset-name", "custom-rerank", "--dataset-path", str(path),
        "--goodput", "e2el:60000", "--max-concurrency", "2", "--disable-tqdm",
        "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"])
    assert main(ns) == 0
    r = rows(result_block(capsys.readouterr().out))
    assert (r["Successful requests:"], r["Failed requests:"]) == ("6", "0")
    assert r["Requests within the SLO (%):"] == "100.00"
    assert r["Request goodput (req/s):"] == r["Request throughput (req/s):"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["slo_attainment"] == 1.0 and result["goodput_slo_ms"] == {"e2el": 60000.0}
    assert result["request_goodput"] == result["request_throughput"]
