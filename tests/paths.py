"""Where the test data lives: the shared folder (../shared beside the checkout, or
$QRANK_SHARED) and the real Qwen3 tokenizer (:func:`find_tokenizer`)."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QRANK_SHARED", ROOT.parent / "shared"))
SEED_RECIPE = SHARED / "seed" / "000_153ae664cb503a10.txt"

TOKENIZER_REPO = "Qwen/Qwen3-Reranker-0.6B"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]
PROBE_TIMEOUT_S = 2.0
HOW_TO_GET_IT = (
    "set QRANK_TOKENIZER to a directory holding Qwen3's tokenizer.json (e.g. from `hf download "
    f"{TOKENIZER_REPO} {' '.join(TOKENIZER_FILES)} --local-dir DIR`), or allow network access "
    "to the Hugging Face Hub"
)


@dataclass(frozen=True)
class TokenizerLookup:
    """The tokenizer directory found (or None) and where each place that failed was tried."""

    path: Path | None
    tried: tuple[str, ...]

    def skip_reason(self) -> str:
        return (f"the real Qwen3 tokenizer was not found ({'; '.join(self.tried)}): "
                f"{HOW_TO_GET_IT}")


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file()


def _hub_reachable() -> str | None:
    """None when the Hub's host answers a TCP connect within PROBE_TIMEOUT_S, else why not."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{url.hostname} unreachable: {exc}"
    return None


def _from_hub(local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(TOKENIZER_REPO, allow_patterns=TOKENIZER_FILES,
                                  local_files_only=local_only, etag_timeout=PROBE_TIMEOUT_S))


@functools.cache
def find_tokenizer() -> TokenizerLookup:
    """The real Qwen3 tokenizer, looked for in order in $QRANK_TOKENIZER,
    $QRANK_SHARED/qwen3-tokenizer (or ../shared/qwen3-tokenizer), the Hugging Face cache
    (TOKENIZER_REPO's files), then downloaded from the Hub (tokenizer files only) when a quick
    probe finds it reachable."""
    tried = []
    env = os.environ.get("QRANK_TOKENIZER")
    if env:
        if _has_tokenizer(Path(env)):
            return TokenizerLookup(Path(env), ())
        tried.append(f"QRANK_TOKENIZER={env} has no tokenizer.json")
    else:
        tried.append("QRANK_TOKENIZER is unset")
    shared = SHARED / "qwen3-tokenizer"
    if _has_tokenizer(shared):
        return TokenizerLookup(shared, ())
    tried.append(f"{shared} is absent")
    for local_only in (True, False):
        where = "the Hugging Face cache" if local_only else "the Hub"
        if not local_only and (why := _hub_reachable()):
            tried.append(f"{where}: {why}")
            break
        try:
            path = _from_hub(local_only)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next place
            tried.append(f"{where}: {type(exc).__name__}")
            continue
        if _has_tokenizer(path):
            return TokenizerLookup(path, ())
        tried.append(f"{where}: no tokenizer.json in {path}")
    return TokenizerLookup(None, tuple(tried))
