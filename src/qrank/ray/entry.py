"""The import path for ``serve run qrank.ray.entry:app`` and a KubeRay ``RayService``: the
application built from QRANK_* environment variables (see
:func:`qrank.ray.serve.app_from_env`)."""

from qrank.ray.serve import app_from_env

app = app_from_env()
