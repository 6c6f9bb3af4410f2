"""Request and response models of the HTTP API.

Structural rules are declared on the fields and appear in the OpenAPI schema: types, valid text
(:data:`Text`: encodable Unicode without NUL; :data:`NonBlank` also not blank), ``k >= 1``, and the
filter grammar with its bounds (:data:`FILTER_SCHEMA`, validated by the core's ``compile_filter`` at the
edge so a bad filter never reaches the micro-batch). Limits that come from the settings (``max_k``,
``max_query_chars``, ...) are checked by each request's ``check_limits``, which raises a 422 in the same
shape as a field error, and :func:`apply_limits` writes them into the app's OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from app.errors import invalid
from app.settings import Settings
from semsearch.errors import InvalidInputError
from semsearch.ids import MAX_ID_CHARS, MAX_SAFE_INT, as_id, id_key, id_problem
from semsearch.rows import INT64_MAX, INT64_MIN, MAX_METADATA_DEPTH, metadata_problem
from semsearch.search import MAX_GROUP_SIZE, Mode, filters
from semsearch.text import NON_BLANK_PATTERN, TEXT_PATTERN, text_problem


def valid_text(value: str) -> str:
    """Text the encoder can take: no lone surrogates (not encodable as UTF-8) and no NUL characters."""
    problem = text_problem(value, allow_blank=True)
    if problem:
        raise ValueError(problem)
    return value


def not_blank(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(valid_text), WithJsonSchema({"type": "string", "pattern": TEXT_PATTERN})]
NonBlank = Annotated[
    str,
    AfterValidator(not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": NON_BLANK_PATTERN}),
]


DEFAULT_K = 10
DEFAULT_CANDIDATES = 50  # both capped by the settings' max_k / max_candidates


def integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``45.0``; strict mode still refuses ``"45"``, ``true``, ``4.5``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(integral)]


# GET /search?filter= must fit in a URL (~64 KB with uvicorn): smaller `in` lists and strings than POST
GET_MAX_IN_VALUES = 5
GET_MAX_VALUE_CHARS = 50


def _filter_schema(
    in_values: int = filters.MAX_IN_VALUES, value_chars: int = filters.MAX_VALUE_CHARS
) -> dict[str, Any]:
    """The filter grammar of ``semsearch.search.filters`` with its bounds, as JSON Schema."""
    number = {"type": "number", "minimum": -filters.NUMBER_LIMIT, "maximum": filters.NUMBER_LIMIT}
    string = {"type": "string", "maxLength": value_chars, "pattern": TEXT_PATTERN}
    scalar = [string, number, {"type": "boolean"}]

    def bounds(kind: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": dict.fromkeys(filters.RANGE_OPERATORS, kind),
            "minProperties": 1,
            "additionalProperties": False,
        }

    one_of_values = {
        "type": "object",
        "properties": {"in": {"type": "array", "maxItems": in_values, "items": {"anyOf": scalar}}},
        "required": ["in"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "maxProperties": filters.MAX_FIELDS,
        "propertyNames": {"pattern": filters.FIELD_PATTERN, "maxLength": filters.MAX_FIELD_CHARS},
        "additionalProperties": {"anyOf": [*scalar, one_of_values, bounds(number), bounds(string)]},
        "description": 'Metadata filter, all fields must match: {"field": value | {"in": [values]} | '
        '{"gte": x, "lte": y}} (also gt, lt). Field: a metadata key or dotted path of at most '
        f"{filters.MAX_PATH_DEPTH} keys.",
        "examples": [{"pos": "noun"}],
    }


FILTER_SCHEMA = _filter_schema()
GET_FILTER_SCHEMA = _filter_schema(GET_MAX_IN_VALUES, GET_MAX_VALUE_CHARS)


def check_get_filter(spec: dict[str, Any]) -> str | None:
    """Why a ``GET /search`` filter is over the URL-sized bounds (use POST for bigger ones), or None."""
    for field, cond in spec.items():
        values = cond.get("in") if isinstance(cond, dict) else None
        if isinstance(values, list) and len(values) > GET_MAX_IN_VALUES:
            return f"field {field[:40]!r}: 'in' takes at most {GET_MAX_IN_VALUES} values in GET (use POST /search)"
        scalars = values if isinstance(values, list) else list(cond.values()) if isinstance(cond, dict) else [cond]
        if any(isinstance(v, str) and len(v) > GET_MAX_VALUE_CHARS for v in scalars):
            return (
                f"field {field[:40]!r}: strings of at most {GET_MAX_VALUE_CHARS} characters in GET (use POST /search)"
            )
    return None


def check_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The core's own validation (grammar and bounds), at the edge: a 422 naming the problem."""
    try:
        filters.compile_filter(value)
    except InvalidInputError as e:
        raise ValueError(e.message) from None
    return value


