"""Find a checkpoint (local dir, Hugging Face Hub cache, ModelScope cache) and read its files,
including the Sentence Transformers CrossEncoder files that name a prompt template and a head.

Weights are read lazily from (sharded) safetensors, so a caller takes only the tensors it needs:
the full vocabulary head of a causal-LM checkpoint is never loaded, only two of its rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class ModelNotFoundError(FileNotFoundError):
    """The model could not be found locally nor fetched."""


def modelscope_candidates(name: str) -> list[Path]:
    """Where ModelScope's downloader puts a model, old and new cache layouts."""
    roots = []
    if os.environ.get("MODELSCOPE_CACHE"):
        roots.append(Path(os.environ["MODELSCOPE_CACHE"]))
    roots.append(Path.home() / ".cache" / "modelscope" / "hub")
    out = []
    for root in roots:
        out += [root / "models" / name, root / name, root / name.replace(".", "___")]
    return out


def resolve_model_path(name: str, revision: str | None = None) -> Path:
    """A local directory holding config.json for ``name``.

    ``name`` may be a directory, a Hugging Face Hub id (looked up in the Hub cache, downloaded
    when the network allows), or a model in ModelScope's cache.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; is it a model directory?")
        return path
    for candidate in modelscope_candidates(name):
        if (candidate / "config.json").is_file():
            logger.info("using ModelScope cache %s", candidate)
            return candidate
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model {name!r}: no such directory, and not a Hub id")
    return _from_hub(name, revision)


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja"]  # jinja: score templates
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFoundError(
            f"could not find {repo_id!r} in the Hugging Face cache nor download it "
            f"({type(exc).__name__}: {exc}). Without network access, download the model "
            f"elsewhere and pass its local directory instead, e.g. `qrank serve /path/to/model`, "
            f"or set HF_HOME to a cache that holds it."
        ) from exc


def read_config(model_dir: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json with ``overrides`` applied on top (vLLM's hf_overrides)."""
    with open(model_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    for key, value in (overrides or {}).items():
        config[key] = value
    return config


def find_tokenizer_file(model_dir: Path, tokenizer: str | None = None) -> Path:
    """tokenizer.json of the model, or of ``tokenizer`` (a dir or a file) when given."""
    if tokenizer:
        tok = Path(tokenizer).expanduser()
        if tok.is_dir():
            tok = tok / "tokenizer.json"
        if not tok.is_file():
            tok = resolve_model_path(tokenizer) / "tokenizer.json"
    else:
        tok = model_dir / "tokenizer.json"
    if not tok.is_file():
        raise ModelNotFoundError(
            f"no tokenizer.json at {tok}; pass --tokenizer pointing at the model's tokenizer"
        )
    return tok


class SafetensorsCheckpoint:
    """Lazy access to the tensors of a (sharded) safetensors checkpoint by name.

    Each read maps the file only while it copies that tensor out, so the file's pages do not
    stay mapped beside the copies: loading peaks near the model's size, not twice it.
    """

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        index = model_dir / WEIGHTS_INDEX
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
        elif (model_dir / WEIGHTS_FILE).is_file():
            with safe_open(model_dir / WEIGHTS_FILE, framework="pt") as f:
                weight_map = dict.fromkeys(f.keys(), WEIGHTS_FILE)
        else:
            raise ModelNotFoundError(f"{model_dir} holds no {WEIGHTS_FILE} nor {WEIGHTS_INDEX}")
        self.weight_map = weight_map

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def keys(self) -> Iterator[str]:
        return iter(self.weight_map)

    def _file(self, name: str) -> Path:
        if name not in self.weight_map:
            raise KeyError(f"checkpoint {self.model_dir} has no tensor {name!r}")
        return self.model_dir / self.weight_map[name]

    def get(self, name: str) -> torch.Tensor:
        """The tensor, copied into memory of its own (safetensors may hand out a view of the
        file's mapping, which would keep the whole file mapped and its pages evictable)."""
        with safe_open(self._file(name), framework="pt") as f:
            return f.get_tensor(name).clone()

    def get_rows(self, name: str, rows: list[int]) -> torch.Tensor:
        """Selected rows of a 2-D tensor, read without loading the rest of it."""
        with safe_open(self._file(name), framework="pt") as f:
            sl = f.get_slice(name)
            return torch.stack([sl[r : r + 1][0] for r in rows])

    def shape(self, name: str) -> list[int]:
        with safe_open(self._file(name), framework="pt") as f:
            return list(f.get_slice(name).get_shape())


ST_MODULES = "modules.json"
ST_MODEL_CONFIG = "config_sentence_transformers.json"
ST_TRANSFORMER_CONFIG = "sentence_bert_config.json"
ST_LOGIT_SCORE = "LogitScore"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SIGMOID = "torch.nn.modules.activation.Sigmoid"


@dataclass
class SentenceTransformersLayout:
    """What a Sentence Transformers (v6) CrossEncoder checkpoint says beyond config.json.

    ``token_ids``: the LogitScore module's ``[false, true]`` vocabulary ids (``[true]`` alone
    when it has no false token; None for a sequence-classification checkpoint);
    ``chat_template``: the template rendering a (query, document) pair, or None;
    ``instruction``: the default prompt, passed to the template as a system message;
    ``template_variables``: the Transformer module's ``apply_chat_template`` arguments;
    ``activation``: the dotted name of the activation applied to the logit.
    """

    token_ids: list[int] | None
    chat_template: str | None
    instruction: str | None
    template_variables: dict[str, Any]
    activation: str | None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _chat_template(module_dir: Path) -> str | None:
    """The chat template of a Transformer module: chat_template.jinja, else the tokenizer's."""
    if (module_dir / CHAT_TEMPLATE_FILE).is_file():
        return (module_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    template = _read_json(module_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def read_sentence_transformers_layout(model_dir: Path) -> SentenceTransformersLayout | None:
    """The CrossEncoder layout of ``model_dir`` (modules.json naming a Transformer module, an
    optional LogitScore module), or None when it is not one."""
    modules = _read_json(model_dir / ST_MODULES) if (model_dir / ST_MODULES).is_file() else None
    if not isinstance(modules, list):
        return None
    model_config = _read_json(model_dir / ST_MODEL_CONFIG)
    if model_config.get("model_type", "CrossEncoder") != "CrossEncoder":
        return None
    token_ids = None
    transformer_dir = model_dir
    for module in modules:
        kind, sub = str(module.get("type", "")), str(module.get("path", ""))
        if ".." in Path(sub).parts or Path(sub).is_absolute():
            raise ValueError(f"{model_dir / ST_MODULES}: module path {sub!r} leaves the model")
        if kind.endswith(".Transformer"):
            transformer_dir = model_dir / sub
        elif kind.endswith("." + ST_LOGIT_SCORE):
            cfg = _read_json(model_dir / sub / "config.json")
            true_id, false_id = cfg.get("true_token_id"), cfg.get("false_token_id")
            if true_id is None:
                raise ValueError(f"{model_dir / sub}/config.json names no true_token_id")
            token_ids = [int(true_id)] if false_id is None else [int(false_id), int(true_id)]
    prompts = model_config.get("prompts") or {}
    prompt_name = model_config.get("default_prompt_name")
    processing = _read_json(transformer_dir / ST_TRANSFORMER_CONFIG).get("processing_kwargs")
    variables = dict((processing or {}).get("chat_template") or {})
    variables.pop("restore_suffix", None)  # a Sentence Transformers flag, not a variable
    return SentenceTransformersLayout(
        token_ids=token_ids,
        chat_template=_chat_template(transformer_dir),
        instruction=prompts.get(prompt_name) if prompt_name else None,
        template_variables=variables,
        activation=model_config.get("activation_fn"),
    )
