"""qrank's offline engine against transformers and OpenVINO, on the same pairs, interleaved
run by run.

    python benchmarks/vs_transformers.py --model models/qwen3-reranker-0.6b \
        --tokenizer ../shared/qwen3-tokenizer

Engines (``--engines``, default ``qrank,card,tuned``), each in its own process (so peak RSS is
its own), run one at a time, every engine once per round and workload (the tuned batch sizes
are all tried in round 1, then the best), all in ``--dtype`` (default bfloat16; ``auto``: what
``qrank serve --dtype auto`` picks on this CPU, float32 where it has no native bf16):
- ``card``: transformers as the model card runs it (AutoModelForCausalLM, left padding,
  batch 16, ``outputs.logits[:, -1, :]``, yes/no log-softmax);
- ``tuned``: the same with ``logits_to_keep=1``, at the best of batch 8/16/32;
- ``openvino``: optimum-intel's ``OVModelForCausalLM`` export with a Gather of the last
  position before ``lm_head`` (``openvino_export.py``), the card's inputs and score, batch 16,
  ``--dtype`` as its inference precision hint (``auto``: its default);
- ``qrank``: qrank's offline engine (prefix cache emptied before every run);
- ``qrank-dpN`` with ``--data-parallel N``: the same with ``data_parallel_size=N`` (N one-thread
  engine copies; its peak RSS sums the copies' processes).
Each engine prints what it runs when it starts (qrank: its dtype, CPU attention kernel, fused
gate-up kernel, oneDNN-packed layers, torch.compile; OpenVINO: the inference and KV-cache
precision it took); the JSON records that, the CPU (model, family, flags) and the dtype.
Workloads: (a) vLLM's random-rerank at ``--random-input 200`` (one shared query of 99 tokens,
documents of 100 tokens, 10 per request); (b) distinct queries with one ~200-token document each.
It first measures this machine's eager matmul rate (in the dtype) at the model's shapes, and
reports pairs/s, tokens/s, ratios, peak RSS and model FLOPs utilisation (medians over rounds;
each run's MFU is against the matmul rate measured at the start of its round): ``MFU`` against the
four projections each on one hot weight (``layer``), ``MFU*`` against the same matmuls run
through every layer's own weights in turn (``model``), the rate a forward pass can reach.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemm_paths import model_shape

from qrank.kernels import cpu_features
from qrank.prompts import DEFAULT_INSTRUCTION as INSTRUCTION
from qrank.prompts import DOCUMENT_TEMPLATE, QUERY_TEMPLATE, SUFFIX
from qrank.prompts import SYSTEM_PREFIX as PREFIX

Workload = list[tuple[str, list[str]]]  # (query, documents) per request


# ---- workloads --------------------------------------------------------------------------------
def build_workloads(tokenizer_dir: str, pairs_a: int, pairs_b: int, seed: int
                    ) -> dict[str, Workload]:
    from qrank.bench.datasets import RandomRerankDataset, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    a = RandomRerankDataset(tok, seed=seed).sample(pairs_a, input_len=200, batch_size=10)
    gen = RandomRerankDataset(tok, seed=seed + 1)
    b: Workload = []
    for i in range(pairs_b):
        query, _ = gen.text_of_length(24, 1000 + 7919 * i, 0)
        doc, _ = gen.text_of_length(200, 50_000 + 104_729 * i, 1)
        b.append((query, [doc]))
    return {"a": [(r.query, r.documents) for r in a], "b": b}


# ---- engines (each runs in a worker process) ------------------------------------------------
class QrankRunner:
    def __init__(self, model: str, threads: int, dtype: str = "bfloat16",
                 **engine_kwargs) -> None:
        from qrank.config import EngineArgs
        from qrank.engine.data_parallel import create_engine

        self.engine = create_engine(EngineArgs(model=model, dtype=dtype, threads=threads,
                                               **engine_kwargs))

    def info(self) -> dict[str, Any]:
        """Which kernels run (the trunk's dtype, CPU attention and gate-up kernels, oneDNN
        packing, torch.compile)."""
        return self.engine.trunk.kernels_in_use()

    def peak_rss(self) -> int:
        """Peak RSS in bytes of this process plus its data-parallel workers' (each its own
        peak, so the sum bounds their total from above)."""
        parallel = self.engine.parallel
        workers = parallel.workers.pids if parallel is not None else []
        return own_peak_rss() + sum(peak_rss_of(pid) for pid in workers)

    def close(self) -> None:
        self.engine.close()  # stops its data-parallel workers, if any

    def run(self, workload: Workload) -> list[float]:
        self.engine.prefix_cache.clear()
        pairs = [p for q, docs in workload for p in self.engine.encode(q, docs)]
        return self.engine.score_tokens(pairs, use_tqdm=False)


def own_peak_rss() -> int:
    """This process's peak RSS in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_of(pid: int) -> int:
    """A live process's peak RSS in bytes (``VmHWM``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class CardInputs:
    """The model card's inputs: prefix + truncated body + suffix ids, left-padded in batches;
    and its score, the yes/no log-softmax of the last position's logits."""

    def __init__(self, model: str, batch_size: int, max_length: int = 8192) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model, padding_side="left")
        self.batch_size, self.max_length = batch_size, max_length
        self.prefix = self.tok.encode(PREFIX, add_special_tokens=False)
        self.suffix = self.tok.encode(SUFFIX, add_special_tokens=False)
        self.yes = self.tok.convert_tokens_to_ids("yes")
        self.no = self.tok.convert_tokens_to_ids("no")

    def batches(self, workload: Workload) -> Iterator[dict[str, Any]]:
        """``input_ids`` and ``attention_mask`` (torch tensors) of each batch."""
        texts = [BODY.format(instruction=INSTRUCTION, query=q, doc=d)
                 for q, docs in workload for d in docs]
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i : i + self.batch_size], padding=False,
                           truncation="longest_first", return_attention_mask=False,
                           max_length=self.max_length - len(self.prefix) - len(self.suffix))
            ids = [self.prefix + x + self.suffix for x in enc["input_ids"]]
            yield self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def scores(self, last) -> list[float]:
        """Scores from the last position's logits [batch, vocab]."""
        import torch

        two = torch.stack([last[:, self.no], last[:, self.yes]], dim=1).float()
        return torch.nn.functional.log_softmax(two, dim=1)[:, 1].exp().tolist()


