"""Request and response models of the compatible routes (OpenAI embeddings and models, Cohere/Jina rerank).

Field names and defaults follow those protocols; limits are the native ones (``SEMSEARCH_MAX_*``) and are
checked by each request's ``check_limits``. Fields of those protocols that semsearch does not implement
are declared so that sending one gets a clear 400 (``unsupported_parameter``) rather than being ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from app.errors import ApiError, invalid
from app.schemas import INPUT_TYPE_DESCRIPTION, InputType, Int, NonBlank, Text, check_range, check_text, integral
from app.settings import Settings
from semsearch.text import NON_BLANK_PATTERN, text_problem


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, "unsupported_parameter", f"{param}: {why}", {"param": param})


class _CompatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, rate_limit_error or server_error"
    )
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str | None = Field(description="The service's error code (invalid_input, model_not_found, overloaded, ...).")


class OpenAIErrorResponse(BaseModel):
    """The error shape on the compatible routes (OpenAI's)."""

    error: OpenAIErrorBody


# ----------------------------------------------------------------------------------- OpenAI embeddings

# What the schema promises: text. Token-id arrays still parse, to be refused with a clear 400, but the
# schema does not offer them (a schema-driven client or fuzzer must not expect them to work).
_TEXTS_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "minLength": 1, "pattern": NON_BLANK_PATTERN},
            {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "pattern": NON_BLANK_PATTERN}},
        ]
    }
)
# Protocol fields semsearch does not implement: absent (null) in the schema, a clear 400 when sent.
Unsupported = Annotated[Any, WithJsonSchema({"type": "null", "deprecated": True})]


class EmbeddingsRequest(_CompatRequest):
    """``POST /v1/embeddings`` (OpenAI)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["a large wild cat"]}]
        }
    )

    input: Annotated[str | list[str] | list[int] | list[list[int]], _TEXTS_SCHEMA] = Field(
        description="A text or a list of texts (at most max_embed_texts). Token-id arrays are refused (400)."
    )
    model: Text = Field(description="The served encoder: its id or an alias from GET /v1/models.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: little-endian float32 bytes, base64-encoded."
    )
    dimensions: Int | None = Field(None, description="Only the model's own dimension is accepted.")
    input_type: InputType | None = Field(None, description=INPUT_TYPE_DESCRIPTION)
    user: Text | None = Field(None, description="Accepted (valid text) and ignored.")

    def texts(self, s: Settings) -> list[str]:
        """The texts to embed, with the native limits applied (400 for token ids)."""
        raw = [self.input] if isinstance(self.input, str) else list(self.input)
        if not raw:
            raise invalid(["body", "input"], "must not be an empty list", "too_short")
        if not all(isinstance(t, str) for t in raw):
            raise unsupported("input", "token-id arrays are not supported; send text (a string or a list of strings)")
        texts = [str(t) for t in raw]
        check_range(["body", "input"], len(texts), s.max_embed_texts, "SEMSEARCH_MAX_EMBED_TEXTS")
        for i, t in enumerate(texts):
            loc = ["body", "input"] if isinstance(self.input, str) else ["body", "input", str(i)]
            problem = text_problem(t)
            if problem:
                raise invalid(loc, problem)
            check_text(loc, t, s.max_text_chars, "SEMSEARCH_MAX_TEXT_CHARS")
        return texts


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Numbers, or a base64 string with encoding_format=base64.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the encoder read (special tokens included, after truncation).")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this service started (Unix seconds).")
    owned_by: str = "semsearch"
    kind: Literal["embedding", "rerank"] = Field(description="What the model serves (semsearch extension).")
    aliases: list[str] = Field(description="Other names accepted in `model` (semsearch extension).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------------- Cohere / Jina rerank


class RerankDocument(_CompatRequest):
    text: NonBlank


class CompatRerankRequest(_CompatRequest):
    """``POST /v1/rerank`` (Cohere v1, Jina) and ``POST /v2/rerank`` (Cohere v2)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": "a large wild cat", "documents": ["a lion", "a spoon"], "top_n": 1}]}
    )

    model: Text | None = Field(None, description="Optional; when given, the reranker's id or alias (GET /v1/models).")
    query: NonBlank
    documents: list[NonBlank | RerankDocument] = Field(
        min_length=1, description='Texts or {"text": ...} objects (at most max_rerank_texts), not blank.'
    )
    top_n: Annotated[int, Field(ge=1), BeforeValidator(integral)] | None = Field(
        None, description="Return only the best top_n (default: all)."
    )
    return_documents: bool = Field(False, description='Include {"text": ...} in each result.')
    raw_scores: bool = Field(
        False, description="The cross-encoder's sigmoid(logit) instead of the card's (fused) score, as /rerank."
    )
    # protocol fields semsearch does not implement: refused with a clear 400 when sent
    rank_fields: Unsupported = None
    max_chunks_per_doc: Unsupported = None
    max_tokens_per_doc: Unsupported = None

    def texts(self, s: Settings) -> list[str]:
        for name, why in (
            ("rank_fields", "not supported: send the text to rank as the document (or its text field)"),
            ("max_chunks_per_doc", "not supported: documents are truncated to the reranker's max_length"),
            ("max_tokens_per_doc", "not supported: documents are truncated to the reranker's max_length"),
        ):
            if getattr(self, name) is not None:
                raise unsupported(name, why)
        texts = [d if isinstance(d, str) else d.text for d in self.documents]
        check_text(["body", "query"], self.query, s.max_query_chars, "SEMSEARCH_MAX_QUERY_CHARS")
        check_range(["body", "documents"], len(texts), s.max_rerank_texts, "SEMSEARCH_MAX_RERANK_TEXTS")
        for i, t in enumerate(texts):
            check_text(["body", "documents", str(i)], t, s.max_text_chars, "SEMSEARCH_MAX_TEXT_CHARS")
        return texts


class RerankResultDocument(BaseModel):
    text: str


class CompatRerankResult(BaseModel):
    index: int = Field(description="Position in the request's documents.")
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int = Field(description="Tokens the cross-encoder read (query + document pairs, truncated).")


class CompatRerankResponse(BaseModel):
    id: str
    results: list[CompatRerankResult]
    model: str
    usage: RerankUsage
