"""Builds qrank's C++ CPU kernels (``csrc/``) with ``torch.utils.cpp_extension``, once per
source version, into an on-disk cache.

Each kernel is one source file plus the shared headers in ``csrc/``; the extension's name
carries a hash of those files, so an edited header rebuilds every kernel that includes it
(torch's own cache only hashes the listed sources). A caller names what the CPU must have
(:mod:`qrank.kernels.cpu_features`): where it lacks that, nothing is compiled. Building needs
a C++ compiler and ninja, as ``torch.compile`` does; where a kernel cannot be built or run,
:func:`load` returns ``None`` and the caller keeps its PyTorch path. The cache lives in
``$QRANK_KERNEL_CACHE`` (default ``~/.cache/qrank/kernels``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp"]


def find_compiler() -> str | None:
    """The C++ compiler torch builds with ($CXX, else g++, c++ or clang++), or ``None``."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    """Where built kernels are kept between starts."""
    root = os.environ.get("QRANK_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "qrank" / "kernels"


@functools.cache
def load(source: str, extra_flags: tuple[str, ...] = (),
         runs_here: Callable[[], bool] = lambda: True, needs: str = "") -> ModuleType | None:
    """The kernel built from ``csrc/<source>``, or ``None`` where it cannot be built or run
    (logged). ``runs_here`` says whether this CPU has what the kernel ``needs`` (words for the
    log); where it says no, nothing is compiled. A module's ``supported()`` confirms it."""
    if not runs_here():
        logger.info("CPU kernel %s not built: this CPU lacks %s", source, needs or "its features")
        return None
    if find_compiler() is None:
        logger.warning("CPU kernel %s not built: no C++ compiler (install g++ or set CXX); its "
                       "PyTorch path runs instead", source)
        return None
    from torch.utils.cpp_extension import load as load_extension

    path = CSRC / source
    digest = hashlib.sha256()
    for file in [path, *sorted(CSRC.glob("*.h"))]:
        digest.update(file.read_bytes())
    name = f"qrank_{path.stem}_{digest.hexdigest()[:12]}"
    build_dir = cache_dir() / name
    cached = (build_dir / f"{name}.so").is_file()
    if not cached:
        logger.info("building CPU kernel %s into %s (once per version; ~30 s)", source, build_dir)
    put_ninja_on_path()
    start = time.perf_counter()
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        module = load_extension(name, [str(path)], extra_cflags=FLAGS + list(extra_flags),
                                build_directory=str(build_dir))
    except Exception as exc:  # no compiler, no ninja, an old torch or compiler
        logger.warning("CPU kernel %s unavailable (%s); its PyTorch path runs instead",
                       source, str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)
        return None
    if not module.supported():
        logger.info("this CPU cannot run the kernel %s", source)
        return None
    logger.info("CPU kernel %s %s in %.1f s (%s)", source, "loaded" if cached else "built",
                time.perf_counter() - start, build_dir)
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
