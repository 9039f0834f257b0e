"""Start ``qrank serve`` as a real subprocess on a free port, for tests that speak HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def metrics(client: httpx.Client) -> dict[str, float]:
    """The server's unlabelled Prometheus samples, by name."""
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(\S+) ([0-9.e+-]+)$", text, flags=re.M)}


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running ``qrank serve``; ``url`` is its base URL."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    @classmethod
    def start(cls, model: str | Path, *args: str, env: dict[str, str] | None = None,
              log: Path | None = None, timeout: float = 120.0) -> ServerProcess:
        port = free_port()
        argv = [sys.executable, "-m", "qrank.cli", "serve", str(model), "--port", str(port),
                *args]
        server = cls(argv, port, env, log)
        server.wait_ready(timeout)
        return server

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qrank serve exited with {self.proc.returncode}: "
                                   f"{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"qrank serve not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
