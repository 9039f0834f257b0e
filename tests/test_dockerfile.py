"""The Dockerfile, read as text (no docker needed): its commands are the README's, its flags
exist, and what it copies is in the repo and not ignored by .dockerignore. The same for the
other recipes: the systemd unit and the Kubernetes Deployment in docs/deployment.md and
deploy/rayservice.yaml run commands, ports and variables qrank has."""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from doc_blocks import blocks

from qrank.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEPLOYMENT = ROOT / "docs" / "deployment.md"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every Dockerfile line, continuations joined."""
    out: list[tuple[str, str]] = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def exec_form(name: str) -> list[str]:
    (value,) = args_of(name)
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{name} should use the exec form, a JSON list"
    return parsed


def torch_pin(text: str) -> str:
    pins = set(re.findall(r"torch==([0-9][0-9A-Za-z.+]*)", text))
    assert len(pins) == 1, f"expected one torch pin, found {sorted(pins)}"
    return pins.pop()


def test_torch_is_the_readmes_pin_from_the_cpu_index():
    runs = [r for r in args_of("RUN") if "torch==" in r]
    assert len(runs) == 1, runs
    readme_test_line = next(line for line in README.read_text().splitlines()
                            if "pytest" in line and "torch==" in line)
    assert torch_pin(runs[0]) == torch_pin(readme_test_line)
    assert torch_pin(runs[0]) == torch_pin((ROOT / ".ci" / "run").read_text())
    assert CPU_INDEX in shlex.split(runs[0])


def test_entrypoint_is_qrank_serve_as_the_readme_shows_it():
    entry = exec_form("ENTRYPOINT")
    assert entry[:2] == ["qrank", "serve"]
    readme = README.read_text()
    assert " ".join(entry) in readme, "the README should show the image's entry command"
    (model,) = exec_form("CMD")
    ns = build_parser().parse_args([*entry[1:], model])
    assert (ns.host, ns.port) == ("0.0.0.0", 8000)
    assert "8000" in args_of("EXPOSE")[0].split()
    run = re.search(r"docker run [^\n`]*", readme)
    assert run, "the README should show the docker run command"
    words = run.group(0).split()
    assert "8000:8000" in words[words.index("-p") + 1]
    assert words[-1] == model, "the README's docker run should serve the image's default model"


def test_the_kernels_are_built_in_the_image_where_the_cpu_allows():
    env = " ".join(args_of("ENV"))
    cache = re.search(r"QRANK_KERNEL_CACHE=(\S+)", env)
    assert cache and cache.group(1).startswith("/"), "QRANK_KERNEL_CACHE: a path in the image"
    builds = [r for r in args_of("RUN") if "amx_linear.load()" in r]
    assert len(builds) == 1 and "cpu_attention.load()" in builds[0]
    order = [(word, rest) for word, rest in instructions() if word in ("RUN", "COPY")]
    install = next(i for i, (w, r) in enumerate(order) if w == "RUN" and "pip install ." in r)
    assert order.index(("RUN", builds[0])) > install, "build the kernels after installing qrank"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#")]


@pytest.mark.parametrize("path", ["models", ".venv", "results", ".git"])
def test_dockerignore_keeps_local_state_out(path):
    assert path in dockerignore_patterns()


def test_copied_files_exist_and_are_not_ignored():
    ignored = dockerignore_patterns()
    copies = args_of("COPY")
    assert copies
    for args in copies:
        *sources, _dest = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repo"
            assert not any(fnmatch.fnmatch(src, p) for p in ignored), f"{src} is dockerignored"
    copied = {w for args in copies for w in shlex.split(args)}
    # pip install . needs the project file, the README it names, and the sources
    assert {"pyproject.toml", "README.md", "src"} <= copied


def serve_args(argv: list[str]) -> argparse.Namespace:
    """``qrank serve`` parsed as the CLI does (unknown flags are an error there)."""
    ns, extra = build_parser().parse_known_args(["serve", *argv])
    assert not extra, f"qrank serve does not take {extra}"
    return ns


def default_shutdown_timeout() -> float:
    return serve_args(["m"]).shutdown_timeout


def test_the_systemd_unit_runs_qrank_serve_with_flags_it_has():
    (unit,) = blocks(DEPLOYMENT, "ini")
    keys: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    (exec_start,) = keys["ExecStart"]
    binary, *argv = shlex.split(exec_start)
    assert binary.endswith("/bin/qrank") and argv[0] == "serve"
    ns = serve_args(argv[1:])
    assert (ns.host, ns.port) == ("0.0.0.0", 8000)
    env = dict(v.split("=", 1) for v in keys["Environment"])
    assert set(env) <= {"QRANK_API_KEY", "QRANK_KERNEL_CACHE", "HF_HOME"}, env
    cache = "/var/cache/" + keys["CacheDirectory"][0]
    assert all(v.startswith(cache + "/") for k, v in env.items() if k != "QRANK_API_KEY"), (
        "the caches lie in the CacheDirectory systemd creates for User=")
    assert keys["KillSignal"] == ["SIGTERM"]
    assert float(keys["TimeoutStopSec"][0]) > default_shutdown_timeout()


def test_the_kubernetes_deployment_passes_serve_flags_to_the_image():
    (manifest,) = blocks(DEPLOYMENT, "yaml")
    pod = yaml.safe_load(manifest)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    entry = exec_form("ENTRYPOINT")
    assert "command" not in container, "the image's entry point runs qrank serve"
    ns = serve_args([*entry[2:], *container["args"]])
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert port == ns.port and str(port) in args_of("EXPOSE")[0].split()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port}
    limit = container["resources"]["limits"]["cpu"]
    assert ns.threads == int(limit), "--threads should be the CPU limit (Sizing threads)"
    assert pod["terminationGracePeriodSeconds"] > default_shutdown_timeout()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(ns.model.startswith(m + "/") for m in mounts), "the model lies on a volume"


def test_the_rayservice_imports_the_entry_app_with_variables_it_reads():
    doc = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    assert doc["kind"] == "RayService" and doc["apiVersion"] == "ray.io/v1"
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    source = (ROOT / "src" / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"^{name} = ", source, flags=re.M), app["import_path"]
    read = set(re.findall(r'"(QRANK_[A-Z_]+)"', (ROOT / "src/qrank/ray/serve.py").read_text()))
    assert set(app["runtime_env"]["env_vars"]) <= read, "variables app_from_env reads"
    cluster = doc["spec"]["rayClusterConfig"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"ray\[serve,data\]>=([0-9.]+)"', pyproject).group(1)
    assert cluster["rayVersion"].startswith(pinned), "rayVersion: the Ray the extra installs"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
        assert container["command"] == [] and container["args"] == [], (
            "KubeRay starts Ray itself, not the image's qrank serve")
