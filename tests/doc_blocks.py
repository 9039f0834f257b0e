"""The README's and docs/' code blocks and the shell commands in them, read from the files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = {"&", "&&", "|", "||", ";"}
REDIRECTS = {">", ">>", "<", ">&", "&>"}


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``path`` tagged ``lang``."""
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def commands(script: str) -> list[list[str]]:
    """Each simple command of a shell snippet as its argv: continuations joined, comments,
    redirections and leading VAR=value assignments left out, split at ``&``, ``|``, ``;``."""
    out: list[list[str]] = []
    for line in _lines(script):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        argv: list[str] = []
        words = iter(lex)
        for word in words:
            if word in SEPARATORS:
                out.append(argv)
                argv = []
            elif word in REDIRECTS:
                next(words, None)
            elif argv or not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
                argv.append(word)
        out.append(argv)
    return [argv for argv in out if argv]


def _lines(script: str) -> list[str]:
    """Logical lines: continuations joined, a single-quoted text over lines kept whole, lines
    that are only a comment left out."""
    lines: list[str] = []
    for line in script.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if lines and lines[-1].count("'") % 2:
            lines[-1] += "\n" + line
        else:
            lines.append(line)
    return lines


def shell_commands() -> list[tuple[str, list[str]]]:
    """(file name, argv) of every command in the bash blocks of the README and docs/."""
    return [(path.name, argv) for path in DOCS for block in blocks(path, "bash")
            for argv in commands(block)]