Filter = Annotated[
    dict[str, Any] | None,
    AfterValidator(check_filter),
    WithJsonSchema({"anyOf": [FILTER_SCHEMA, {"type": "null"}]}),
]


def check_text(loc: list[str], text: str, limit: int, setting: str) -> None:
    if len(text) > limit:
        raise invalid(loc, f"is {len(text)} characters long; the limit is {limit} ({setting})", "string_too_long")


def check_range(loc: list[str], value: int, limit: int, setting: str) -> None:
    if value > limit:
        raise invalid(loc, f"must be at most {limit} ({setting}), got {value}", "less_than_equal")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


MAX_OFFSET = 10_000
InputType = Literal["query", "passage"]
INPUT_TYPE_DESCRIPTION = (
    "query: prepend the index's query prompt; passage: its passage prompt (models such as e5 need them); "
    "absent: the raw text."
)


def prompt_for(encoder: Any, input_type: str | None) -> str:
    """The prompt ``input_type`` asks for (empty for none, or for a model without prompts)."""
    if input_type == "query":
        return str(encoder.query_prompt or "")
    if input_type == "passage":
        return str(encoder.passage_prompt or "")
    return ""


GROUP_BY_PATTERN = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,7}$"


class SearchOptions(_Request):
    """Options shared by single and batch search."""

    k: Int = Field(DEFAULT_K, ge=1, description="Number of results per query (1..max_k).")
    mode: Mode = Field("dense", description="dense (cosine), lexical (BM25) or hybrid (fusion).")
    filter: Filter = Field(None, description=FILTER_SCHEMA["description"])
    rerank: bool = Field(False, description="Rescore the top `candidates` with the cross-encoder reranker.")
    candidates: Int = Field(
        DEFAULT_CANDIDATES, ge=1, description="With rerank: bi-encoder hits rescored (at least k are used)."
    )
    offset: Int = Field(
        0, ge=0, le=MAX_OFFSET, description="Skip this many results (hits, or groups with group_by): the next page."
    )
    group_by: str | None = Field(
        None,
        max_length=128,
        pattern=GROUP_BY_PATTERN,
        description="Group hits into documents: `doc_id` or a metadata field (dotted path); k then counts groups.",
    )
    group_size: Int = Field(3, ge=1, le=MAX_GROUP_SIZE, description="With group_by: hits kept per group.")
    return_document: bool = Field(
        False, description="With group_by: add each group's stored document text as `document` (--chunk-tokens)."
    )

    def check_options(self, s: Settings) -> None:
        # defaults never exceed the configured limits (a service with max_k=5 answers 5 by default)
        if "k" not in self.model_fields_set:
            self.k = min(self.k, s.max_k)
        if "candidates" not in self.model_fields_set:
            self.candidates = min(self.candidates, s.max_candidates)
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
    input_type: InputType | None = Field(None, description=INPUT_TYPE_DESCRIPTION)

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
    texts: list[NonBlank] = Field(
        min_length=1, description="Candidate texts (at most max_rerank_texts), not blank, as for /embed."
    )
    top_k: Annotated[int, Field(ge=1), BeforeValidator(integral)] | None = Field(
        None, description="Return only the best top_k (default: all)."
    )
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
    score: float = Field(
        description="The mode's score: cosine (dense), BM25 (lexical), the fused score (hybrid); the reranker's "
        "score when reranked."
    )
    metadata: dict[str, Any]
    source: Source | None = Field(None, description="Document and offsets (indexes built with sentence splitting).")
    retrieval_score: float | None = Field(None, description="The bi-encoder cosine (only when reranked).")


