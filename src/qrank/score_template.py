"""Jinja score templates of vLLM's kind (``--chat-template``), rendered into prompt sides.

A template receives ``messages`` (roles ``query`` and ``document``, plus ``system`` holding
the instruction for Sentence Transformers checkpoints), the request's
``chat_template_kwargs`` and ``instruction`` as variables, and renders the whole prompt. It is
rendered with a sentinel in place of the document, and split around it into the three pieces
the tokenizer keeps apart (:class:`qrank.prompts.PromptPair`):

* the *query side*: the text before the document, up to its last newline (the Qwen3
  pre-tokenizer always ends a piece there, so the query side tokenizes on its own as it does
  inside the whole prompt);
* the *document body*: the rest of that text (e.g. ``<Document>: ``) and the document;
* the *suffix*: the text after the document, never truncated.

The environment is the one transformers and vLLM render chat templates in (sandboxed,
``trim_blocks``, ``lstrip_blocks``, the file's last newline dropped), so a template renders
here as it does there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qrank.prompts import PromptPair, already_rendered

logger = logging.getLogger(__name__)

# stand-ins for the query, the document and the instruction; no real text holds them
QUERY_SENTINEL = "\x00qrank-query\x00"
DOC_SENTINEL = "\x00qrank-document\x00"
INSTRUCTION_SENTINELS = ("\x00qrank-instruction-1\x00", "\x00qrank-instruction-2\x00")
# a document the template must render verbatim: spaces, newlines, braces and markup
DOC_PROBE = "  a <b>{{ probe }}</b>\n\n\tend  "
RESERVED = ("messages",)
# the model card's prompt as a score template, shipped with qrank
QWEN3_TEMPLATE_FILE = Path(__file__).resolve().parent / "templates" / "qwen3_reranker.jinja"


class TemplateError(ValueError):
    """A score template that cannot render a pair the way qrank needs, or failed to render."""


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    """Compile ``source`` as transformers compiles chat templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"the score template does not compile: {exc} "
                            f"(line {exc.lineno})") from exc


def read_template(value: str) -> str:
    """The template source of ``--chat-template``: a file's text, or the template itself
    (a value holding ``{{`` or ``{%``), as vLLM takes it."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    raise TemplateError(f"--chat-template {value!r}: no such file, and not a Jinja template")


def safe_split(text: str) -> int:
    """Where ``text`` (what precedes the document) splits into query side and document-body
    lead: after its last newline, when a character other than a newline follows it; else 0."""
    cut = text.rfind("\n") + 1
    return cut if 0 < cut < len(text) else 0


class JinjaTemplate:
    """A Jinja score template, rendered into :class:`PromptPair` s.

    ``system_instruction``: pass the instruction as a leading ``system`` message too, as
    Sentence Transformers passes its prompt; ``default_instruction`` is then the instruction
    when a request gives none (the checkpoint's default prompt). ``variables`` are defaults
    of the template's variables (e.g. Sentence Transformers' ``add_generation_prompt``).
    """

    def __init__(self, source: str, *, system_instruction: bool = False,
                 default_instruction: str | None = None,
                 variables: dict[str, Any] | None = None, name: str = "score template") -> None:
        self.source = source
        self.name = name
        self.template = compile_template(source)
        self.system_instruction = system_instruction
        self.default_instruction = default_instruction
        self.variables = {"add_generation_prompt": False, **(variables or {})}
        before, self.suffix = self._split(QUERY_SENTINEL, None, None)
        if QUERY_SENTINEL in self.suffix:
            raise TemplateError(f"the {name} renders the query after the document; qrank "
                                "needs the query first (it computes a query's side once)")
        if QUERY_SENTINEL not in before:
            raise TemplateError(f"the {name} does not render the query message (role 'query')")
        self.doc_label = before[safe_split(before):]
        self.prefix = self._prefix()
        probe = self._render(QUERY_SENTINEL, DOC_PROBE, None, None)
        if probe != before + DOC_PROBE + self.suffix:
            raise TemplateError(f"the {name} changes the document's text (e.g. trims it); "
                                "qrank needs it rendered as given")
        if not safe_split(before):
            logger.warning("the %s has no newline between the query and the document: the "
                           "query side and the document are tokenized apart there, which may "
                           "differ from tokenizing the prompt whole", name)

    def _prefix(self) -> str:
        """The text every prompt starts with, whatever the query and instruction."""
        a, _ = self._split(QUERY_SENTINEL, INSTRUCTION_SENTINELS[0], None)
        b, _ = self._split(QUERY_SENTINEL, INSTRUCTION_SENTINELS[1], None)
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        common = a[: min(n, a.index(QUERY_SENTINEL))]
        return common[: common.rfind("\n") + 1]

    def _render(self, query: str, document: str, instruction: str | None,
                kwargs: dict[str, Any] | None) -> str:
        variables = {**self.variables, **(kwargs or {})}
        if instruction is None:
            instruction = variables.get("instruction", self.default_instruction)
        if instruction is not None:
            variables["instruction"] = instruction
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        if self.system_instruction and instruction is not None:
            messages.insert(0, {"role": "system", "content": instruction})
        for name in RESERVED:
            variables.pop(name, None)
        try:
            return self.template.render(messages=messages, **variables)
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateError(f"the {self.name} failed to render: {exc}") from exc
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            raise TemplateError(f"the {self.name} failed to render: "
                                f"{type(exc).__name__}: {exc}") from exc

    def _split(self, query: str, instruction: str | None,
               kwargs: dict[str, Any] | None) -> tuple[str, str]:
        """The rendered prompt before and after the document."""
        text = self._render(query, DOC_SENTINEL, instruction, kwargs)
        if text.count(DOC_SENTINEL) != 1:
            raise TemplateError(f"the {self.name} must render the document message (role "
                                f"'document') exactly once; it rendered it "
                                f"{text.count(DOC_SENTINEL)} times")
        before, after = text.split(DOC_SENTINEL)
        return before, after

    def render(self, query: str, documents: list[str], instruction: str | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> list[PromptPair]:
        """Render one query with its documents (``instruction`` None: the template's own).

        Inputs a client already rendered with this template (the query starts with its prefix,
        every document ends with its suffix) pass through, as with the built-in template."""
        if already_rendered(self, query, documents):
            return [PromptPair(query, d[: len(d) - len(self.suffix)], self.suffix)
                    for d in documents]
        before, suffix = self._split(query, instruction, chat_template_kwargs)
        cut = safe_split(before)
        query_side, lead = before[:cut], before[cut:]
        head, _ = self._split(QUERY_SENTINEL, instruction, chat_template_kwargs)
        head = head[: head.index(QUERY_SENTINEL)]
        head_chars = head.rfind("\n") + 1
        if query_side[:head_chars] != head[:head_chars]:
            head_chars = 0
        return [PromptPair(query_side, lead + d, suffix, head_chars,
                           (len(lead), len(lead) + len(d))) for d in documents]

    def __repr__(self) -> str:
        return f"JinjaTemplate({self.name!r})"
