"""The OpenVINO row of benchmarks/vs_transformers.py: the Gather of the last position inserted
before lm_head keeps that position's logits exactly (skipped where openvino is not installed:
it is a benchmark's dependency, not qrank's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed (benchmark only)")
from openvino import opset13 as ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from openvino_export import last_position_logits  # noqa: E402


def lm_graph(hidden: int, vocab: int, seed: int = 0) -> ov.Model:
    """A final norm's scaling and lm_head ([vocab, hidden], transpose_b) as optimum exports
    them, over hidden states [batch, seq, hidden]; one output, ``logits``."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, -1, hidden], np.float32, name="hidden")
    scaled = ops.multiply(x, ops.constant(rng.standard_normal((1, 1, hidden), np.float32)))
    weight = ops.constant(rng.standard_normal((vocab, hidden), np.float32))
    logits = ops.matmul(scaled, weight, transpose_a=False, transpose_b=True)
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "lm")


def test_the_gather_keeps_the_last_positions_logits():
    core = ov.Core()
    states = np.random.default_rng(1).standard_normal((3, 7, 16)).astype(np.float32)
    full = core.compile_model(lm_graph(16, 50), "CPU")(states)["logits"]
    model = last_position_logits(lm_graph(16, 50))
    assert model.output("logits").get_partial_shape().to_string() == "[?,1,50]"
    cut = core.compile_model(model, "CPU")(states)["logits"]
    assert cut.shape == (3, 1, 50)
    np.testing.assert_array_equal(cut, full[:, -1:, :])


def test_a_graph_without_a_matmul_above_the_logits_is_refused():
    x = ops.parameter([-1, -1, 4], np.float32, name="hidden")
    relu = ops.relu(x)
    relu.output(0).get_tensor().set_names({"logits"})
    with pytest.raises(ValueError, match="no MatMul"):
        last_position_logits(ov.Model([ops.result(relu)], [x], "no-head"))
