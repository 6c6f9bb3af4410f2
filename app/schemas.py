"""Request and response models of the HTTP API.

Structural rules (types, non-blank text, ``k >= 1``) are declared on the fields; limits that come from
the settings (``max_k``, ``max_query_chars``, ...) are checked by each request's ``check_limits``,
which raises a 422 in the same shape as a field error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.errors import invalid
from app.settings import Settings
from semsearch.search import Mode


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


def check_text(loc: list[str], text: str, limit: int, setting: str) -> None:
    if len(text) > limit:
        raise invalid(loc, f"is {len(text)} characters long; the limit is {limit} ({setting})", "string_too_long")


def check_range(loc: list[str], value: int, limit: int, setting: str) -> None:
    if value > limit:
        raise invalid(loc, f"must be at most {limit} ({setting}), got {value}", "less_than_equal")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchOptions(_Request):
    """Options shared by single and batch search."""

    k: int = Field(10, ge=1, description="Number of results per query (1..max_k).")
    mode: Mode = Field("dense", description="dense (cosine), lexical (BM25) or hybrid (fusion).")
    filter: dict[str, Any] | None = Field(
        None,
        description='Metadata filter: {"field": value | {"in": [...]} | {"gte": x, "lte": y}}.',
        examples=[{"pos": "n"}],
    )
    rerank: bool = Field(False, description="Rescore the top `candidates` with the cross-encoder reranker.")
    candidates: int = Field(50, ge=1, description="With rerank: bi-encoder hits rescored (at least k are used).")

    def check_options(self, s: Settings) -> None:
        check_range(["body", "k"], self.k, s.max_k, "SEMSEARCH_MAX_K")
        check_range(["body", "candidates"], self.candidates, s.max_candidates, "SEMSEARCH_MAX_CANDIDATES")


class SearchRequest(SearchOptions):
    """``POST /search``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"query": "a large wild cat", "k": 5}]})

    query: NonBlank = Field(description="The query text.")

    def check_limits(self, s: Settings) -> None:
        check_text(["body", "query"], self.query, s.max_query_chars, "SEMSEARCH_MAX_QUERY_CHARS")
        self.check_options(s)


class BatchSearchRequest(SearchOptions):
    """``POST /search/batch``: several queries encoded in one batch."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"queries": ["a large wild cat", "a tool for cutting"], "k": 3}]}
    )

    queries: list[NonBlank] = Field(min_length=1, description="Query texts (at most max_batch_queries).")

    def check_limits(self, s: Settings) -> None:
        check_range(["body", "queries"], len(self.queries), s.max_batch_queries, "SEMSEARCH_MAX_BATCH_QUERIES")
        for i, q in enumerate(self.queries):
            check_text(["body", "queries", str(i)], q, s.max_query_chars, "SEMSEARCH_MAX_QUERY_CHARS")
        self.check_options(s)


class EmbedRequest(_Request):
    """``POST /embed``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["a large wild cat"]}]})

    texts: list[NonBlank] = Field(min_length=1, description="Texts to embed (at most max_embed_texts).")

    def check_limits(self, s: Settings) -> None:
        check_range(["body", "texts"], len(self.texts), s.max_embed_texts, "SEMSEARCH_MAX_EMBED_TEXTS")
        for i, t in enumerate(self.texts):
            check_text(["body", "texts", str(i)], t, s.max_text_chars, "SEMSEARCH_MAX_TEXT_CHARS")


class RerankRequest(_Request):
    """``POST /rerank``: score candidate texts for a query with the cross-encoder."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": "a large wild cat", "texts": ["a lion", "a spoon"], "top_k": 1}]}
    )

    query: NonBlank
    texts: list[str] = Field(min_length=1, description="Candidate texts (at most max_rerank_texts).")
    top_k: int | None = Field(None, ge=1, description="Return only the best top_k (default: all).")
    raw_scores: bool = Field(
        False,
        description="Return the cross-encoder's own sigmoid(logit) instead of the score the reranker's card "
        "defines (fused with the bi-encoder cosine when the card configures fusion).",
    )

    def check_limits(self, s: Settings) -> None:
        check_text(["body", "query"], self.query, s.max_query_chars, "SEMSEARCH_MAX_QUERY_CHARS")
        check_range(["body", "texts"], len(self.texts), s.max_rerank_texts, "SEMSEARCH_MAX_RERANK_TEXTS")
        for i, t in enumerate(self.texts):
            check_text(["body", "texts", str(i)], t, s.max_text_chars, "SEMSEARCH_MAX_TEXT_CHARS")


# ------------------------------------------------------------------------------------------- responses


class Source(BaseModel):
    doc_id: str
    start: int | None = None
    end: int | None = None


class SearchHit(BaseModel):
    id: int | str
    text: str
    score: float = Field(description="Cosine similarity, or the reranker's score when reranked.")
    metadata: dict[str, Any]
    source: Source | None = Field(None, description="Document and offsets (indexes built with sentence splitting).")
    retrieval_score: float | None = Field(None, description="The bi-encoder cosine (only when reranked).")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
    index_version: str
    reranked: bool = Field(description="True when the cross-encoder reordered the results.")


class BatchSearchResponse(BaseModel):
    results: list[list[SearchHit]]
    took_ms: float
    index_version: str
    reranked: bool


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    model: str
    pooling: str
    dimension: int


class RerankHit(BaseModel):
    index: int = Field(description="Position of the text in the request's `texts`.")
    text: str
    score: float


Scoring = Literal["fused_pairwise", "fused_per_query", "sigmoid"]


class RerankResponse(BaseModel):
    results: list[RerankHit]
    took_ms: float
    model: str
    scoring: Scoring = Field(
        description="fused_pairwise: fused with the cosine using the card's stored statistics (each text scored "
        "on its own); fused_per_query: fused with per-call z-scores (comparable within this call only); "
        "sigmoid: the cross-encoder alone (raw_scores, or a reranker without fusion)."
    )


class Status(BaseModel):
    status: str
    index_version: str | None = None


class ReloadResponse(BaseModel):
    outcome: str = Field(description="reloaded or unchanged")
    version: str
    previous_version: str | None
    count: int
    took_ms: float


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    """The one error shape."""

    error: ErrorBody