class GroupHit(BaseModel):
    id: int | str
    text: str
    score: float
    start: int | None = Field(None, description="Offset of the passage in the document (`document[start:end]`).")
    end: int | None = None
    retrieval_score: float | None = Field(None, description="The bi-encoder cosine (only when reranked).")


class SearchGroup(BaseModel):
    group: Any = Field(description="The group's value: the doc_id, or the metadata field's value.")
    score: float = Field(description="The group's best hit's score.")
    metadata: dict[str, Any] = Field(description="The best hit's metadata (the document's, for passages).")
    hits: list[GroupHit]
    document: str | None = Field(None, description="The stored document text (with return_document).")


class SearchResponse(BaseModel):
    results: list[SearchHit] | list[SearchGroup] = Field(description="Hits, or groups with group_by.")
    took_ms: float
    index_version: str
    reranked: bool = Field(description="True when the cross-encoder reordered the results.")


class BatchSearchResponse(BaseModel):
    results: list[list[SearchHit]] | list[list[SearchGroup]]
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


class RerankResponse(BaseModel):
    results: list[RerankHit]
    took_ms: float
    model: str
    scoring: Literal["fused_pairwise", "fused_per_query", "sigmoid"] = Field(
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


# ------------------------------------------------------------------------------------------- documents (writes)


def valid_id(value: Any) -> Any:
    """An id as :mod:`semsearch.ids` defines it (the indexer's rule: string or safe integer, no NUL...)."""
    problem = id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


DocId = Annotated[
    int | str,
    BeforeValidator(as_id),
    AfterValidator(valid_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": TEXT_PATTERN},
                {"type": "integer", "minimum": -MAX_SAFE_INT, "maximum": MAX_SAFE_INT},
            ]
        }
    ),
]


METADATA_MARK = "x-semsearch-metadata"  # replaced by a $ref to the Metadata component (pydantic resolves $refs)


def valid_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """The ingest limits of :mod:`semsearch.rows` (finite numbers, 64-bit integers, depth, size, Unicode)."""
    problem = metadata_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class DocumentIn(_Request):
    """One document to upsert."""

    id: DocId = Field(description='The document\'s id: a string or an integer (`1` and `"1"` are one id).')
    text: NonBlank = Field(description="The text to index (not blank, at most max_text_chars).")
    metadata: Annotated[
        dict[str, Any], AfterValidator(valid_metadata), WithJsonSchema({"type": "object", METADATA_MARK: True})
    ] = Field(default_factory=dict, description="JSON object stored with the text and matched by filters.")


def _duplicate_problem(ids: list[Any], field: str) -> None:
    """One id written with both types in one request is refused (the last of each id otherwise wins)."""
    seen: dict[str, tuple[int, bool]] = {}
    for i, value in enumerate(ids):
        key = id_key(value)
        before = seen.get(key)
        if before is not None and before[1] != isinstance(value, int):
            raise invalid(
                ["body", field, str(i), *(["id"] if field == "documents" else [])],
                f"id {value!r} appears as both a string and an integer in this request "
                f"(item {before[0]}); an id keeps one type",
            )
        seen[key] = (i, isinstance(value, int))