class TransformersRunner:
    """The model card's code path; ``tuned`` adds logits_to_keep=1."""

    def __init__(self, model: str, threads: int, dtype: str, batch_size: int, tuned: bool,
                 max_length: int = 8192) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.inputs = CardInputs(model, batch_size, max_length)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype)).eval()
        self.tuned = tuned

    def info(self) -> dict[str, Any]:
        import transformers

        return {"dtype": str(self.model.dtype).removeprefix("torch."),
                "attn_implementation": self.model.config._attn_implementation,
                "logits_to_keep": 1 if self.tuned else None,
                "batch_size": self.inputs.batch_size, "transformers": transformers.__version__}

    def peak_rss(self) -> int:
        return own_peak_rss()

    def close(self) -> None:
        """Nothing to stop: the model goes with the process."""

    def run(self, workload: Workload) -> list[float]:
        keep = {"logits_to_keep": 1} if self.tuned else {}
        scores: list[float] = []
        with self.torch.no_grad():
            for inputs in self.inputs.batches(workload):
                scores += self.inputs.scores(self.model(**inputs, **keep).logits[:, -1, :])
        return scores


# OpenVINO's inference precision asked for each --dtype; "auto" asks nothing (its default:
# bf16 where the CPU computes it natively, f32 elsewhere)
OPENVINO_PRECISION = {"bfloat16": "bf16", "float32": "f32", "float16": "f16", "auto": None}


