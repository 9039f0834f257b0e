"""Snippets of the users' recipe (../shared/seed), read from the file, never pasted here."""

from __future__ import annotations

import re

import pytest
from paths import SEED_RECIPE


def recipe_text() -> str:
    if not SEED_RECIPE.is_file():
        pytest.skip(f"the recipe {SEED_RECIPE} is absent (../shared is missing)")
    return SEED_RECIPE.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the recipe from the heading ``title`` to the next heading of its level."""
    text = recipe_text()
    start = text.index(title)
    level = re.match(r"#+", text[start:]).group(0)
    rest = text[start + len(title):]
    m = re.search(rf"\n{level} ", rest)
    return rest[: m.start()] if m else rest


def code_blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.S)


def offline_script() -> str:
    (block,) = code_blocks("### Offline Inference", "python")
    return block


def requests_demo() -> str:
    (block,) = code_blocks("### requests demo", "python")
    return block


def serve_command() -> str:
    (block,) = code_blocks("### Online Inference", "bash")
    return block.strip()


def bench_command() -> str:
    blocks = code_blocks("## Performance", "bash")
    return next(b for b in blocks if "bench serve" in b).strip()
