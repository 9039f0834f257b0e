"""The element-wise work is compiled once for every number of tokens."""

import torch

from qrank.models.qwen3 import compile_token_dynamic, rms_norm


def test_one_graph_serves_every_token_count_and_matches_eager():
    norm = compile_token_dynamic(rms_norm)
    weight = torch.rand(64)
    norm(torch.randn(3, 64), weight, 1e-6)
    with torch.compiler.set_stance("fail_on_recompile"):
        for tokens in (5, 17, 2):
            x = torch.randn(tokens, 64)
            torch.testing.assert_close(norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6))