class OpenVinoRunner:
    """optimum-intel's export (:mod:`openvino_export`) with the logits cut to the last
    position, called as ``OVModelForCausalLM.forward`` calls it: the state reset, position
    ids from the attention mask, ``beam_idx`` the batch order; left padding, batches of
    ``batch_size``; the card's inputs and score."""

    def __init__(self, model: str, threads: int, dtype: str, batch_size: int, ir_dir: str,
                 max_length: int = 8192) -> None:
        import openvino as ov
        from openvino_export import INFO_FILE, IR_FILE, last_position_logits, weight_types

        core = ov.Core()
        graph = last_position_logits(core.read_model(Path(ir_dir) / IR_FILE))
        # optimum-intel's defaults (PERFORMANCE_HINT LATENCY), the threads every engine gets
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if OPENVINO_PRECISION[dtype]:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[dtype]
        self.compiled = core.compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = CardInputs(model, batch_size, max_length)
        self._info = {
            "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")
                                       .get_type_name()),
            "kv_cache_precision": str(self.compiled.get_property("KV_CACHE_PRECISION")
                                      .get_type_name()),
            "asked": config, "ir_weights": weight_types(graph), "openvino": ov.__version__,
            "batch_size": batch_size, "export": json.loads((Path(ir_dir) / INFO_FILE).read_text()),
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def peak_rss(self) -> int:
        return own_peak_rss()

    def close(self) -> None:
        """Nothing to stop: the compiled model goes with the process."""

    def run(self, workload: Workload) -> list[float]:
        import numpy as np
        import torch

        scores: list[float] = []
        for inputs in self.inputs.batches(workload):
            ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
            positions = np.cumsum(mask, axis=1) - 1
            positions[mask == 0] = 1
            self.request.reset_state()
            self.request.infer({"input_ids": ids, "attention_mask": mask,
                                "position_ids": positions,
                                "beam_idx": np.arange(len(ids), dtype=np.int32)})
            logits = self.request.get_tensor("logits").data  # [batch, 1, vocab]
            scores += self.inputs.scores(torch.from_numpy(logits[:, -1, :].copy()))
        return scores


BODY = QUERY_TEMPLATE + DOCUMENT_TEMPLATE  # the model card's format_instruction


def matmul_rate(model: str, threads: int, tokens: int, reps: int, dtype: str = "bfloat16"
                ) -> dict[str, float]:
    """Eager ``F.linear`` GFLOP/s in ``dtype`` at the model's projection shapes and ``tokens``
    rows.

    Per projection, and ``layer`` for the four together, each on one weight called again and
    again (medians of ``reps``): the weight stays in the caches, the rate a benchmark of one
    matmul shows. ``model``: every layer's own weights in turn, as a forward pass calls them
    (median of 3 passes): the rate any engine's eager matmuls can reach on this model.
    """
    import torch
    import torch.nn.functional as F
    from gemm_paths import (
        eager_layers,
        layers_flops,
        projection_inputs,
        random_layer_weights,
        through_layers,
    )

    torch.set_num_threads(threads)
    shape = model_shape(model)
    dt = getattr(torch, dtype)
    out: dict[str, float] = {}
    total_flops = total_time = 0.0
    for name, (k, n) in shape.projections().items():
        x = torch.randn(tokens, k, dtype=dt)
        w = torch.randn(n, k, dtype=dt)
        for _ in range(3):
            F.linear(x, w)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            F.linear(x, w)
            times.append(time.perf_counter() - t)
        flops = 2.0 * tokens * k * n
        out[name] = flops / statistics.median(times) / 1e9
        total_flops += flops
        total_time += statistics.median(times)
    out["layer"] = total_flops / total_time / 1e9
    gen = torch.Generator().manual_seed(0)
    one_pass = through_layers(
        eager_layers(random_layer_weights(shape, shape.num_layers, gen, dt)),
        projection_inputs(shape, tokens, gen, dt))
    one_pass()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t)
    out["model"] = layers_flops(shape, shape.num_layers, tokens) / statistics.median(times) / 1e9
    return out


def worker(conn, kind: str, model: str, threads: int, options: dict) -> None:
    """Serve run requests for one engine over a pipe."""
    if kind == "qrank":
        runner = QrankRunner(model, threads, **options)
    elif kind == "openvino":
        runner = OpenVinoRunner(model, threads, **options)
    else:
        runner = TransformersRunner(model, threads, tuned=kind.startswith("tuned"), **options)
    conn.send(("ready", runner.info()))
    while True:
        msg = conn.recv()
        if msg is None:
            runner.close()
            return
        workload = msg
        start = time.perf_counter()
        scores = runner.run(workload)
        elapsed = time.perf_counter() - start
        conn.send((elapsed, scores, runner.peak_rss()))


@dataclass
class Engine:
    name: str
    conn: object
    proc: mp.Process
    info: dict[str, Any]


def start(ctx, name: str, kind: str, model: str, threads: int, options: dict) -> Engine:
    parent, child = ctx.Pipe()
    # not a daemon: a data-parallel qrank engine starts worker processes of its own
    proc = ctx.Process(target=worker, args=(child, kind, model, threads, options))
    proc.start()
    ready, info = parent.recv()
    assert ready == "ready"
    print(f"{name}: {json.dumps(info)}", flush=True)  # which kernels / precision it runs
    return Engine(name, parent, proc, info)


