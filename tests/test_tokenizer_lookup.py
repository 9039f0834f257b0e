"""The tests find the real tokenizer from a plain clone: $QRANK_TOKENIZER, the shared folder, the
Hugging Face cache, or the Hub; and skip, saying how to get it, only where all of those fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import ROOT, TOKENIZER_FILES, TOKENIZER_REPO

TESTS = Path(__file__).resolve().parent


def lookup(tmp_path: Path, **env: str) -> dict:
    """find_tokenizer() in a fresh interpreter, with no shared folder, an empty Hub cache and
    no network unless ``env`` says otherwise."""
    base = {k: v for k, v in os.environ.items() if k not in ("QRANK_TOKENIZER", "HF_HOME")}
    base |= {"QRANK_SHARED": str(tmp_path / "no-shared"), "HF_HUB_OFFLINE": "1",
             "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    code = ("import json, paths; f = paths.find_tokenizer(); "
            "print(json.dumps({'path': f.path and str(f.path), 'why': f.skip_reason()}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=base | env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def copy_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def test_qrank_tokenizer_comes_first(tmp_path, tokenizer_dir):
    mine = copy_tokenizer(tokenizer_dir, tmp_path / "mine")
    shared = tmp_path / "shared"
    copy_tokenizer(tokenizer_dir, shared / "qwen3-tokenizer")
    found = lookup(tmp_path, QRANK_TOKENIZER=str(mine), QRANK_SHARED=str(shared))
    assert found["path"] == str(mine)


def test_the_shared_folder_when_qrank_tokenizer_is_unset(tmp_path, tokenizer_dir):
    shared = tmp_path / "shared"
    copy_tokenizer(tokenizer_dir, shared / "qwen3-tokenizer")
    assert lookup(tmp_path, QRANK_SHARED=str(shared))["path"] == str(shared / "qwen3-tokenizer")


def test_the_hugging_face_cache_offline(tmp_path, tokenizer_dir):
    """The cache's layout (refs/main -> snapshots/<commit>/) as huggingface_hub writes it."""
    repo = tmp_path / "hub" / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    copy_tokenizer(tokenizer_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    found = lookup(tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert found["path"] == str(repo / "snapshots" / commit)


def test_nothing_found_skips_fast_and_says_how_to_get_it(tmp_path):
    start = time.monotonic()
    found = lookup(tmp_path, QRANK_TOKENIZER=str(tmp_path / "nope"))
    assert found["path"] is None
    assert time.monotonic() - start < 10
    assert "QRANK_TOKENIZER" in found["why"] and "network" in found["why"]
    assert str(tmp_path / "nope") in found["why"]  # the misconfigured variable is named


def test_a_network_probe_fails_fast_without_the_hub(tmp_path):
    """Network allowed but (on this machine) no route to the Hub: under a few seconds."""
    start = time.monotonic()
    found = lookup(tmp_path, HF_HUB_OFFLINE="0")
    if found["path"] is not None:
        pytest.skip("the Hub is reachable here")
    assert time.monotonic() - start < 15
    assert "the Hub:" in found["why"]


@pytest.mark.slow
def test_a_plain_clone_runs_the_fidelity_tests_with_qrank_tokenizer(tmp_path, tokenizer_dir):
    """src, tests and pyproject.toml alone (no ../shared beside them, an empty Hub cache, no
    network): QRANK_TOKENIZER is enough to run fidelity tests rather than skip them."""
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info")
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, clone / part, ignore=ignore)
    shutil.copyfile(ROOT / "pyproject.toml", clone / "pyproject.toml")
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("QRANK_SHARED", "HF_HOME")}
    env |= {"QRANK_TOKENIZER": str(tokenizer_dir), "PYTHONPATH": str(clone / "src"),
            "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    where = subprocess.run([sys.executable, "-c", "import qrank; print(qrank.__file__)"],
                           env=env, capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(clone / "src")), where
    select = "truncated"  # a fidelity test against transformers; the cheapest to set up
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/models/test_fidelity.py", "-k", select],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed" in out and "skipped" not in out, out
