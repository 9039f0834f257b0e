"""Architecture names to model classes, and the one function that loads a scorer.

``Qwen3ForCausalLM`` (the original reranker) and ``Qwen3ForSequenceClassification`` (a converted
one, or the original loaded with vLLM's hf_overrides) both become a Qwen3 trunk plus a one-logit
:class:`~qrank.models.heads.ScoreHead`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qrank.config import DEFAULT_MAX_MODEL_LEN, EngineArgs
from qrank.kernels import cpu_features
from qrank.kernels.packed_linear import pack_linears
from qrank.models.heads import ScoreHead, build_head
from qrank.models.loader import (
    SIGMOID,
    SafetensorsCheckpoint,
    SentenceTransformersLayout,
    find_tokenizer_file,
    read_config,
    read_sentence_transformers_layout,
    resolve_model_path,
)
from qrank.models.quant import quantize_int8
from qrank.models.qwen3 import Qwen3Scorer, Qwen3Shape
from qrank.prompts import BuiltinTemplate, ScoreTemplate
from qrank.score_template import JinjaTemplate, TemplateError, read_template
from qrank.tokenize import RerankTokenizer

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {
    "Qwen3ForCausalLM": Qwen3Scorer,
    "Qwen3ForSequenceClassification": Qwen3Scorer,
}
SUPPORTED_MODEL_TYPES = {"qwen3": Qwen3Scorer}

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A trunk, its head, the tokenizer, the prompt template and what was read to build them."""

    trunk: Qwen3Scorer
    head: ScoreHead
    tokenizer: RerankTokenizer
    config: dict[str, Any]
    path: Path
    max_model_len: int
    template: ScoreTemplate


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    return cpu_features.has_avx512_bf16() or cpu_features.has_amx_bf16()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPUs and on CPUs with native bf16, float32 elsewhere."""
    if name != "auto":
        return TORCH_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def model_class(config: dict[str, Any]) -> type[Qwen3Scorer]:
    for arch in config.get("architectures") or []:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        return SUPPORTED_MODEL_TYPES[model_type]
    raise ValueError(
        f"unsupported model: architectures {config.get('architectures')}, model_type "
        f"{model_type!r}; qrank runs {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def trunk_state_dict(
    ckpt: SafetensorsCheckpoint, shape: Qwen3Shape, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors under our module names, with QKV and gate-up fused."""

    def get(name: str) -> torch.Tensor:
        return ckpt.get(name).to(dtype)

    sd = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    for i in range(shape.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        sd[dst + "input_norm.weight"] = get(src + "input_layernorm.weight")
        sd[dst + "post_norm.weight"] = get(src + "post_attention_layernorm.weight")
        sd[dst + "qkv.weight"] = torch.cat(
            [get(src + f"self_attn.{p}_proj.weight") for p in ("q", "k", "v")]
        )
        sd[dst + "q_norm.weight"] = get(src + "self_attn.q_norm.weight")
        sd[dst + "k_norm.weight"] = get(src + "self_attn.k_norm.weight")
        sd[dst + "o_proj.weight"] = get(src + "self_attn.o_proj.weight")
        sd[dst + "gate_up.weight"] = torch.cat(
            [get(src + "mlp.gate_proj.weight"), get(src + "mlp.up_proj.weight")]
        )
        sd[dst + "down.weight"] = get(src + "mlp.down_proj.weight")
    return sd


def score_template(args: EngineArgs, layout: SentenceTransformersLayout | None,
                   path: Path) -> ScoreTemplate:
    """The prompt template: ``--chat-template``, else a Sentence Transformers checkpoint's chat
    template (its default prompt as the instruction), else the built-in one."""
    if args.chat_template:
        return JinjaTemplate(read_template(args.chat_template),
                             name=f"score template {args.chat_template[:80]!r}")
    if layout is not None and layout.chat_template:
        try:
            template = JinjaTemplate(layout.chat_template, system_instruction=True,
                                     default_instruction=layout.instruction,
                                     variables=layout.template_variables,
                                     name=f"chat template of {path.name}")
        except TemplateError as exc:
            logger.warning("%s; using the built-in Qwen3-Reranker template", exc)
        else:
            logger.info("prompts: the checkpoint's chat template (Sentence Transformers layout), "
                        "default instruction %r", layout.instruction)
            return template
    return BuiltinTemplate()


def apply_layout(config: dict[str, Any], layout: SentenceTransformersLayout,
                 tokenizer: RerankTokenizer, args: EngineArgs) -> None:
    """Take a Sentence Transformers checkpoint's yes/no tokens as the head's, unless
    hf_overrides names them; warn where its activation is not the sigmoid qrank applies."""
    if layout.token_ids and "classifier_from_token" not in args.hf_overrides:
        tokens = [tokenizer.tokenizer.id_to_token(i) for i in layout.token_ids]
        if None in tokens:
            raise ValueError(f"the LogitScore module names token ids {layout.token_ids} that "
                             "the tokenizer does not have")
        config["classifier_from_token"] = tokens
    if layout.activation not in (None, SIGMOID):
        logger.warning("the checkpoint's activation is %s; qrank scores with a sigmoid (ask "
                       "for use_activation=false to get the logit)", layout.activation)


def load_model(args: EngineArgs) -> LoadedModel:
    """Resolve, read and build the scorer described by ``args``."""
    path = resolve_model_path(args.model, args.revision)
    config = read_config(path, args.hf_overrides)
    cls = model_class(config)
    shape = Qwen3Shape.from_config(config)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} was asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu")
    dtype = resolve_dtype(args.dtype, device)
    layout = read_sentence_transformers_layout(path)
    template = score_template(args, layout, path)
    tokenizer = RerankTokenizer.from_file(find_tokenizer_file(path, args.tokenizer), template)
    if layout is not None:
        apply_layout(config, layout, tokenizer, args)

    with SafetensorsCheckpoint(path) as ckpt:
        head = build_head(ckpt, config, tokenizer.token_id)
        with torch.device("meta"):
            trunk = cls(shape)
        sd = trunk_state_dict(ckpt, shape, dtype)
    trunk.load_state_dict(sd, strict=False, assign=True)
    del sd  # the trunk holds the only reference: quantizing or packing frees each plain weight
    trunk.inv_freq = 1.0 / (
        shape.rope_theta
        ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
    )
    if args.quantization == "int8":
        quantize_int8(trunk)
    trunk = trunk.to(device).eval()
    # the gate-up kernel takes its layers' plain weights before oneDNN would pack them, so
    # no packed copy is made only to be dropped (it stayed in the process's heap: +0.4 GB RSS)
    if args.resolved_cpu_linear_kernel(shape.hidden_size) and not trunk.use_fused_gate_up():
        log = logger.warning if args.cpu_linear_kernel == "on" else logger.info
        log("the fused gate-up kernel is not in use (it runs bfloat16 on CPUs with AMX, sizes "
            "multiples of 32, no int8); the gate-up projection stays on oneDNN")
    pack_linears(trunk, args.max_num_batched_tokens)
    head = head.to(device)

    max_len = args.max_model_len or min(DEFAULT_MAX_MODEL_LEN, shape.max_position_embeddings)
    if max_len > shape.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings "
            f"{shape.max_position_embeddings}"
        )
    if max_len <= tokenizer.template_overhead:
        raise ValueError(
            f"max_model_len {max_len} leaves no room beyond the template's "
            f"{tokenizer.template_overhead} tokens"
        )
    logger.info(
        "loaded %s (%s, %d layers, hidden %d) as %s in %s on %s, max_model_len %d",
        path, ", ".join(config.get("architectures") or []), shape.num_layers,
        shape.hidden_size, cls.__name__, dtype, device, max_len,
    )
    return LoadedModel(trunk, head, tokenizer, config, path, max_len, template)