def run(engine: Engine, workload: Workload) -> tuple[float, list[float], int]:
    engine.conn.send(workload)
    return engine.conn.recv()


def stop(engine: Engine) -> None:
    """Ask the engine's process to close and wait for it; terminate it if it does not (the
    processes are not daemons, so one left waiting would keep this script from exiting)."""
    with contextlib.suppress(OSError):  # its process died already
        engine.conn.send(None)
    engine.proc.join(30)
    if engine.proc.is_alive():
        engine.proc.terminate()


# ---- accounting -------------------------------------------------------------------------------
def pair_lengths(model: str, workload: Workload, max_length: int = 8192) -> list[int]:
    from qrank.models.loader import find_tokenizer_file
    from qrank.prompts import render_pairs
    from qrank.tokenize import RerankTokenizer

    tok = RerankTokenizer.from_file(find_tokenizer_file(Path(model)))
    return [len(p) for q, docs in workload
            for p in tok.encode_pairs(render_pairs(q, docs), max_length)]


def model_flops(model: str, lengths: list[int]) -> float:
    """2 x non-embedding parameters per token plus causal attention, for every pair."""
    shape = model_shape(model)
    params = shape.non_embedding_params()
    attn = 2 * shape.num_heads * shape.head_dim * shape.num_layers  # x L(L+1) per sequence
    return sum(2.0 * params * n + attn * n * (n + 1) for n in lengths)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pairs-a", type=int, default=200)
    p.add_argument("--pairs-b", type=int, default=200)
    p.add_argument("--engines", default="qrank,card,tuned",
                   help="comma-separated rows: qrank, card, tuned, openvino")
    p.add_argument("--dtype", default="bfloat16",
                   choices=["bfloat16", "float32", "float16", "auto"],
                   help="every engine's dtype (OpenVINO's inference precision); auto: what "
                        "`qrank serve --dtype auto` picks here (float32 without native bf16)")
    p.add_argument("--tuned-batches", default="8,16,32")
    p.add_argument("--skip-card", action="store_true", help="leave out the slow card baseline")
    p.add_argument("--openvino-batch", type=int, default=16)
    p.add_argument("--openvino-dir", default=None,
                   help="the exported OpenVINO IR: used if there, else exported there "
                        "(default: a temporary directory, removed at the end)")
    p.add_argument("--openvino-python", default=sys.executable,
                   help="the Python with optimum-intel that exports the model (its own venv "
                        "where optimum-intel needs another transformers)")
    p.add_argument("--rss-pairs", type=int, default=1000,
                   help="pairs of workload (a) for the peak-RSS check (0: skip)")
    p.add_argument("--qrank-options", default="{}", help="JSON EngineArgs overrides for qrank")
    p.add_argument("--data-parallel", type=int, default=0, metavar="N",
                   help="also run qrank with data_parallel_size=N (row qrank-dpN; 0: not)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args()
    kinds = [k.strip() for k in ns.engines.split(",") if k.strip()]
    unknown = set(kinds) - {"qrank", "card", "tuned", "openvino"}
    if unknown:
        p.error(f"unknown engines: {', '.join(sorted(unknown))}")
    if ns.skip_card and "card" in kinds:
        kinds.remove("card")
    dtype = resolved_dtype(ns.dtype)
    tok_dir = ns.tokenizer or ns.model
    ctx = mp.get_context("spawn")

    cpu = cpu_features.describe()
    print(f"machine: {os.cpu_count()} CPUs, {ns.threads} threads; CPU {cpu['model']} (family "
          f"{cpu['family']}, model {cpu['model_number']}; "
          f"{', '.join(f for f, has in cpu['flags'].items() if has) or 'no recorded flags'}); "
          f"model {ns.model}; dtype {dtype}", flush=True)

    def measure_rate() -> dict[str, float]:
        """The matmul rate now (the machine is shared: its speed drifts between rounds)."""
        with ctx.Pool(1) as pool:
            rate = pool.apply(matmul_rate, (ns.model, ns.threads, 2048, 20, dtype))
        print(f"eager {dtype} matmul GFLOP/s at 2048 tokens: " +
              ", ".join(f"{k} {v:.0f}" for k, v in rate.items()), flush=True)
        return rate

    workloads = build_workloads(tok_dir, ns.pairs_a, ns.pairs_b, ns.seed)
    lengths = {k: pair_lengths(ns.model, w) for k, w in workloads.items()}
    flops = {k: model_flops(ns.model, n) for k, n in lengths.items()}
    for k, w in workloads.items():
        n = len(lengths[k])
        print(f"workload {k}: {len(w)} requests, {n} pairs, {sum(lengths[k])} tokens "
              f"(mean {sum(lengths[k]) / n:.0f} per pair)", flush=True)

    # name -> EngineArgs overrides
    qrank_setups = {"qrank": {"dtype": dtype, **json.loads(ns.qrank_options)}}
    if ns.data_parallel > 1:
        qrank_setups[f"qrank-dp{ns.data_parallel}"] = {**qrank_setups["qrank"],
                                                       "data_parallel_size": ns.data_parallel}
    if "qrank" not in kinds:
        qrank_setups = {}
    with contextlib.ExitStack() as stack:
        ir_dir = ns.openvino_dir
        if "openvino" in kinds:
            if ir_dir is None:
                ir_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="openvino-"))
            ensure_openvino_export(ns.model, ir_dir, ns.openvino_python)
        engines = [start(ctx, name, "qrank", ns.model, ns.threads, options)
                   for name, options in qrank_setups.items()]
        if "card" in kinds:
            engines.append(start(ctx, "card", "card", ns.model, ns.threads,
                                 {"batch_size": 16, "dtype": dtype}))
        if "tuned" in kinds:
            for b in [int(x) for x in ns.tuned_batches.split(",")]:
                engines.append(start(ctx, f"tuned-b{b}", "tuned", ns.model, ns.threads,
                                     {"batch_size": b, "dtype": dtype}))
        if "openvino" in kinds:
            engines.append(start(ctx, "openvino", "openvino", ns.model, ns.threads,
                                 {"batch_size": ns.openvino_batch, "dtype": dtype,
                                  "ir_dir": ir_dir}))
        return compare(ns, ctx, engines, workloads, lengths, flops, qrank_setups, cpu, dtype,
                       measure_rate)


