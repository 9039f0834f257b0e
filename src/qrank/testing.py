"""Random-weight checkpoints in the exact Hugging Face layout of the Qwen3-Reranker releases.

``write_test_model`` writes config.json (as the real one), safetensors (one file or shards with
an index) and the tokenizer files copied from a tokenizer directory. Weights are drawn so that
context moves the score: tiny models are calibrated so that scores of varied pairs spread over
roughly 0.05-0.95, which a fidelity test needs to prove anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

logger = logging.getLogger(__name__)

VOCAB_SIZE = 151669
LOGIT_STD = 2.0  # target spread of calibrated logits
FORMATS = ("original", "seq-cls", "seq-cls-2way")
# "hf": the releases' layout; "st": a Sentence Transformers v6 CrossEncoder around it
LAYOUTS = ("hf", "st")
ST_VERSION = "6.3.0"  # the version whose CrossEncoder.save_pretrained the "st" files follow

# Real shapes of Qwen3-Reranker-0.6B/4B/8B, and two small ones for tests ("small": every
# size a multiple of 32, as qrank's AMX kernels take them).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 tie_word_embeddings=True),
    # one layer, two heads: long inputs (16k tokens) in tests, where attention grows with
    # the square of the length
    "tiny-1layer": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                        tie_word_embeddings=True),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               tie_word_embeddings=False),
}

CALIBRATED_SHAPES = ("tiny", "tiny-1layer", "small", "0.6b")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Pairs used to calibrate the head of tiny models, varied in length and topic.
CALIBRATION_PAIRS = [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("What is the capital of China?", "Gravity is a force that attracts two bodies."),
    ("how do plants make food", "Photosynthesis converts light, water and CO2 into sugar."),
    ("how do plants make food", "The stock market closed higher on Friday."),
    ("best pizza in naples", "Da Michele has served margherita since 1870 in Napoli."),
    ("best pizza in naples", "Quantum chromodynamics describes the strong interaction."),
    ("python sort a list", "Use sorted(xs) or xs.sort() to order a list in Python."),
    ("python sort a list", "Le chat dort sur le canapé depuis ce matin."),
    ("数据库索引是什么", "索引是一种加快数据库查询的数据结构。"),
    ("数据库索引是什么", "今天的天气非常好，我们去公园散步吧。"),
    ("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("who wrote hamlet", "A hamlet is a small settlement, smaller than a village."),
]


def make_config(shape: str, fmt: str, dtype: str, tie: bool | None = None) -> dict[str, Any]:
    """config.json as the real Qwen3-Reranker checkpoints (or their seq-cls conversions) have."""
    dims = dict(SHAPES[shape])
    if tie is not None:
        dims["tie_word_embeddings"] = tie
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": dims["head_dim"],
        "hidden_act": "silu",
        "hidden_size": dims["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": dims["intermediate_size"],
        "max_position_embeddings": 40960,
        "max_window_layers": dims["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": dims["tie_word_embeddings"],
        "torch_dtype": dtype,
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
    }
    if fmt != "original":
        labels = 1 if fmt == "seq-cls" else 2
        config["architectures"] = ["Qwen3ForSequenceClassification"]
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
        config["tie_word_embeddings"] = False
        config["pad_token_id"] = 151643
    return config


def weight_specs(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...], float, float]]:
    """(name, shape, std, mean) of every causal-LM tensor, in the order they are drawn.

    Linear weights have unit gain (std 1/sqrt(fan_in)), the output projection a gain of two and
    embeddings unit scale, so each block moves the residual stream and the context reaches the
    last token. (Sharper attention made tiny models chaotic: bfloat16 rounding then moved
    scores by several hundredths.)
    """
    h, inter = config["hidden_size"], config["intermediate_size"]
    d, nh, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]

    def linear(out_f: int, in_f: int, gain: float = 1.0) -> tuple[tuple[int, int], float, float]:
        return (out_f, in_f), gain / math.sqrt(in_f), 0.0

    specs: list[tuple[str, tuple[int, ...], float, float]] = [
        ("model.embed_tokens.weight", (VOCAB_SIZE, h), 1.0, 0.0)
    ]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": ((h,), 0.1, 1.0),
            "post_attention_layernorm.weight": ((h,), 0.1, 1.0),
            "self_attn.q_proj.weight": linear(nh * d, h),
            "self_attn.k_proj.weight": linear(nkv * d, h),
            "self_attn.v_proj.weight": linear(nkv * d, h),
            "self_attn.o_proj.weight": linear(h, nh * d, gain=2.0),
            "self_attn.q_norm.weight": ((d,), 0.2, 1.0),
            "self_attn.k_norm.weight": ((d,), 0.2, 1.0),
            "mlp.gate_proj.weight": linear(inter, h),
            "mlp.up_proj.weight": linear(inter, h),
            "mlp.down_proj.weight": linear(h, inter),
        }
        specs += [(p + name, shape, std, mean) for name, (shape, std, mean) in layer.items()]
    specs.append(("model.norm.weight", (h,), 0.1, 1.0))
    if not config["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (VOCAB_SIZE, h), 1.0 / math.sqrt(h), 0.0))
    return specs


Rows = dict[str, dict[int, torch.Tensor]]  # tensor name -> {row index: replacement row}


def draw_weights(config: dict[str, Any], seed: int, dtype: torch.dtype = torch.float32,
                 rows: Rows | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) of random causal-LM weights one at a time, reproducibly.

    Values are drawn in bfloat16, as real checkpoints hold them (a float32 reference and a
    bfloat16 run then use the same weights and differ only by activation rounding), straight
    into the tensor: no float32 copy. ``rows`` replaces rows after drawing (the calibrated head).
    """
    g = torch.Generator().manual_seed(seed)
    for name, shape, std, mean in weight_specs(config):
        t = torch.empty(shape, dtype=torch.bfloat16).normal_(mean, std, generator=g)
        for row, value in (rows or {}).get(name, {}).items():
            t[row] = value
        yield name, t if dtype == torch.bfloat16 else t.to(dtype)


