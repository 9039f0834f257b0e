"""Builds qrank's C++ CPU kernels (``csrc/``) on first use, with ``torch.utils.cpp_extension``.

Each kernel is one source file plus the shared headers in ``csrc/``; the extension's name
carries a hash of those files, so an edited header rebuilds every kernel that includes it
(torch's own cache only hashes the listed sources). Building needs a C++ compiler and ninja,
as ``torch.compile`` needs a compiler; where a kernel cannot be built, or the CPU cannot run
it, :func:`load` returns ``None`` and the caller keeps its PyTorch path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp"]


@functools.cache
def load(source: str, extra_flags: tuple[str, ...] = ()) -> ModuleType | None:
    """The kernel built from ``csrc/<source>``, or ``None`` where it cannot be built or run
    (logged). A module's ``supported()`` says whether this CPU can run it."""
    from torch.utils.cpp_extension import load as load_extension

    path = CSRC / source
    digest = hashlib.sha256()
    for file in [path, *sorted(CSRC.glob("*.h"))]:
        digest.update(file.read_bytes())
    name = f"qrank_{path.stem}_{digest.hexdigest()[:12]}"
    put_ninja_on_path()
    start = time.perf_counter()
    try:
        module = load_extension(name, [str(path)], extra_cflags=FLAGS + list(extra_flags))
    except Exception as exc:  # no compiler, no ninja, an old torch or compiler
        logger.warning("CPU kernel %s unavailable: %s", source, exc)
        return None
    if not module.supported():
        logger.info("this CPU cannot run the kernel %s", source)
        return None
    logger.info("CPU kernel %s ready in %.1f s", source, time.perf_counter() - start)
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
