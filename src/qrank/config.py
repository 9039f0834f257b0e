"""Engine configuration: :class:`EngineArgs` and how command-line flags map onto it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import textwrap
from dataclasses import dataclass, field, fields
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MAX_MODEL_LEN = 8192
COMPILE_MIN_HIDDEN = 512


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# on/off/auto switches of EngineArgs
SWITCHES = ("compile", "cpu_attention_kernel", "cpu_linear_kernel")


@dataclass
class EngineArgs:
    """Everything the engine needs to load a model and score pairs.

    Defaults serve well on one machine. ``hf_overrides`` takes vLLM's recipe keys
    (``architectures``, ``classifier_from_token``, ``is_original_qwen3_reranker``).
    ``chat_template``: a Jinja score template (a file or the template's text) rendering the
    prompts instead of the built-in one (:mod:`qrank.score_template`).
    """

    model: str
    tokenizer: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    max_model_len: int | None = None
    max_num_batched_tokens: int = 3072
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # 0: max_num_batched_tokens
    threads: int | None = None
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    prefix_sharing: bool = True
    prefix_cache_bytes: int = 512 * 1024 * 1024
    score_cache_entries: int = 0  # off offline, where repeats are rare; the server turns it on
    compile: str | bool = "auto"
    cpu_attention_kernel: str | bool = "auto"
    cpu_linear_kernel: str | bool = "auto"
    quantization: str | None = None
    seed: int = 0
    data_parallel_size: int = 1
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.hf_overrides, str):
            self.hf_overrides = parse_json_dict(self.hf_overrides, "hf_overrides")
        if self.hf_overrides is None:
            self.hf_overrides = {}
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be 0 (the batch budget) or "
                             "positive")
        for name in SWITCHES:
            value = getattr(self, name)
            if isinstance(value, bool):
                setattr(self, name, "on" if value else "off")
            elif value not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be auto, on or off, not {value!r}")
        if self.score_cache_entries < 0:
            raise ValueError("score_cache_entries must be 0 (off) or positive")
        if self.data_parallel_size < 1:
            raise ValueError("data_parallel_size must be at least 1")
        if self.data_parallel_size > 1 and self.device != "cpu":
            raise ValueError("data_parallel_size > 1 runs CPU engine copies; use it with "
                             "device='cpu'")
        if self.quantization not in (None, "int8"):
            raise ValueError(f"quantization must be 'int8' or unset, not {self.quantization!r}")

    def resolved_long_prefill_threshold(self) -> int:
        """Pairs longer than this after their template head are computed in pieces of at
        most this many tokens (chunked prefill); 0: never (``enable_chunked_prefill`` off)."""
        if not self.enable_chunked_prefill:
            return 0
        return self.long_prefill_token_threshold or self.max_num_batched_tokens

    def resolved_threads(self) -> int:
        return self.threads if self.threads else available_cores()

    def threads_per_engine(self) -> int:
        """Threads of each engine copy when ``data_parallel_size`` copies share the threads."""
        return max(1, self.resolved_threads() // self.data_parallel_size)

    def resolved_compile(self, hidden_size: int) -> bool:
        """``auto`` compiles real-sized models (hidden >= COMPILE_MIN_HIDDEN) on the CPU, where
        it was measured: the fused element-wise work pays for its ~25 s first compile (cached
        on disk afterwards); tiny test models gain nothing from it."""
        return self._resolved(self.compile, hidden_size)

    def resolved_cpu_attention_kernel(self, hidden_size: int) -> bool:
        """``auto`` uses the AMX attention kernel for real-sized models (hidden >=
        COMPILE_MIN_HIDDEN) on the CPU, where it was measured; its first build takes ~30 s
        (cached on disk afterwards). It runs in bfloat16 only; the scorer checks the rest."""
        return self._resolved(self.cpu_attention_kernel, hidden_size)

    def resolved_cpu_linear_kernel(self, hidden_size: int) -> bool:
        """``auto`` runs the gate-up projection with SiLU·up fused in on the AMX linear kernel
        for real-sized models (hidden >= COMPILE_MIN_HIDDEN) on the CPU, where it was
        measured faster than oneDNN + the compiled SiLU·up; its first build takes ~30 s
        (cached on disk afterwards). The scorer checks dtype, CPU and sizes."""
        return self._resolved(self.cpu_linear_kernel, hidden_size)

    def _resolved(self, switch: str | bool, hidden_size: int) -> bool:
        if switch == "auto":
            return self.device == "cpu" and hidden_size >= COMPILE_MIN_HIDDEN
        return switch == "on"


def parse_json_dict(text: str, name: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line; a clear error otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"--{name} must be a JSON object, got {type(value).__name__}")
    return value


# vLLM flags that mean nothing here, accepted so vLLM command lines run as they are and ignored
# with a warning; True: the flag takes a value. (--max-num-seqs and the others qrank implements
# are real flags, above.)
IGNORED_VLLM_FLAGS: dict[str, bool] = {
    "tensor-parallel-size": True, "pipeline-parallel-size": True,
    "gpu-memory-utilization": True, "swap-space": True, "cpu-offload-gb": True,
    "max-num-seqs-per-batch": True,
    "distributed-executor-backend": True, "tokenizer-mode": True, "kv-cache-dtype": True,
    "load-format": True, "block-size": True,
    "enforce-eager": False, "trust-remote-code": False, "disable-log-stats": False,
    "disable-log-requests": False, "enable-prefix-caching": False,
    "no-enable-prefix-caching": False, "disable-custom-all-reduce": False,
}


# vLLM's model-mode flags: the values that mean "run this model as a reranker"; any other value
# asks for something qrank does not do
RERANKER_MODES: dict[str, tuple[str, ...]] = {
    "runner": ("auto", "pooling"),
    "convert": ("auto", "classify"),
    "task": ("auto", "score", "classify"),
}


def check_reranker_mode(name: str, value: str | None) -> str | None:
    """``value`` of vLLM's ``--runner``/``--convert``/``--task`` when it means a reranker;
    else a ValueError naming the values that do."""
    if value is None or value in RERANKER_MODES[name]:
        return value
    raise ValueError(f"qrank serves rerankers: {name} must be one of "
                     f"{', '.join(RERANKER_MODES[name])}, not {value!r}")


def _mode_type(name: str):
    def parse(value: str) -> str:
        try:
            return check_reranker_mode(name, value) or value
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = name  # argparse names the type in its errors
    return parse


class IgnoredFlag(argparse.Action):
    """Accept a vLLM flag and note it in ``namespace.ignored_vllm_flags`` (see
    :func:`warn_ignored_flags`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        ignored = list(getattr(namespace, "ignored_vllm_flags", None) or [])
        namespace.ignored_vllm_flags = [*ignored, option_string]


def add_ignored_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """Accept IGNORED_VLLM_FLAGS (dashes or underscores) without listing each in --help."""
    names = ", ".join(f"--{name}" for name in IGNORED_VLLM_FLAGS)
    g = parser.add_argument_group("vLLM flags accepted and ignored", textwrap.fill(
        f"they mean nothing on qrank's engine; a warning names them: {names}", width=78,
        initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))
    for name, takes_value in IGNORED_VLLM_FLAGS.items():
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
        g.add_argument(*spellings, action=IgnoredFlag, nargs=None if takes_value else 0,
                       dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def warn_ignored_flags(ns: argparse.Namespace, log: logging.Logger) -> None:
    """One warning line naming the vLLM flags that were given and are ignored."""
    flags = getattr(ns, "ignored_vllm_flags", None)
    if flags:
        log.warning("ignoring vLLM flag(s) that mean nothing in qrank: %s",
                    ", ".join(dict.fromkeys(flags)))


def add_engine_arguments(parser: argparse.ArgumentParser,
                         common: argparse._ArgumentGroup | None = None) -> None:
    """Add the engine flags, spelled as vLLM spells them, to a parser; the most used ones
    (--dtype, --max-model-len, --device) go to ``common`` when given, listed first in --help."""
    g = parser.add_argument_group("engine")
    c = common or g
    c.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="weights and activations dtype; auto = bfloat16 on CPUs with AVX-512 "
                        "BF16 or AMX and on GPUs, else float32 (the score head stays float32)")
    c.add_argument("--max-model-len", "--max_model_len", type=int, default=None,
                   help=f"longest input in tokens; longer ones are truncated in the document "
                        f"(default {DEFAULT_MAX_MODEL_LEN}, capped by the model)")
    c.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    g.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's)")
    g.add_argument("--revision", default=None, help="Hub revision of the model")
    g.add_argument("--max-num-batched-tokens", "--max_num_batched_tokens", type=int,
                   default=EngineArgs.max_num_batched_tokens,
                   help="token budget of one forward batch (3072: the middle of the "
                        "fastest range on AMX CPUs, docs/performance.md)")
    g.add_argument("--max-num-seqs", "--max_num_seqs", type=int, default=EngineArgs.max_num_seqs,
                   help="most pairs in one forward batch")
    g.add_argument("--enable-chunked-prefill", "--enable_chunked_prefill",
                   action=argparse.BooleanOptionalAction,
                   default=EngineArgs.enable_chunked_prefill,
                   help="compute a pair longer than --long-prefill-token-threshold in pieces, "
                        "with other requests' batches between them (default: on)")
    g.add_argument("--long-prefill-token-threshold", "--long_prefill_token_threshold",
                   type=int, default=EngineArgs.long_prefill_token_threshold,
                   help="tokens of a pair (after its template head) above which it is "
                        "computed in pieces of at most this many (0, the default: "
                        "--max-num-batched-tokens)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores this process may use)")
    g.add_argument("--hf-overrides", "--hf_overrides", default=None,
                   help="JSON object overriding config.json keys, as vLLM takes it")
    g.add_argument("--no-prefix-sharing", dest="prefix_sharing", action="store_false",
                   help="compute each pair's query tokens on their own")
    g.add_argument("--prefix-cache-bytes", type=int, default=EngineArgs.prefix_cache_bytes,
                   help="bytes of query-prefix keys/values kept across requests (0: off)")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the element-wise work around attention (auto: for "
                        f"models with hidden size >= {COMPILE_MIN_HIDDEN}; the first start "
                        "compiles for ~25 s)")
    g.add_argument("--cpu-attention-kernel", default="auto", choices=["auto", "on", "off"],
                   help="attend documents over their shared prefix with qrank's AMX kernel "
                        "(bfloat16 on the CPU; auto: for models with hidden size >= "
                        f"{COMPILE_MIN_HIDDEN}; the first start builds it for ~30 s; off: SDPA)")
    g.add_argument("--cpu-linear-kernel", default="auto", choices=["auto", "on", "off"],
                   help="run the gate-up projection on qrank's AMX kernel with SiLU-up fused "
                        "in (bfloat16 on CPUs with AMX; the first start builds it for ~30 s; "
                        "auto: on for real-sized models on the CPU; off: oneDNN)")
    g.add_argument("--quantization", "-q", default=None, choices=["int8"],
                   help="int8 weight-only quantization of the linear layers (opt-in)")
    g.add_argument("--chat-template", "--chat_template", default=None, metavar="FILE",
                   help="a Jinja score template of vLLM's kind (roles query and document; "
                        "instruction and chat_template_kwargs as variables) rendering the "
                        "prompts instead of the built-in Qwen3-Reranker one; a file, or the "
                        "template's text")
    for name, values in RERANKER_MODES.items():
        g.add_argument(f"--{name}", type=_mode_type(name), default=None,
                       help=f"vLLM's --{name}; a reranker is {' or '.join(values)}, "
                            "which is what qrank runs")
    add_ignored_vllm_arguments(parser)


def engine_args_from_namespace(ns: argparse.Namespace) -> EngineArgs:
    """Build EngineArgs from parsed flags; names that EngineArgs lacks are ignored."""
    known = {f.name for f in fields(EngineArgs)}
    values = {k: v for k, v in vars(ns).items() if k in known}
    if values.get("hf_overrides") is None:
        values["hf_overrides"] = {}
    return EngineArgs(**values)
