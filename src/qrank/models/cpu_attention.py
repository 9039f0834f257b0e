"""A CPU attention kernel for documents under a shared prefix (bf16, AMX micro-kernels).

The documents of a bucket attend to their prefix's keys and values and, causally, to their
own. ATen's flash kernel does this with an explicit mask, one head at a time, at 200–400
GFLOP/s on this project's CPUs; ``csrc/prefix_attention.cpp`` packs each document's keys and
values once per kv head for oneDNN's AMX micro-kernels (``cpublas::brgemm``), skips the key
blocks past each query block's causal end, and writes straight into the packed output. It is
built on first use with ``torch.utils.cpp_extension`` (a C++ compiler and ninja, as
``torch.compile`` needs a compiler) and cached by torch; where it cannot be built or the CPU
cannot run it, :func:`load` returns ``None`` and the engine keeps SDPA.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "prefix_attention.cpp"
Q_BLOCK = 64  # query rows per work item


@functools.lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """The compiled kernel, or ``None`` where it cannot be built or run (logged)."""
    from torch.utils.cpp_extension import load as load_extension

    flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp"]
    put_ninja_on_path()
    start = time.perf_counter()
    try:
        module = load_extension("qrank_prefix_attention", [str(SOURCE)], extra_cflags=flags)
    except Exception as exc:  # no compiler, no ninja, an old torch without cpublas::brgemm
        logger.warning("CPU attention kernel unavailable, using SDPA: %s", exc)
        return None
    if not module.supported():
        logger.info("this CPU cannot run the AMX attention kernel; using SDPA")
        return None
    logger.info("CPU attention kernel ready in %.1f s", time.perf_counter() - start)
    return module


def put_ninja_on_path() -> None:
    """torch builds with the ``ninja`` on PATH; the ``ninja`` package's binary is there only
    in an activated virtual environment, so add its directory when it is installed."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(p for p in (ninja.BIN_DIR, path) if p)


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor,
                     prefix_v: torch.Tensor, out: torch.Tensor, start: int, count: int,
                     length: int) -> None:
    """Write into ``out`` [T, H, d] the attention of ``count`` packed documents of ``length``
    tokens from row ``start`` of ``q`` [T, H, d], over ``prefix_k``/``prefix_v`` [Hkv, P, d]
    and, causally, their own rows of ``k``/``v`` [T, Hkv, d]. bfloat16 only."""
    module = load()
    if module is None:
        raise RuntimeError("the CPU attention kernel is not available")
    module.prefix_causal_attention(q, k, v, prefix_k, prefix_v, out, start, count, length,
                                   Q_BLOCK)
