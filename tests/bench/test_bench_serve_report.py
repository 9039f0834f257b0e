"""``qrank bench serve`` pieces that need no server: metrics, the report's layout (checked
against the block in the users' recipe), arrivals, result file names and JSON keys."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from recipe import code_blocks

from qrank.bench.datasets import RerankRequest
from qrank.bench.serve import (
    RequestOutput,
    arrival_offsets,
    build_result,
    calculate_metrics,
    describe_http_error,
    report_lines,
    rerank_payload,
    result_filename,
    target_from_namespace,
)
from qrank.cli import build_parser

LABEL = re.compile(r"^(.*?:)\s+(\S+)\s*$")


def recipe_block() -> list[str]:
    """The recipe's ``Serving Benchmark Result`` block, line by line."""
    block = next(b for b in code_blocks("## Performance", "bash") if "Benchmark Result" in b)
    return block.strip().splitlines()


def parse_args(*extra: str):
    return build_parser().parse_args(["bench", "serve", "--model", "org/My-Model", *extra])


def outputs_mixed() -> list[RequestOutput]:
    ok = [RequestOutput(success=True, latency=s, prompt_len=n)
          for s, n in [(0.1, 100), (0.2, 110), (0.3, 120), (0.4, 130)]]
    return [*ok, RequestOutput(error="500 Internal Server Error: boom")]


def test_metrics_count_failures_and_use_only_successes():
    m = calculate_metrics(outputs_mixed(), duration=2.0, percentiles=[50, 99])
    assert (m.completed, m.failed, m.total_input) == (4, 1, 460)
    assert m.request_throughput == pytest.approx(2.0)
    assert m.total_token_throughput == pytest.approx(230.0)
    assert m.mean_e2el_ms == pytest.approx(250.0)
    assert m.median_e2el_ms == pytest.approx(250.0)
    assert m.std_e2el_ms == pytest.approx(float(np.std([100, 200, 300, 400])))
    assert m.percentiles_e2el_ms == [(50, pytest.approx(250.0)),
                                     (99, pytest.approx(float(np.percentile(
                                         [100, 200, 300, 400], 99))))]


def test_all_failed_gives_zeros_not_a_crash():
    m = calculate_metrics([RequestOutput(error="x")] * 3, duration=1.0, percentiles=[99])
    assert (m.completed, m.failed, m.mean_e2el_ms, m.percentiles_e2el_ms) == (0, 3, 0.0,
                                                                             [(99, 0.0)])


def test_report_has_the_recipe_layout_line_by_line():
    expected = recipe_block()
    m = calculate_metrics(outputs_mixed(), duration=2.0, percentiles=[99])
    ours = report_lines(m, max_concurrency=None, request_rate=float("inf"),
                        selected_metrics=["e2el"])
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected, strict=True):
        if theirs.startswith(("=", "-")):  # rules and section headers: identical
            assert mine == theirs
            continue
        label_mine, value_mine = LABEL.match(mine).groups()
        label_theirs, value_theirs = LABEL.match(theirs).groups()
        assert label_mine == label_theirs
        # the value starts in the same column, padded as vLLM pads it ({:<40} {:<10})
        assert mine.index(value_mine) == theirs.index(value_theirs) == 41
        assert len(mine) >= 51
        assert ("." in value_mine) == ("." in value_theirs)  # floats with 2 decimals
    assert ours[1].split()[-1] == "4" and ours[2].split()[-1] == "1"


def test_concurrency_and_rate_lines_appear_where_vllm_prints_them():
    m = calculate_metrics(outputs_mixed(), duration=2.0, percentiles=[25, 99.9])
    lines = report_lines(m, max_concurrency=8, request_rate=5.0, selected_metrics=["e2el"])
    labels = [LABEL.match(x).group(1) for x in lines if LABEL.match(x)]
    assert labels[:5] == ["Successful requests:", "Failed requests:",
                          "Maximum request concurrency:", "Request rate configured (RPS):",
                          "Benchmark duration (s):"]
    assert "Request rate configured (RPS):           5.00      " in lines
    assert labels[-4:] == ["Mean E2EL (ms):", "Median E2EL (ms):", "P25 E2EL (ms):",
                           "P99.9 E2EL (ms):"]
    no_latency = report_lines(m, None, float("inf"), selected_metrics=["ttft"])
    assert not any("E2EL" in x for x in no_latency)


def test_arrivals_all_at_once_for_infinite_rate():
    assert arrival_offsets(5, float("inf"), 1.0, seed=0) == [0.0] * 5


def test_poisson_arrivals_span_n_over_rate_and_are_reproducible():
    a = arrival_offsets(50, 10.0, 1.0, seed=0)
    assert a == arrival_offsets(50, 10.0, 1.0, seed=0)
    assert a != arrival_offsets(50, 10.0, 1.0, seed=1)
    assert all(x <= y for x, y in zip(a, a[1:], strict=False))
    assert a[-1] == pytest.approx(5.0)
    gaps = np.diff(a)
    assert gaps.std() > 0.02  # random, not evenly spaced