def _head_source(config: dict[str, Any]) -> str:
    return "model.embed_tokens.weight" if config["tie_word_embeddings"] else "lm_head.weight"


def calibration_plan(config: dict[str, Any]) -> tuple[int, list[tuple[str, str]]]:
    """(rounds, pairs) of :func:`calibrate`: every query against every document, three rounds,
    for test shapes; one round over :data:`CALIBRATION_PAIRS` for real-sized ones, whose float32
    forward is slow (the yes/no rows barely move their hidden states: rows of norm ~30)."""
    if config["hidden_size"] < 512:
        queries = dict.fromkeys(q for q, _ in CALIBRATION_PAIRS)
        return 3, [(q, d) for q in queries for _, d in CALIBRATION_PAIRS]
    return 1, list(CALIBRATION_PAIRS)


def calibration_dtype(config: dict[str, Any]) -> str:
    """The forward's dtype while calibrating: float32 for test shapes; for real-sized ones
    bfloat16, the checkpoint's own type, where the CPU computes it natively (AVX-512 BF16 or
    AMX), so the model is held at the checkpoint's size rather than twice it. The head's
    direction is unmoved by bfloat16 rounding of the hidden states; elsewhere bfloat16 runs
    ~15x slower than float32, which is kept."""
    from qrank.kernels.cpu_features import has_avx512_bf16

    big = config["hidden_size"] >= 512
    return "bfloat16" if big and has_avx512_bf16() else "float32"


