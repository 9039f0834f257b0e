"""qrank on Ray: offline jobs as Ray Data (:func:`score_dataset`) and the HTTP app as Ray Serve
replicas (:func:`build_app`). The only package that imports ray: ``pip install 'qrank[ray]'``.
"""

from __future__ import annotations

EXTRA_HINT = "pip install 'qrank[ray]' (Ray Serve and Ray Data)"

try:
    import ray  # noqa: F401
except ImportError as exc:
    raise ImportError(f"Ray is not installed; install it with: {EXTRA_HINT}") from exc

from qrank.ray.data import score_dataset, score_file_command  # noqa: E402
from qrank.ray.serve import build_app, serve_command  # noqa: E402

__all__ = ["build_app", "score_dataset", "score_file_command", "serve_command"]