def test_constant_arrivals_for_infinite_burstiness():
    a = arrival_offsets(4, 2.0, math.inf, seed=0)
    assert a == pytest.approx([0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize("rate,burst", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_bad_rate_or_burstiness_refused(rate, burst):
    with pytest.raises(ValueError):
        arrival_offsets(3, rate, burst, seed=0)


def test_result_filename_as_vllm_composes_it(tmp_path):
    ns = parse_args("--max-concurrency", "4", "--request-rate", "10",
                    "--result-dir", str(tmp_path / "out"))
    name = result_filename(ns, "20250101-120000")
    assert name == str(tmp_path / "out" / "vllm-rerank-10.0qps-concurrency4-My-Model-"
                       "20250101-120000.json")
    assert (tmp_path / "out").is_dir()
    assert result_filename(parse_args(), "D") == "vllm-rerank-infqps-My-Model-D.json"
    assert result_filename(parse_args("--result-filename", "x.json"), "D") == "x.json"


def test_result_json_keys_and_detailed_lists():
    m = calculate_metrics(outputs_mixed(), 2.0, [99])
    plain = build_result(parse_args("--metadata", "gpu=none", "run=1"), m, outputs_mixed(),
                         ["e2el"], "D")
    assert list(plain) == [
        "date", "endpoint_type", "backend", "model_id", "tokenizer_id", "num_prompts", "gpu",
        "run", "request_rate", "burstiness", "max_concurrency", "duration", "completed",
        "failed", "total_input_tokens", "request_throughput", "request_goodput",
        "total_token_throughput",
        "mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p99_e2el_ms"]
    assert plain["request_rate"] == "inf" and plain["tokenizer_id"] == "org/My-Model"
    detailed = build_result(parse_args("--save-detailed", "--tokenizer", "tok"), m,
                            outputs_mixed(), ["e2el"], "D")
    assert detailed["input_lens"] == [100, 110, 120, 130, 0]
    assert detailed["errors"] == ["", "", "", "", "500 Internal Server Error: boom"]
    assert detailed["tokenizer_id"] == "tok"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        build_result(parse_args("--metadata", "novalue"), m, [], ["e2el"], "D")


def test_payload_is_the_vllm_rerank_backends():
    req = RerankRequest("q", ["a", "b"], 10, "0")
    assert rerank_payload("m", req) == {"model": "m", "query": "q", "documents": ["a", "b"],
                                        "truncate_prompt_tokens": -1}


def test_target_url_model_and_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("QRANK_API_KEY", "from-env")
    t = target_from_namespace(parse_args("--port", "9000"))
    assert t.api_url == "http://127.0.0.1:9000/v1/rerank" and t.model == "org/My-Model"
    assert t.headers == {"Authorization": "Bearer from-env"}
    t = target_from_namespace(parse_args("--base-url", "http://h:1/", "--endpoint", "/rerank",
                                         "--served-model-name", "s", "--api-key", "k"))
    assert (t.api_url, t.model, t.headers["Authorization"]) == ("http://h:1/rerank", "s",
                                                               "Bearer k")
    with pytest.raises(ValueError, match="rerank"):
        target_from_namespace(parse_args("--endpoint", "/v1/completions"))


def test_http_errors_keep_the_servers_message():
    body = b'{"error": {"message": "bad model", "type": "NotFoundError", "code": 404}}'
    assert describe_http_error(404, "Not Found", body) == "404 Not Found: bad model"
    assert describe_http_error(502, "Bad Gateway", b"upstream down") == \
        "502 Bad Gateway: upstream down"
    assert describe_http_error(500, "Internal Server Error", b"") == "500 Internal Server Error"


# ---- --goodput ----------------------------------------------------------------------------
def test_goodput_counts_successes_within_the_slo():
    m = calculate_metrics(outputs_mixed(), duration=2.0, percentiles=[99],
                          goodput={"e2el": 250.0})
    # 0.1 s and 0.2 s meet 250 ms; 0.3 s, 0.4 s and the failure do not
    assert m.request_goodput == pytest.approx(1.0)
    assert m.slo_attainment == pytest.approx(2 / 5)
    plain = calculate_metrics(outputs_mixed(), duration=2.0, percentiles=[99])
    assert plain.request_goodput is None and plain.slo_attainment is None


def test_goodput_lines_follow_the_request_throughput_as_vllm_prints_them():
    m = calculate_metrics(outputs_mixed(), 2.0, [99], goodput={"e2el": 250.0})
    lines = report_lines(m, None, float("inf"), ["e2el"])
    labels = [LABEL.match(x).group(1) for x in lines if LABEL.match(x)]
    i = labels.index("Request throughput (req/s):")
    assert labels[i + 1:i + 4] == ["Request goodput (req/s):", "Requests within the SLO (%):",
                                   "Total Token throughput (tok/s):"]
    assert "Requests within the SLO (%):             40.00     " in lines
    ns = parse_args("--goodput", "e2el:250")
    assert ns.goodput == [("e2el", 250.0)]
    result = build_result(ns, m, outputs_mixed(), ["e2el"], "D")
    assert result["request_goodput"] == pytest.approx(1.0)
    assert result["goodput_slo_ms"] == {"e2el": 250.0}
    assert result["slo_attainment"] == pytest.approx(0.4)


@pytest.mark.parametrize("value", ["e2el", "e2el:-1", "e2el:fast", "latency:100"])
def test_bad_goodput_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        parse_args("--goodput", value)
    assert "--goodput" in capsys.readouterr().err


def test_goodput_of_a_streamed_metric_does_not_apply_to_rerank():
    from qrank.bench.serve import check_arguments

    with pytest.raises(ValueError, match="e2el:MS only"):
        check_arguments(parse_args("--goodput", "ttft:100"))
