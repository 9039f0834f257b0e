"""Request, response and error models of the HTTP API (vLLM, Jina and Cohere compatible)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)


def no_lone_surrogates(value: str) -> str:
    """Refuse strings that are not text: a JSON escape such as ``"\\ud800"`` decodes to a lone
    UTF-16 surrogate, which no tokenizer can encode. Control characters and NUL are text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise ValueError(f"holds a lone UTF-16 surrogate (U+{ord(bad):04X}) at character "
                         f"{exc.start}, which is not text; send valid UTF-8") from None
    return value


Text = Annotated[str, AfterValidator(no_lone_surrogates)]
Texts = Text | list[Text]


def no_lone_surrogates_within(value: Any) -> Any:
    """:func:`no_lone_surrogates` for every string in a JSON value, keys included."""
    if isinstance(value, str):
        return no_lone_surrogates(value)
    if isinstance(value, dict):
        for k, v in value.items():
            no_lone_surrogates(k)
            no_lone_surrogates_within(v)
    elif isinstance(value, list):
        for v in value:
            no_lone_surrogates_within(v)
    return value


TemplateKwargs = Annotated[dict[str, Any], AfterValidator(no_lone_surrogates_within)]
REQUEST_ID_MAX = 256


def valid_request_id(value: str) -> str:
    """A request id is echoed in the ``X-Request-Id`` header: printable ASCII, no spaces."""
    if not 0 < len(value) <= REQUEST_ID_MAX or not all("!" <= c <= "~" for c in value):
        raise ValueError(f"must be 1 to {REQUEST_ID_MAX} printable ASCII characters without "
                         "spaces, as it is echoed in the X-Request-Id header")
    return value


class FieldError(ValueError):
    """Fields of a request that cannot go together; ``param`` names the one to change."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class VLLMOptions(BaseModel):
    """Fields of vLLM's pooling API that /rerank and /score both take."""

    truncation_side: Literal["left", "right"] | None = Field(
        None, description="which end of a document a pair too long for truncate_prompt_tokens "
                          "(or max_model_len) loses: 'right' (default) keeps its start, 'left' "
                          "its end; the template is never cut")
    max_tokens_per_query: int | None = Field(
        None, ge=1, description="cut the query's text to this many tokens before the template "
                                "is applied")
    chat_template_kwargs: TemplateKwargs | None = Field(
        None, description="variables of the score template; its 'instruction' works as the "
                          "instruction field")
    use_activation: bool | None = Field(
        None, description="false: the raw logit (logit_yes - logit_no) instead of its sigmoid")
    request_id: Annotated[Text, AfterValidator(valid_request_id)] | None = Field(
        None, description="echoed as the response id and X-Request-Id header (default: the "
                          "X-Request-Id request header, else a new id)")
    user: Text | None = Field(None, description="the end user (OpenAI's field); ignored")
    priority: int = Field(
        0, description="the request's priority (lower means earlier handling; default: 0) "
                       "under --scheduling-policy priority; any other value is refused by a "
                       "server that does not schedule by priority (vLLM's field)"
    )

    def template_instruction(self) -> str | None:
        """The ``<Instruct>`` line: ``instruction`` or ``chat_template_kwargs.instruction``
        (None: the default); when both are given they must agree."""
        own: str | None = getattr(self, "instruction", None)
        kw = (self.chat_template_kwargs or {}).get("instruction")
        if kw is not None and not isinstance(kw, str):
            raise FieldError("chat_template_kwargs.instruction must be a string",
                             "chat_template_kwargs.instruction")
        if own is not None and kw is not None and own != kw:
            raise FieldError("instruction and chat_template_kwargs.instruction differ; send one "
                             "of them (or the same text in both)",
                             "chat_template_kwargs.instruction")
        return own if own is not None else kw


class TextDocument(BaseModel):
    """A document given as an object, as Cohere and Jina clients send it."""

    text: Text


MAX_CHUNKS_HELP = (
    "split a document too long to fit into at most this many windows and score it by its "
    "best window (Cohere v1's field; default: the server's --max-chunks-per-doc; 1: truncate)")
OVERLAP_HELP = ("tokens consecutive windows of a split document share (default: the server's "
                "--chunk-overlap-tokens)")


