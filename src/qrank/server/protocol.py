"""Request, response and error models of the HTTP API (vLLM, Jina and Cohere compatible)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, model_validator


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


class TextDocument(BaseModel):
    """A document given as an object, as Cohere and Jina clients send it."""

    text: Text


class RerankRequest(BaseModel):
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

    priority: int = Field(
        0, description="the request's priority (lower means earlier handling; default: 0) "
                       "under --scheduling-policy priority; any other value is refused by a "
                       "server that does not schedule by priority (vLLM's field)"
    )

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreRequest(BaseModel):
    """POST /score, /v1/score: 1:1, 1:N and N:N pairs, as vLLM's score API."""

    model_config = ConfigDict(extra="allow")

    model: Text | None = None
    text_1: Text | list[Text] = Field(
        ..., validation_alias=AliasChoices("text_1", "queries"), description="query or queries"
    )
    text_2: Text | list[Text] = Field(
        ..., validation_alias=AliasChoices("text_2", "documents"),
        description="document or documents",
    )
    instruction: Text | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    truncate: bool = Field(True, validation_alias=AliasChoices("truncate", "truncation"))
    cache_salt: Text | None = Field(
        None, description="pairs with different salts never share cached scores (vLLM's "
                          "field; a tenant's own salt keeps its requests apart)"
    )

    priority: int = Field(
        0, description="the request's priority (lower means earlier handling; default: 0) "
                       "under --scheduling-policy priority; any other value is refused by a "
                       "server that does not schedule by priority (vLLM's field)"
    )

    @model_validator(mode="after")
    def _non_empty(self) -> ScoreRequest:
        for name in ("text_1", "text_2"):
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                raise ValueError(f"{name} must hold at least one text")
        return self


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


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"rerank-{uuid.uuid4().hex}")
    model: str
    usage: Usage
    results: list[RerankResult]


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


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