class UpsertRequest(_Request):
    """``POST /documents``: insert or replace documents by id, all of them or none."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"documents": [{"id": "cat-1", "text": "a large wild cat", "metadata": {"pos": "noun"}}]}]
        }
    )

    documents: list[DocumentIn] = Field(
        min_length=1,
        description="At most max_write_documents. The same id twice: the last one wins (as two requests in order).",
    )
    wait: bool = Field(True, description="Return once the documents are searchable (else: once durable).")

    def check_limits(self, s: Settings) -> None:
        check_range(["body", "documents"], len(self.documents), s.max_write_documents, "SEMSEARCH_MAX_WRITE_DOCUMENTS")
        for i, d in enumerate(self.documents):
            check_text(["body", "documents", str(i), "text"], d.text, s.max_text_chars, "SEMSEARCH_MAX_TEXT_CHARS")
        _duplicate_problem([d.id for d in self.documents], "documents")


class DeleteRequest(_Request):
    """``POST /documents/delete``: delete documents by id."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"ids": ["cat-1", 7]}]})

    ids: list[DocId] = Field(min_length=1, description="Ids to delete (at most max_write_documents).")
    wait: bool = Field(True, description="Return once the deletes are visible to searches (else: once durable).")

    def check_limits(self, s: Settings) -> None:
        check_range(["body", "ids"], len(self.ids), s.max_write_documents, "SEMSEARCH_MAX_WRITE_DOCUMENTS")


class UpsertResponse(BaseModel):
    upserted: int = Field(description="Documents written (all of the request's).")
    seq: int = Field(description="The write-ahead log sequence number of this request.")
    visible: bool = Field(description="Whether searches already see the documents (true when `wait` was).")
    took_ms: float


class DeleteResponse(BaseModel):
    deleted: int = Field(description="Ids that named a live document.")
    missing: list[int | str] = Field(description="Ids that named no live document (nothing to delete).")
    seq: int
    visible: bool
    took_ms: float


class DocumentOut(BaseModel):
    id: int | str
    text: str
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------- OpenAPI


