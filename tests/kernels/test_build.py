"""Kernels are built only where the CPU runs them, with a log line saying so and where."""

import os
import subprocess
import sys

import pytest

from qrank.kernels import cpu_features

LOAD_BOTH = (
    "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s');"
    "from qrank.kernels import amx_linear, cpu_attention;"
    "print(amx_linear.load() is not None, cpu_attention.load() is not None)"
)


def load_in_fresh_process(cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "QRANK_KERNEL_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", LOAD_BOTH], capture_output=True, text=True,
                          env=env, timeout=600, check=True)


@pytest.mark.skipif(cpu_features.has_amx_bf16(), reason="this CPU has AMX: the kernels build")
def test_no_compiler_runs_for_kernels_this_cpu_cannot_run(tmp_path):
    """Without AMX neither kernel is compiled: the cache stays empty, the log says why, and
    the answer comes at once (a build takes ~30 s or more)."""
    done = load_in_fresh_process(tmp_path / "cache")
    assert done.stdout.split() == ["False", "False"]
    assert "not built: this CPU lacks AMX" in done.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.skipif(not cpu_features.has_amx_bf16(), reason="needs a CPU with AMX (amx_bf16)")
def test_kernels_are_built_once_into_the_cache_and_say_so(tmp_path):
    first = load_in_fresh_process(tmp_path / "cache")
    assert first.stdout.split() == ["True", "True"]
    assert "building CPU kernel prefix_attention.cpp into" in first.stderr
    assert str(tmp_path / "cache") in first.stderr
    again = load_in_fresh_process(tmp_path / "cache")
    assert "CPU kernel prefix_attention.cpp loaded in" in again.stderr
    assert "building" not in again.stderr


def test_describe_names_the_cpu_and_its_paths():
    info = cpu_features.describe()
    assert info["model"]
    assert set(info["flags"]) == set(cpu_features.RECORDED_FLAGS)
    assert info["flags"]["avx2"] == ("avx2" in cpu_features.cpu_flags())
    assert isinstance(info["amx_bf16"], bool) and isinstance(info["onednn_packs_bf16"], bool)
    # AMX and AVX-512 BF16 imply AVX-512, which oneDNN packs bfloat16 on
    if info["amx_bf16"] or info["avx512_bf16"]:
        assert info["avx512"] and info["onednn_packs_bf16"]


def test_without_a_compiler_the_engine_runs_eager_with_one_warning(tiny_model):
    """No g++ on PATH: torch.compile is skipped with one warning, the kernels are not built,
    and the engine scores."""
    script = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s');"
        "from qrank import EngineArgs; from qrank.engine.engine import Engine;"
        f"e = Engine(EngineArgs({str(tiny_model)!r}, dtype='float32', compile='on'));"
        "print(e.score_tokens(e.encode('q', ['a', 'b'])))"
    )
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env["PATH"] = os.path.dirname(sys.executable)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no C++ compiler") == 1
    assert "compiling the decoder" not in done.stderr
    scores = [float(s) for s in done.stdout.strip().strip("[]").split(",")]
    assert len(scores) == 2 and all(0 < s < 1 for s in scores)
