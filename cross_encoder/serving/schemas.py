"""Request and response bodies of the rerank server (pydantic v2), in the shapes clients already
speak: Hugging Face text-embeddings-inference `POST /rerank` and Cohere/Jina `POST /v1/rerank`.

Types are strict (a number is not a string, `"true"` is not a boolean) so a wrong field is a 422
naming it instead of a silent coercion; unknown fields are ignored, so clients that send extra
options (Cohere's `rank_fields`, `max_chunks_per_doc`, ...) keep working.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictInt, StrictStr
from pydantic_core import PydanticCustomError


class TeiRerankRequest(BaseModel):
    query: StrictStr
    texts: list[StrictStr]
    truncate: StrictBool = False
    # TEI's option; only the training rows' direction (cut the document's tail) exists here.
    truncation_direction: Literal["Right", "right"] = "Right"
    raw_scores: StrictBool = False
    return_text: StrictBool = False


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def _document_text(value: Any) -> Any:
    """A Cohere/Jina document is a string or an object with a string `text`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    raise PydanticCustomError("document_type", "a document must be a string or an object with a string `text`")


class CohereRerankRequest(BaseModel):
    model: StrictStr | None = None  # accepted and ignored: a server serves one model
    query: StrictStr
    documents: list[Annotated[str, BeforeValidator(_document_text)]]
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = False


class TextDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | None = None


class Usage(BaseModel):
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    usage: Usage


class ErrorBody(BaseModel):
    error: str
    error_type: str
