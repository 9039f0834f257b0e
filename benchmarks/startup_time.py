"""Seconds from launching ``qrank serve`` to ``/health`` answering 200, with the server's log.

    python benchmarks/startup_time.py models/qwen3-reranker-0.6b          # warm caches
    python benchmarks/startup_time.py models/qwen3-reranker-0.6b --cold   # empty caches

``--cold`` points torch.compile's cache (``TORCHINDUCTOR_CACHE_DIR``) and qrank's kernel cache
(``QRANK_KERNEL_CACHE``) at fresh empty folders, as on a machine's first start. Each log line is
printed with the seconds since launch, so the phases (reading weights, kernels, compile and
warm-up) can be read off.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_health(model: str, server_args: list[str], env: dict[str, str],
                   timeout: float) -> tuple[float, list[tuple[float, str]]]:
    """Seconds until ``/health`` says 200, and the server's log lines with their times."""
    port = free_port()
    argv = [sys.executable, "-m", "qrank.cli", "serve", model, "--port", str(port), *server_args]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - start, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"qrank serve exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.monotonic() - start, lines
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"not healthy after {timeout} s")
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory or Hub id, as `qrank serve` takes it")
    p.add_argument("--cold", action="store_true", help="start with empty compile and kernel caches")
    p.add_argument("--server-args", default="", help="more `qrank serve` flags, one string")
    p.add_argument("--timeout", type=float, default=600.0)
    ns = p.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="qrank-cold-") as tmp:
        if ns.cold:
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
            env["QRANK_KERNEL_CACHE"] = os.path.join(tmp, "kernels")
        seconds, lines = time_to_health(ns.model, shlex.split(ns.server_args), env, ns.timeout)
    for t, line in lines:
        print(f"{t:7.1f}  {line}")
    print(f"healthy after {seconds:.1f} s ({'cold' if ns.cold else 'warm'} caches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
