"""The README's first lines hold the two commands, its test command is what .ci/run runs, and
every ``qrank`` and benchmark command in the README's and docs/' bash blocks, and every
benchmark ``benchmarks/per_cpu.sh`` runs, parses as written (the flags exist, the values are
accepted)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys

import pytest
from doc_blocks import README, ROOT, commands, shell_commands

from qrank.cli import build_parser

HEAD = "\n".join(README.read_text(encoding="utf-8").splitlines()[:6])


def inline_commands(text: str, tool: str) -> list[list[str]]:
    """The commands in ``text``'s inline code spans that run ``tool``."""
    spans = re.findall(r"`([^`\n]+)`", text)
    return [argv for span in spans for argv in commands(span) if tool in argv[:3]]


def parses_as_qrank(argv: list[str]) -> argparse.Namespace:
    ns, extra = build_parser().parse_known_args(argv)
    assert not extra, f"qrank {shlex.join(argv)}: unrecognized {extra}"
    return ns


def test_the_first_lines_hold_the_serve_and_the_test_commands():
    (serve,) = [a for a in inline_commands(HEAD, "qrank") if a[:2] == ["qrank", "serve"]]
    assert parses_as_qrank(serve[1:]).model == "Qwen/Qwen3-Reranker-0.6B"
    assert ["python", "-m", "pytest", "-q"] in inline_commands(HEAD, "pytest"), "the tests"


def pip_installs(argv_list: list[list[str]]) -> list[list[str]]:
    """The arguments of each ``pip install`` (``python -m pip`` too), flags like --quiet out."""
    out = []
    for argv in argv_list:
        words = argv[2:] if argv[:2] == ["python", "-m"] else argv
        if words[:2] == ["pip", "install"]:
            out.append([w for w in words[2:] if w not in ("--quiet", "-q", "--upgrade")])
    return out


def test_the_readmes_test_command_is_what_ci_runs():
    """Same torch pin, installed first; qrank editable with the README's extras (CI may add
    more); then ``python -m pytest -q``."""
    readme = [a for a in commands(HEAD.split("Run the tests:")[1].split("`")[1])]
    ci = commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    r_pip, c_pip = pip_installs(readme), [p for p in pip_installs(ci) if p != ["pip"]]
    assert r_pip[0] == c_pip[0] and r_pip[0][0].startswith("torch=="), (r_pip, c_pip)

    def extras(args: list[str]) -> set[str]:
        (spec,) = [w for w in args if w.startswith(".[")]
        return set(spec[2:-1].split(","))

    assert "-e" in c_pip[1] and "-e" in r_pip[1]
    assert extras(r_pip[1]) <= extras(c_pip[1]) | {"test"} and "dev" in extras(c_pip[1]), (
        "CI installs the README's extras (dev includes test)")
    assert readme[-1] == ["python", "-m", "pytest", "-q"] and readme[-1] in ci


QRANK = [(f, a) for f, a in shell_commands() if a[0] == "qrank"]
DOCKER_RUN = [(f, a) for f, a in shell_commands() if a[:2] == ["docker", "run"]]
PER_CPU = ROOT / "benchmarks" / "per_cpu.sh"


def per_cpu_commands() -> list[list[str]]:
    """The benchmark commands of ``per_cpu.sh`` with its settings' defaults put in for the
    variables, and without the OpenVINO flags it adds only when told."""
    text = PER_CPU.read_text(encoding="utf-8")
    values = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", text, flags=re.M))
    values |= {"OUT": "results/per_cpu/cpu", "engines": "qrank,tuned"}
    out = []
    for argv in commands(text):
        if argv[:2] == ["step", "python"] and argv[2].startswith("benchmarks/"):
            out.append([re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], word)
                        for word in argv[1:] if word != "${openvino[@]}"])
    return out


BENCHMARKS = [(f, a) for f, a in shell_commands()
              if a[0] == "python" and a[1].startswith("benchmarks/")]
BENCHMARKS += [(PER_CPU.name, a) for a in per_cpu_commands()]


@pytest.mark.parametrize("argv", [a for _, a in QRANK],
                         ids=[f"{f}:{' '.join(a[1:3])}" for f, a in QRANK])
def test_every_qrank_command_in_the_docs_parses(argv):
    parses_as_qrank(argv[1:])


@pytest.mark.parametrize("argv", [a for _, a in DOCKER_RUN], ids=[f for f, _ in DOCKER_RUN])
def test_docker_run_commands_pass_qrank_serve_flags(argv):
    """What follows the image name (``qrank``) goes after the image's ``qrank serve`` entry."""
    rest = argv[argv.index("qrank") + 1:]
    ns = parses_as_qrank(["serve", "--host", "0.0.0.0", "--port", "8000", *rest])
    assert ns.model == rest[0]


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("argv", [a for _, a in BENCHMARKS],
                         ids=[a[1].removeprefix("benchmarks/") for _, a in BENCHMARKS])
def test_every_benchmark_command_in_the_docs_parses(argv, monkeypatch):
    """The script's own parser takes the command; it stops there, before any work."""
    path = ROOT / argv[1]
    monkeypatch.syspath_prepend(str(path.parent))  # the scripts import each other
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", argv[1:])
    with pytest.raises(_Parsed):
        module.main()
