"""Shared fixtures: the real Qwen3 tokenizer (see paths.find_tokenizer) and tiny random
checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paths import find_tokenizer  # noqa: E402


def require_tokenizer() -> Path:
    """The tokenizer directory, or skip the test saying how to get one."""
    found = find_tokenizer()
    if found.path is None:
        pytest.skip(found.skip_reason())
    return found.path


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return require_tokenizer()


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Build (once per session) a tiny checkpoint for the given write_test_model options."""
    from qrank.testing import write_test_model

    made: dict[tuple, Path] = {}

    def make(**options) -> Path:
        tok = require_tokenizer()
        key = tuple(sorted(options.items()))
        if key not in made:
            name = "-".join(f"{k}={v}" for k, v in key) or "default"
            out = tmp_path_factory.mktemp("models") / name
            made[key] = write_test_model(out, tok, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(model_factory) -> Path:
    """The original-format tiny reranker (tied embeddings), float32 weights."""
    return model_factory()
