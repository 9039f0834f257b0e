"""The matmul paths this CPU offers, at a model's projection shapes, in one run.

    python benchmarks/gemm_paths.py --model models/qwen3-reranker-0.6b
    python benchmarks/gemm_paths.py --model models/qwen3-reranker-0.6b --dtype float32

GFLOP/s of the four decoder projections (qkv, o_proj, gate_up, down) at ``--tokens`` rows, each path
run through every layer's own weights in turn, as the model runs them (a weight is cold again
when its layer comes back), medians of ``--reps`` passes, paths interleaved pass by pass, in
``--dtype`` (bfloat16 unless told):
- ``eager``: ``F.linear`` on plain weights (what transformers runs; MKL's sgemm in float32);
- ``packed``: oneDNN weights reordered once (qrank's default where ``can_pack`` says so:
  bf16 on CPUs that convert it natively, float32 on x86 without AVX-512); ``--dtype float32``
  measures it wherever oneDNN packs float32, so the rule can be checked on any CPU;
- ``inductor-gemm``: ``torch.compile(mode="max-autotune")`` with inductor's CPP GEMM template;
- ``int8-dequant``: int8 weights dequantized to bf16 before the matmul (``--quantization int8``;
  bfloat16 only).
Also the eager rate on one hot weight, the kind of rate ``vs_transformers.py``'s MFU is against
(its MFU* is against this script's ``eager`` path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from qrank.kernels import cpu_features
from qrank.kernels.packed_linear import PackedLinear
from qrank.models.loader import read_config
from qrank.models.quant import Int8Linear
from qrank.models.qwen3 import Qwen3Shape


def model_shape(model: str) -> Qwen3Shape:
    """The decoder shape of a local model directory."""
    return Qwen3Shape.from_config(read_config(Path(model)))


Layer = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def random_layer_weights(shape: Qwen3Shape, n_layers: int, gen: torch.Generator,
                         dtype: torch.dtype = torch.bfloat16) -> list[dict[str, torch.Tensor]]:
    """Distinct random projection weights [out, in] (bf16 unless told) for ``n_layers``
    layers."""
    return [{name: (torch.randn(n, k, generator=gen) * 0.02).to(dtype)
             for name, (k, n) in shape.projections().items()} for _ in range(n_layers)]


def projection_inputs(shape: Qwen3Shape, tokens: int, gen: torch.Generator,
                      dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """One activation [tokens, in] (bf16 unless told) per projection."""
    return {name: torch.randn(tokens, k, generator=gen).to(dtype)
            for name, (k, _) in shape.projections().items()}


def through_layers(layers: list[Layer], inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One pass of every layer's projections in the model's order, each weight once."""
    def run() -> None:
        for layer in layers:
            for name, fn in layer.items():
                fn(inputs[name])
    return run


def eager_layers(weights: list[dict[str, torch.Tensor]]) -> list[Layer]:
    """``F.linear`` on each plain weight: the eager path transformers runs."""
    return [{name: (lambda x, w=w: F.linear(x, w)) for name, w in ws.items()} for ws in weights]


def layers_flops(shape: Qwen3Shape, n_layers: int, tokens: int) -> float:
    return n_layers * sum(2.0 * tokens * k * n for k, n in shape.projections().values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, default=1788)
    p.add_argument("--layers", type=int, default=None, help="default: the model's")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--skip-inductor", action="store_true")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ns = p.parse_args()
    dtype = getattr(torch, ns.dtype)
    torch.set_num_threads(ns.threads)
    shape = model_shape(ns.model)
    shapes = shape.projections()
    n_layers = ns.layers or shape.num_layers
    gen = torch.Generator().manual_seed(0)
    weights = random_layer_weights(shape, n_layers, gen, dtype)
    inputs = projection_inputs(shape, ns.tokens, gen, dtype)
    flops = layers_flops(shape, n_layers, ns.tokens)

    paths = {"eager": through_layers(eager_layers(weights), inputs)}
    if cpu_features.onednn_packs(dtype):  # bf16: what can_pack says; float32: wherever it packs
        paths["packed"] = through_layers(
            [{name: PackedLinear(w, ns.tokens) for name, w in ws.items()} for ws in weights],
            inputs)
    if dtype == torch.bfloat16:
        paths["int8-dequant"] = through_layers(
            [{name: Int8Linear(w) for name, w in ws.items()} for ws in weights], inputs)
    if not ns.skip_inductor:
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
        compiled = torch.compile(lambda x, w: F.linear(x, w), mode="max-autotune",
                                 dynamic=False)
        paths["inductor-gemm"] = through_layers(
            [{name: (lambda x, w=w: compiled(x, w)) for name, w in ws.items()}
             for ws in weights], inputs)

    with torch.inference_mode():
        for name, run in paths.items():
            start = time.perf_counter()
            run()  # warm-up (and compile)
            print(f"{name}: first pass {time.perf_counter() - start:.1f} s", flush=True)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(ns.reps):
            for name, run in paths.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        x, w = inputs["gate_up"], weights[0]["gate_up"]
        hot = []
        for _ in range(ns.reps * 4):
            start = time.perf_counter()
            F.linear(x, w)
            hot.append(time.perf_counter() - start)
    k, n = shapes["gate_up"]
    print(f"\n{ns.tokens} tokens, {n_layers} layers of {', '.join(shapes)}, {ns.dtype}, "
          f"{ns.threads} threads, medians of {ns.reps}; CPU: {cpu_features.cpu_model()}")
    print(f"{'path':<16}{'GFLOP/s':>9}{'x eager':>9}")
    eager = statistics.median(times["eager"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<16}{flops / t / 1e9:>9.0f}{eager / t:>9.2f}")
    print(f"eager, one hot gate_up weight: "
          f"{2.0 * ns.tokens * k * n / statistics.median(hot) / 1e9:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
