"""The Qwen3-Reranker prompt template and detection of inputs a client already formatted.

A scored pair is split in two texts, each a plain string:

* the *query side*: template prefix, ``<Instruct>`` line and ``<Query>`` line. It is the same
  for every document of a query, so the engine can compute it once;
* the *document body*: ``<Document>: {doc}``, always followed by the template suffix.

Concatenating them gives exactly the model card's ``prefix + body + suffix``. A Jinja score
template (:mod:`qrank.score_template`) renders into the same two sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SYSTEM_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

QUERY_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n"
DOCUMENT_TEMPLATE = "<Document>: {doc}"
# Where the query line starts: the text before it (system prefix, instruction) is the same for
# every query under one instruction.
QUERY_LINE = "\n<Query>:"


@dataclass(frozen=True)
class PromptPair:
    """One (query, document) pair rendered into the template's two sides.

    ``query_side`` is the system prefix followed by the query body (instruction and query);
    ``doc_body`` is the document body, without the suffix that always follows it. The whole
    prompt is ``query_side + doc_body + suffix``. ``head_chars``: how many leading characters
    of ``query_side`` are the template's head, common to every query (None: up to the
    ``<Query>`` line, as the built-in template has it). ``doc_span``: where the client's
    document text lies in ``doc_body`` (start, end), so a long document can be split into
    windows; None when unknown (the client formatted the document itself).
    """

    query_side: str
    doc_body: str
    suffix: str = SUFFIX
    head_chars: int | None = None
    doc_span: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        """The whole prompt as one string."""
        return self.query_side + self.doc_body + self.suffix


class ScoreTemplate(Protocol):
    """How (query, document) pairs become prompt text: the built-in template or a Jinja one.

    ``prefix`` starts every prompt, ``suffix`` ends it (with no request variables), and
    ``doc_label`` is the text of a document body before the document itself.
    """

    prefix: str
    suffix: str
    doc_label: str

    def render(self, query: str, documents: list[str], instruction: str | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> list[PromptPair]: ...


class BuiltinTemplate:
    """The model card's template (:func:`render_pairs`); it takes no template variables."""

    prefix = SYSTEM_PREFIX
    suffix = SUFFIX
    doc_label = DOCUMENT_TEMPLATE.split("{", 1)[0]

    def render(self, query: str, documents: list[str], instruction: str | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> list[PromptPair]:
        if instruction is None and chat_template_kwargs:
            instruction = chat_template_kwargs.get("instruction")
        return render_pairs(query, documents, instruction)


def already_rendered(template: ScoreTemplate | type[BuiltinTemplate], query: str,
                     documents: list[str]) -> bool:
    """True when the client already applied ``template`` (as the vLLM recipe does): the query
    starts with its prefix and every document ends with its suffix."""
    return (bool(template.prefix) and query.startswith(template.prefix)
            and all(d.endswith(template.suffix) for d in documents))


def is_preformatted(query: str, documents: list[str]) -> bool:
    """True when the client already applied the built-in template (:func:`already_rendered`)."""
    return already_rendered(BuiltinTemplate, query, documents)


def render_query_body(query: str, instruction: str | None) -> str:
    """The ``<Instruct>``/``<Query>`` lines for a raw query (instruction None: the default)."""
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return QUERY_TEMPLATE.format(instruction=instruction, query=query)


def render_pairs(
    query: str, documents: list[str], instruction: str | None = None
) -> list[PromptPair]:
    """Render one query and its documents into template sides.

    Preformatted inputs (see :func:`is_preformatted`) pass through unchanged: the query is the
    query side as it is, and each document minus the suffix is its body. ``instruction`` is then
    ignored, as the client already wrote its own into the query.
    """
    if is_preformatted(query, documents):
        return [PromptPair(query, d[: len(d) - len(SUFFIX)]) for d in documents]
    query_side = SYSTEM_PREFIX + render_query_body(query, instruction)
    label = len(DOCUMENT_TEMPLATE.split("{", 1)[0])
    return [PromptPair(query_side, DOCUMENT_TEMPLATE.format(doc=d),
                       doc_span=(label, label + len(d)))
            for d in documents]