def calibrate(model_dir: Path, config: dict[str, Any], seed: int, yes: int, no: int,
              progress: bool = False) -> Rows:
    """The yes row of the head such that logits of varied pairs have mean 0 and std
    ``LOGIT_STD``; returned as ``rows`` for :func:`draw_weights`.

    The head points along the direction in which the last hidden state varies most across
    pairs, so context moves the score as much as possible for the head's norm (which keeps the
    score's sensitivity to bfloat16 rounding low); its sign ranks each calibration query's
    relevant document first. Runs qrank's own forward, in :func:`calibration_dtype`, on a
    bfloat16 checkpoint written to ``model_dir`` (the same values). With tied embeddings the
    rows are also input embeddings (the prompt's prefix contains "yes" and "no"), hence a few
    rounds.
    """
    from qrank.config import EngineArgs
    from qrank.engine.engine import Engine

    rounds, pairs = calibration_plan(config)
    relevant = torch.tensor([float(i % 2 == 0) for i in range(len(CALIBRATION_PAIRS))])
    src = _head_source(config)
    rows: Rows = {}
    no_row: list[torch.Tensor] = []

    def keep_no_row(tensors):
        for name, t in tensors:
            if name == src:
                no_row.append(t[no].to(torch.float64))
            yield name, t

    for i in range(rounds):
        logger.info("calibrating the yes/no head: round %d of %d, %d pairs", i + 1, rounds,
                    len(pairs))
        tensors = keep_no_row(draw_weights(config, seed, torch.bfloat16, rows))
        _write_shards(model_dir, tensors, _sizes(config, "original", 2), shards=1,
                      progress=progress)
        engine = Engine(EngineArgs(model=str(model_dir), dtype=calibration_dtype(config),
                                   prefix_cache_bytes=0,
                                   compile="off", cpu_attention_kernel="off",
                                   cpu_linear_kernel="off"))
        hidden = engine.hidden_states(pairs).to(torch.float64)  # [n, h] after the final norm
        engine.close()
        del engine
        centred = hidden - hidden.mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        logits = centred @ direction
        own = logits[[pairs.index(p) for p in CALIBRATION_PAIRS]]
        if float((own * (relevant - 0.5)).sum()) < 0:
            direction, logits = -direction, -logits
        w = direction * (LOGIT_STD / float(logits.std()))
        bias = float(hidden.mean(0) @ w)
        # logit = h . w - bias; remove the bias with a component along the mean direction
        mean_h = hidden.mean(0)
        w = w - bias / float(mean_h @ mean_h) * mean_h
        rows = {src: {yes: (no_row[-1] + w).to(torch.bfloat16)}}
    return rows


SHARD_BYTES = 4 * 1024**3
WEIGHTS_FILE = "model.safetensors"


def _sizes(config: dict[str, Any], fmt: str, item: int) -> dict[str, int]:
    """Bytes of each tensor written for ``fmt``, in the order they are written."""
    sizes = {n: math.prod(sh) * item for n, sh, _, _ in weight_specs(config)}
    if fmt != "original":
        sizes.pop("lm_head.weight", None)
        sizes["score.weight"] = (1 if fmt == "seq-cls" else 2) * config["hidden_size"] * item
    return sizes


def _write_shards(model_dir: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                  sizes: dict[str, int], shards: int, progress: bool = False) -> None:
    """Write (name, tensor) pairs, consumed one at a time, to ``shards`` files (+ index).

    ``sizes`` gives each tensor's bytes in order; shards take near-equal parts, none empty.
    Only one shard's tensors are held at once (safetensors writes from their memory).
    """
    for old in model_dir.glob("model*.safetensors*"):
        old.unlink()
    if len(sizes) < shards:
        raise ValueError(f"cannot split {len(sizes)} tensors into {shards} shards")
    total = sum(sizes.values())
    shard_of: dict[str, int] = {}
    current = done = 0
    for i, (name, size) in enumerate(sizes.items()):
        later_shards = shards - 1 - current
        if i and later_shards and (done >= (current + 1) * total / shards
                                   or len(sizes) - i <= later_shards):
            current += 1
        shard_of[name] = current
        done += size
    if shards <= 1:
        files = [WEIGHTS_FILE]
    else:
        files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    metadata = {"format": "pt"}
    part: dict[str, torch.Tensor] = {}
    current = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {model_dir.name}",
              disable=not progress) as bar:
        for name, tensor in tensors:
            if shard_of[name] != current and part:
                save_readable(part, model_dir / files[current], metadata)
                part = {}
            current = shard_of[name]
            part[name] = tensor
            bar.update(sizes[name])
        save_readable(part, model_dir / files[current], metadata)
    if shards > 1:
        weight_map = {name: files[i] for name, i in shard_of.items()}
        doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(doc, indent=2))