class RerankRequest(VLLMOptions):
    """POST /rerank, /v1/rerank, /v2/rerank."""

    model_config = ConfigDict(extra="allow")

    model: Text | None = Field(None, description="served model name; optional")
    query: Text = Field(..., description="the search query")
    documents: list[Text | TextDocument] = Field(
        ..., min_length=1, description="texts to rerank, as strings or {'text': ...} objects"
    )
    top_n: int | None = Field(
        None, ge=0, description="return only the n best results (0 or absent: all)"
    )
    return_documents: bool = Field(True, description="echo each document's text in results")
    instruction: Text | None = Field(
        None, description="the <Instruct> line of the Qwen3-Reranker template (default: the "
                          "model card's web-search instruction)"
    )
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="cut each pair to this many tokens (-1: max_model_len)"
    )
    truncate: bool = Field(
        True, validation_alias=AliasChoices("truncate", "truncation"),
        description="cut inputs longer than max_model_len inside the document; false: reject "
                    "them with 400",
    )
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="cut each document's text to this many tokens (Cohere v2)"
    )
    cache_salt: Text | None = Field(
        None, description="pairs with different salts never share cached scores (vLLM's "
                          "field; a tenant's own salt keeps its requests apart)"
    )
    max_chunks_per_doc: int | None = Field(
        None, ge=1, description=MAX_CHUNKS_HELP)
    chunk_overlap_tokens: int | None = Field(
        None, ge=0, description=OVERLAP_HELP)

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


FIRST_SIDE = ("text_1", "queries", "data_1")
SECOND_SIDE = ("text_2", "documents", "items", "data_2")


class ScoreRequest(VLLMOptions):
    """POST /score, /v1/score: 1:1, 1:N and N:N pairs, as vLLM's score API.

    The two sides go by any of vLLM's names: ``text_1``/``text_2``, ``queries``/``documents``,
    ``queries``/``items``, ``data_1``/``data_2`` (any name of one side with any of the other).
    """

    model_config = ConfigDict(extra="allow")

    model: Text | None = None
    text_1: Texts | None = Field(None, description="query or queries (or: queries, data_1)")
    text_2: Texts | None = Field(
        None, description="document or documents (or: documents, items, data_2)")
    queries: Texts | None = None
    documents: Texts | None = None
    items: Texts | None = None
    data_1: Texts | None = None
    data_2: Texts | None = None
    instruction: Text | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    truncate: bool = Field(True, validation_alias=AliasChoices("truncate", "truncation"))
    cache_salt: Text | None = Field(
        None, description="pairs with different salts never share cached scores (vLLM's "
                          "field; a tenant's own salt keeps its requests apart)"
    )
    max_chunks_per_doc: int | None = Field(None, ge=1, description=MAX_CHUNKS_HELP)
    chunk_overlap_tokens: int | None = Field(None, ge=0, description=OVERLAP_HELP)

    def sides(self) -> tuple[tuple[str, str | list[str]], tuple[str, str | list[str]]]:
        """``(name, value)`` of the query side and of the document side, as the client named
        them; :class:`FieldError` when a side is missing, empty or given twice."""
        return self._side(FIRST_SIDE, "queries"), self._side(SECOND_SIDE, "documents")

    def _side(self, names: tuple[str, ...], what: str) -> tuple[str, str | list[str]]:
        given = [n for n in names if getattr(self, n) is not None]
        if not given:
            raise FieldError(f"no {what}: send {names[0]} (or {', '.join(names[1:])})",
                             names[0])
        if len(given) > 1:
            raise FieldError(f"{' and '.join(given)} both give the {what}; send one of them",
                             given[1])
        value = getattr(self, given[0])
        if isinstance(value, list) and not value:
            raise FieldError(f"{given[0]} must hold at least one text", given[0])
        return given[0], value


class Usage(BaseModel):
    """Tokens of every pair, template included, whether computed or answered from the score
    cache; ``cached_pairs`` (qrank's extension) counts the pairs the cache answered."""

    prompt_tokens: int
    total_tokens: int
    cached_pairs: int = 0


class ScoreUsage(Usage):
    completion_tokens: int = 0


class RerankDocument(BaseModel):
    text: str
    multi_modal: Any | None = None


class ChunkInfo(BaseModel):
    """The best window of a document split into windows: ``document[start:end]`` (character
    offsets into the document as sent), its index among the document's windows, its score."""

    index: int
    start: int
    end: int
    relevance_score: float


class WithChunk(BaseModel):
    """A result whose ``chunk`` is written only for a document split into windows."""

    # no return annotation: the response schema stays the model's own
    @model_serializer(mode="wrap")
    def _drop_missing_chunk(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if data.get("chunk", 0) is None:
            del data["chunk"]
        return data


class RerankResult(WithChunk):
    index: int
    document: RerankDocument | None = None
    relevance_score: float
    chunk: ChunkInfo | None = None


class RerankResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"rerank-{uuid.uuid4().hex}")
    model: str
    usage: Usage
    results: list[RerankResult]


class ScoreData(WithChunk):
    index: int
    object: Literal["score"] = "score"
    score: float
    chunk: ChunkInfo | None = None


class ScoreResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"score-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qrank"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI-style error body; ``code`` is the HTTP status."""

    error: ErrorInfo


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "BadRequestError",
    429: "RateLimitError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    info = ErrorInfo(message=message, type=ERROR_TYPES.get(status, "Error"), param=param,
                     code=status)
    return ErrorResponse(error=info).model_dump()