def resolved_dtype(name: str) -> str:
    """``auto`` as ``qrank serve --dtype auto`` resolves it on this machine's CPU."""
    import torch

    from qrank.models.registry import resolve_dtype

    return str(resolve_dtype(name, torch.device("cpu"))).removeprefix("torch.")


def ensure_openvino_export(model: str, ir_dir: str, python: str) -> None:
    """Export ``model`` into ``ir_dir`` with optimum-intel (in ``python``) unless it is there."""
    from openvino_export import INFO_FILE, IR_FILE

    if (Path(ir_dir) / IR_FILE).is_file() and (Path(ir_dir) / INFO_FILE).is_file():
        print(f"openvino: the IR in {ir_dir}", flush=True)
        return
    start_time = time.perf_counter()
    script = Path(__file__).with_name("openvino_export.py")
    subprocess.run([python, str(script), model, ir_dir], check=True)
    print(f"openvino: exported to {ir_dir} in {time.perf_counter() - start_time:.0f} s",
          flush=True)


def compare(ns, ctx, engines: list[Engine], workloads: dict[str, Workload],
            lengths: dict[str, list[int]], flops: dict[str, float],
            qrank_setups: dict[str, dict], cpu: dict[str, Any], dtype: str,
            measure_rate) -> int:
    """Run every engine once per round and workload, then report (and stop the engines)."""
    tok_dir = ns.tokenizer or ns.model

    times: dict[tuple[str, str], list[float]] = {}
    rss: dict[str, int] = {}
    scores: dict[tuple[str, str], list[float]] = {}
    active = {w: list(engines) for w in workloads}
    rates: list[dict[str, float]] = []
    # MFU against the hot single-weight rate ("layer") and the whole-model rate ("model")
    mfu: dict[tuple[str, str, str], list[float]] = {}
    try:
        for r in range(ns.rounds):
            rates.append(measure_rate())
            for wname, workload in workloads.items():
                for e in active[wname]:  # interleaved: every engine once per round and workload
                    elapsed, s, peak = run(e, workload)
                    times.setdefault((e.name, wname), []).append(elapsed)
                    for basis in ("layer", "model"):
                        mfu.setdefault((e.name, wname, basis), []).append(
                            flops[wname] / elapsed / (rates[-1][basis] * 1e9))
                    scores[(e.name, wname)] = s
                    rss[e.name] = peak
                    print(f"round {r + 1} workload {wname} {e.name}: {elapsed:.2f} s", flush=True)
                if r == 0 and any(e.name.startswith("tuned") for e in engines):
                    # later rounds run only the best tuned batch size of round 1
                    tuned = [e for e in engines if e.name.startswith("tuned")]
                    best = min(tuned, key=lambda e: times[(e.name, wname)][0])
                    active[wname] = [e for e in engines if e not in tuned or e is best]
    finally:
        for e in engines:
            stop(e)

    rate = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
    print(f"median eager {dtype} matmul GFLOP/s over the rounds: " +
          ", ".join(f"{k} {v:.0f}" for k, v in rate.items()))
    results = {"matmul_gflops": rate, "matmul_gflops_rounds": rates, "threads": ns.threads,
               "dtype": dtype, "cpu": cpu, "engines_info": {e.name: e.info for e in engines},
               "workloads": {}}
    for wname in workloads:
        n_pairs, n_tokens = len(lengths[wname]), sum(lengths[wname])
        med = {e.name: statistics.median(times[(e.name, wname)]) for e in engines}
        tuned_name = next((e.name for e in active[wname] if e.name.startswith("tuned")), None)
        card = med.get("card")
        # scores are compared with tuned's (the card's computation), else the first engine's
        ref_name = tuned_name or ("card" if card else engines[0].name)
        tuned_note = (f"; tuned = {tuned_name}, the fastest batch size of round 1"
                      if tuned_name else "")
        print(f"\n=== workload {wname}: {n_pairs} pairs, {n_tokens} tokens; medians of "
              f"{ns.rounds} rounds{tuned_note} ===")
        ref = scores[(ref_name, wname)]
        print(f"scores ({ref_name}): {min(ref):.3f} to {max(ref):.3f}, std "
              f"{statistics.pstdev(ref):.3f}")
        print(f"{'engine':<11}{'pairs/s':>9}{'tokens/s':>10}{'x card':>8}{'x tuned':>9}"
              f"{'MFU':>7}{'MFU*':>7}{'peak RSS':>10}{'max |Δ| vs ' + ref_name:>22}")
        rows = {}
        for name in [*qrank_setups, "card", tuned_name, "openvino"]:
            if name not in med:
                continue
            t = med[name]
            diff = max(abs(a - b) for a, b in zip(scores[(name, wname)], ref, strict=True))
            row = {
                "seconds": t, "pairs_per_s": n_pairs / t, "tokens_per_s": n_tokens / t,
                "x_card": card / t if card else None,
                "x_tuned": med[tuned_name] / t if tuned_name else None,
                "mfu": statistics.median(mfu[(name, wname, "layer")]),
                "mfu_model_rate": statistics.median(mfu[(name, wname, "model")]),
                "peak_rss_gb": rss[name] / 1e9,
                "max_abs_diff_vs_ref": diff, "ref": ref_name, "runs": times[(name, wname)],
            }
            rows[name] = row
            x_card = f"{row['x_card']:.2f}" if card else "-"
            x_tuned = f"{row['x_tuned']:.2f}" if tuned_name else "-"
            print(f"{name:<11}{row['pairs_per_s']:>9.2f}{row['tokens_per_s']:>10.0f}"
                  f"{x_card:>8}{x_tuned:>9}{row['mfu']:>7.0%}"
                  f"{row['mfu_model_rate']:>7.0%}"
                  f"{row['peak_rss_gb']:>9.2f}G{diff:>22.4f}")
        print("MFU: against the projections each on one hot weight; MFU*: against them "
              "through every layer's own weights in turn")
        results["workloads"][wname] = {"pairs": n_pairs, "tokens": n_tokens,
                                       "model_flops": flops[wname], "engines": rows,
                                       "best_tuned": tuned_name}

    if ns.rss_pairs:
        big = build_workloads(tok_dir, ns.rss_pairs, 1, ns.seed)["a"]
        for name, options in qrank_setups.items():
            e = start(ctx, name, "qrank", ns.model, ns.threads, options)
            elapsed, s, peak = run(e, big)
            stop(e)
            print(f"\n{name} peak RSS scoring {len(s)} pairs of workload (a) in {dtype}: "
                  f"{peak / 1e9:.2f} GB ({elapsed:.1f} s)")
            results.setdefault("rss_check", {})[name] = {
                "pairs": len(s), "peak_rss_gb": peak / 1e9, "seconds": elapsed}
    if ns.output_json:
        Path(ns.output_json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