def _final_tensors(config: dict[str, Any], seed: int, rows: Rows, fmt: str, yes: int, no: int,
                   dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the tensors to write: causal-LM weights, or their seq-cls conversion."""
    head_src = _head_source(config)
    head = None
    for name, tensor in draw_weights(config, seed, torch.bfloat16, rows):
        if name == head_src:
            head = tensor[[no, yes]].to(torch.float32)
        if fmt != "original" and name == "lm_head.weight":
            continue
        yield name, tensor.to(dtype).contiguous()
    if fmt != "original":
        score = (head[1] - head[0])[None] if fmt == "seq-cls" else head
        yield "score.weight", score.to(dtype).contiguous()


def write_test_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    shape: str = "tiny",
    fmt: str = "original",
    dtype: str = "float32",
    seed: int = 0,
    shards: int | None = None,
    tie_word_embeddings: bool | None = None,
    calibrate_head: bool | None = None,
    progress: bool = False,
    layout: str = "hf",
) -> Path:
    """Write a random checkpoint; returns its directory.

    ``shards`` None picks one file up to 4 GiB and enough shards beyond. Tiny, small and 0.6B
    models are calibrated (see :func:`calibrate`) unless ``calibrate_head`` is False; larger
    ones are not (it runs the model in float32), and their scores saturate near 0 or 1.
    Tensors are drawn and written one shard at a time, so memory peaks near the largest
    shard (or, while calibrating, near the model in :func:`calibration_dtype`); ``progress``
    shows a bar. ``layout="st"`` adds the files of a Sentence Transformers v6 CrossEncoder
    (:func:`write_st_layout`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tokenizer_dir)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out / name)
    if not (out / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tok_dir} has no tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
    torch_dtype = getattr(torch, dtype)

    config = make_config(shape, "original", dtype, tie_word_embeddings)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    rows: Rows = {}
    if calibrate_head if calibrate_head is not None else shape in CALIBRATED_SHAPES:
        rows = calibrate(out, config, seed, yes, no, progress=progress)

    sizes = _sizes(config, fmt, torch.empty((), dtype=torch_dtype).element_size())
    if fmt != "original":
        (out / "config.json").write_text(
            json.dumps(make_config(shape, fmt, dtype, tie_word_embeddings), indent=2))
    if shards is None:
        shards = max(1, math.ceil(sum(sizes.values()) / SHARD_BYTES))
    tensors = _final_tensors(config, seed, rows, fmt, yes, no, torch_dtype)
    _write_shards(out, tensors, sizes, shards, progress=progress)
    if layout == "st":
        write_st_layout(out, fmt, yes, no)
    logger.info("wrote %s (%s, %s, %s, %s layout, %d shard(s))", out, shape, fmt, dtype,
                layout, shards)
    return out


def _dump(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def write_st_layout(out: Path, fmt: str, yes: int, no: int,
                    instruction: str | None = None) -> None:
    """Add to a checkpoint the files Sentence Transformers v6 writes for a CrossEncoder around
    it (``CrossEncoder.save_pretrained``): modules.json, the Transformer module's
    sentence_bert_config.json, config_sentence_transformers.json (the default prompt, i.e. the
    instruction, and the activation), chat_template.jinja (the model card's prompt, reading
    the instruction from the system message Sentence Transformers passes the prompt in) and,
    for the causal-LM format, the LogitScore module with the yes/no token ids."""
    from qrank.prompts import DEFAULT_INSTRUCTION
    from qrank.score_template import QWEN3_TEMPLATE_FILE

    causal = fmt == "original"
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.base.modules.transformer.Transformer"}]
    if causal:
        modules.append({"idx": 1, "name": "1", "path": "1_LogitScore",
                        "type": "sentence_transformers.cross_encoder.modules.logit_score."
                                "LogitScore"})
        _dump(out / "1_LogitScore" / "config.json",
              {"true_token_id": yes, "false_token_id": no, "module_input_name": "causal_logits"})
    _dump(out / "modules.json", modules)
    output = "logits"
    _dump(out / "sentence_bert_config.json", {
        "transformer_task": "text-generation" if causal else "sequence-classification",
        "modality_config": {
            "text": {"method": "forward", "method_output_name": output},
            "message": {"method": "forward", "method_output_name": output, "format": "flat"},
        },
        "module_output_name": "causal_logits" if causal else "scores",
        "processing_kwargs": {"chat_template": {"add_generation_prompt": False}},
    })
    _dump(out / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": ST_VERSION},
        "activation_fn": "torch.nn.modules.activation.Sigmoid",
        "default_prompt_name": "web_search",
        "model_type": "CrossEncoder",
        "prompts": {"web_search": instruction or DEFAULT_INSTRUCTION},
    })
    shutil.copyfile(QWEN3_TEMPLATE_FILE, out / "chat_template.jinja")


def save_readable(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``save_file``, then the mode any other file gets under the umask: safetensors writes
    0600, which a service running as another user (systemd's ``User=``) cannot read."""
    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