def apply_limits(schema: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Write the configured limits into an OpenAPI document (in place), so that generated clients and
    fuzzers see exactly what the service accepts: max lengths, max items, max ``k``/``candidates``, and
    ``GET /search?filter=`` as JSON with the filter grammar."""
    components = schema.get("components", {}).get("schemas", {})

    def field(model: str, name: str) -> dict[str, Any]:
        node: dict[str, Any] = components.get(model, {}).get("properties", {}).get(name, {})
        return node

    for model in ("SearchRequest", "BatchSearchRequest"):
        field(model, "k").update(maximum=s.max_k, default=min(DEFAULT_K, s.max_k))
        field(model, "candidates").update(maximum=s.max_candidates, default=min(DEFAULT_CANDIDATES, s.max_candidates))
    field("SearchRequest", "query")["maxLength"] = s.max_query_chars
    field("RerankRequest", "query")["maxLength"] = s.max_query_chars
    for model, name, items, chars in (
        ("BatchSearchRequest", "queries", s.max_batch_queries, s.max_query_chars),
        ("EmbedRequest", "texts", s.max_embed_texts, s.max_text_chars),
        ("RerankRequest", "texts", s.max_rerank_texts, s.max_text_chars),
    ):
        node = field(model, name)
        node["maxItems"] = items
        node.setdefault("items", {})["maxLength"] = chars
    _apply_compat_limits(field, s)
    get_search = schema.get("paths", {}).get("/search", {}).get("get", {})
    for param in get_search.get("parameters", []):
        name, node = param.get("name"), param.get("schema", {})
        if name in ("k", "candidates") and "anyOf" in node:  # optional in Python (default from settings)
            branch = next(b for b in node["anyOf"] if b.get("type") != "null")
            node = param["schema"] = {**{k: v for k, v in node.items() if k != "anyOf"}, **branch}
        if name == "q":
            node.update(minLength=1, pattern=NON_BLANK_PATTERN, maxLength=s.max_query_chars)
        elif name == "k":
            node.update(maximum=s.max_k, default=min(DEFAULT_K, s.max_k))
        elif name == "candidates":
            node.update(maximum=s.max_candidates, default=min(DEFAULT_CANDIDATES, s.max_candidates))
        elif name == "filter":  # a JSON object in the query string (OpenAPI: parameter `content`)
            param.pop("schema", None)
            param["content"] = {"application/json": {"schema": GET_FILTER_SCHEMA}}
    return schema


def _apply_compat_limits(field: Any, s: Settings) -> None:
    """The same limits on the compatible routes' models (app/compat_schemas.py)."""
    field("CompatRerankRequest", "query")["maxLength"] = s.max_query_chars
    documents = field("CompatRerankRequest", "documents")
    documents["maxItems"] = s.max_rerank_texts
    for branch in documents.get("items", {}).get("anyOf", []):
        if branch.get("type") == "string":
            branch["maxLength"] = s.max_text_chars
    field("RerankDocument", "text")["maxLength"] = s.max_text_chars
    for branch in field("EmbeddingsRequest", "input").get("anyOf", []):
        if branch.get("type") == "string":
            branch["maxLength"] = s.max_text_chars
        elif branch.get("type") == "array":
            branch["maxItems"] = s.max_embed_texts
            branch.setdefault("items", {})["maxLength"] = s.max_text_chars


def install_openapi_limits(app: Any, s: Settings) -> None:
    """Make ``app.openapi()`` (hence ``/openapi.json`` and ``/docs``) carry the limits of ``s``."""
    from app.security import is_public

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(apply_limits(generate(), s), s, is_public)
        return dict(app.openapi_schema)

    app.openapi = openapi


def _link_metadata(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get(METADATA_MARK):
            return {"$ref": "#/components/schemas/Metadata"}
        return {k: _link_metadata(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_link_metadata(v) for v in node]
    return node


def metadata_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of what :func:`semsearch.rows.metadata_problem` accepts, as far as JSON Schema can say
    it: NUL-free keys and strings, integers within 64 bits, finite numbers, at most
    :data:`~semsearch.rows.MAX_METADATA_DEPTH` levels (one named schema per level, ``Metadata`` the
    first). Not expressible: the size bound and lone surrogates; the server answers those with 422."""
    text = {"type": "string", "pattern": TEXT_PATTERN}
    scalars: list[dict[str, Any]] = [
        text,
        {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "boolean"},
        {"type": "null"},
    ]

    def value(n: int) -> dict[str, Any]:  # a value inside a container of level n - 1
        return {"anyOf": scalars} if n > MAX_METADATA_DEPTH else {"$ref": f"#/components/schemas/MetadataValue{n}"}

    def containers(n: int) -> list[dict[str, Any]]:  # an object or array at level n (arrays count, as rows.py)
        key = {"pattern": TEXT_PATTERN}
        obj = {"type": "object", "propertyNames": key, "additionalProperties": value(n + 1)}
        return [obj, {"type": "array", "items": value(n + 1)}]

    out: dict[str, dict[str, Any]] = {
        f"MetadataValue{n}": {"anyOf": [*scalars, *containers(n)]} for n in range(2, MAX_METADATA_DEPTH + 1)
    }
    out["Metadata"] = {
        **containers(1)[0],
        "description": "JSON object stored with the text and matched by filters (limits: docs/api.md).",
    }
    return out


def document_errors(schema: dict[str, Any], s: Settings, is_public: Any) -> dict[str, Any]:
    """Declare what every route can answer besides its own responses: 401 (API key), 413 (body size),
    and the Bearer scheme when a key is configured; ``/metrics`` is text."""
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    schema = _link_metadata(schema)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(metadata_schemas())
    if s.api_key is not None:
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if not is_public(path):
                responses.setdefault(
                    "401", {"description": "Missing or wrong API key (when one is configured).", **ref}
                )
                if s.api_key is not None:
                    op["security"] = [{"bearer": []}]
            if method in ("post", "put", "patch"):
                responses.setdefault("413", {"description": "Request body over max_body_bytes.", **ref})
    metrics = schema.get("paths", {}).get("/metrics", {}).get("get", {}).get("responses", {}).get("200")
    if metrics is not None:
        metrics["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return schema
