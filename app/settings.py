"""The service's one settings class: every option, from ``SEMSEARCH_*`` environment variables or the CLI.

``python -m app`` builds its flags from these fields (``--max-k`` for ``max_k``); ``create_app()`` without
arguments reads the environment through :func:`get_settings` (cached); tests pass their own ``Settings``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from semsearch.errors import SemsearchError
from semsearch.index import resolve_version_dir
from semsearch.models import Backend, RerankerBackend
from semsearch.runtime import available_cores, warn_renamed

ENV_PREFIX = "SEMSEARCH_"

# Renamed fields: old name -> new name. The old ``SEMSEARCH_OLD`` variable and ``--old`` flag (hidden in
# --help) still set the new field, with a deprecation warning; the new variable wins over the old one.
RENAMED_FIELDS: dict[str, str] = {"reranker_weight": "retrieval_weight", "workers_threads": "threads"}
# Shorter flags some fields also answer to (the names): field -> extra flags.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"keys_file": ("--keys",)}


def default_threads() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    return available_cores()


def _in_range(default: Any, low: float, high: float, description: str, *, above: bool = False) -> Any:
    """A numeric setting valid in [low, high] ((low, high] with ``above``); ``default`` may be a factory.

    The one declaration of every bounded setting: a value outside the range fails with pydantic's
    message, which :func:`explain` prefixes with the variable and the flag.
    """
    ge, gt = (None, low) if above else (low, None)
    if callable(default):
        return Field(default_factory=default, ge=ge, gt=gt, le=high, description=description)
    return Field(default, ge=ge, gt=gt, le=high, description=description)


class Settings(BaseSettings):
    """Service configuration. Field ``x`` is env ``SEMSEARCH_X`` and flag ``--x`` (underscores as dashes)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # --- what to serve
    index: Path | None = Field(
        None,
        description="Index root directory (follows its `current` version) or a version directory. "
        "Exactly one of index and data.",
    )
    data: Path | None = Field(
        None,
        description="Serve every index directory directly under this directory as a collection named by its "
        "directory name (loaded on first use). Exactly one of index and data.",
    )
    default_collection: str | None = Field(
        None,
        description="data: the collection the unprefixed routes (/search, /embed, ...) act on. Default: the only "
        "collection when there is one; else those routes answer 404.",
    )
    max_loaded_collections: int = _in_range(
        0,
        0,
        1_000_000,
        "data: most collections loaded at once; the least recently used idle one is unloaded beyond it. 0: no limit.",
    )
    model: str | None = Field(
        None,
        description="Expected encoder model; startup is refused if it is not the model the index was "
        "built with. Default: the manifest's model.",
    )
    backend: Backend | None = Field(
        None, description="Encoder backend (torch, onnx, onnx-int8). Default: the manifest's."
    )
    reranker: str | None = Field(
        None, description="Cross-encoder reranker: a local folder (e.g. from `make reranker`) or a hub name."
    )
    retrieval_weight: float | None = _in_range(
        None,
        0.0,
        1.0,
        "Weight of the retrieval score (the cosine; the hybrid score in hybrid mode) when reranking "
        "a query's candidates: (1 - w) * z(cross-encoder) + w * z(retrieval). "
        "Default: the reranker folder's own (semsearch_reranker.json).",
    )
    reranker_backend: RerankerBackend = Field(
        "auto",
        description="Reranker backend (auto, torch, onnx, onnx-int8); the ONNX ones need a local folder and are "
        "exported once into the semsearch cache. auto: onnx-int8 for a local folder when its export can be "
        "cached (1.4-2.2x faster than torch, STS-B within 0.1), else torch with a warning saying why.",
    )
    # --- network
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = _in_range(8000, 0, 65535, "TCP port (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None,
        description="If set, every route except /health, the web page and the API docs needs "
        "`Authorization: Bearer KEY`; admin routes are refused (403) while it is unset.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS (`*` for any). Empty: CORS off.",
    )
    # --- limits
    max_query_chars: int = _in_range(1000, 1, 100_000, "Longest accepted query (characters).")
    max_k: int = _in_range(100, 1, 10_000, "Largest accepted `k`.")
    max_batch_queries: int = _in_range(64, 1, 10_000, "Most queries in one /search/batch request.")
    max_embed_texts: int = _in_range(64, 1, 10_000, "Most texts in one /embed request.")
    max_text_chars: int = _in_range(4000, 1, 1_000_000, "Longest text accepted by /embed and /rerank.")
    max_rerank_texts: int = _in_range(200, 1, 10_000, "Most texts in one /rerank request.")
    max_body_bytes: int = _in_range(
        2_000_000, 1024, 1_000_000_000, "Largest accepted request body (bytes); larger is 413."
    )
    max_candidates: int = _in_range(
        200, 1, 10_000, "Largest `candidates` (bi-encoder hits rescored) for /search with rerank."
    )
    # --- concurrency
    threads: int = _in_range(
        default_threads,
        1,
        1024,
        "Intra-op threads of torch, ONNX and FAISS in each server process. Default: the cores this process may use.",
    )
    batch_window_ms: float = _in_range(
        0.0,
        0,
        1000,
        "How long the micro-batcher waits for more requests after the first one. 0: no wait; "
        "requests that arrive while a batch is being encoded still form the next batch.",
    )
    onnx_spinning: bool = Field(
        False,
        description="Let ONNX intra-op threads spin-wait between operators: ~1 ms less per lone query, but "
        "they then hold the cores that the event loop and other requests need (docs/benchmarks.md).",
    )
    query_cache: int = _in_range(
        10_000,
        0,
        10_000_000,
        "Query-embedding cache: most query vectors kept (exact text, LRU; also at most 64 MiB). 0 disables it.",
    )
    max_batch: int = _in_range(32, 1, 4096, "Most texts encoded in one micro-batch; 1 disables batching (baseline).")
    max_queue: int = _in_range(256, 1, 1_000_000, "Requests waiting for the encoder (and for the reranker) before 429.")
    retry_after_s: int = _in_range(1, 1, 3600, "`Retry-After` seconds sent with 429.")
    # --- fairness and connections (one client must not hurt the others; docs/reliability.md)
    max_batch_tokens: int = _in_range(
        256,
        1,
        1_000_000,
        "Most tokens (estimated: characters/4 + 2, at most the model's max_seq_length per text) encoded or "
        "reranked in one step. A bigger request is split into chunks of this size, and other requests are "
        "served between its chunks, short ones first; its results are the same as in one batch.",
    )
    max_connections: int = _in_range(
        1000,
        1,
        1_000_000,
        "Most open client connections; one more gets a 503 `too_many_connections` and is closed. Lowered at "
        "start-up to fit the file-descriptor limit (`ulimit -n`), with a warning.",
    )
    header_timeout_s: float = _in_range(
        10.0,
        0,
        3600,
        "Seconds a connection may take to send a request's line and headers; then 408 and closed.",
        above=True,
    )
    body_timeout_s: float = _in_range(
        30.0,
        0,
        3600,
        "Seconds a request may take to send its body once its headers are in; then 408 and closed.",
        above=True,
    )
    keep_alive_s: float = _in_range(
        5.0, 0, 3600, "Seconds an idle keep-alive connection is kept open between requests.", above=True
    )
    # --- operations
    reload_poll_s: float = _in_range(
        2.0, 0, 86_400, "Seconds between checks of the index's `current` version; 0 disables polling."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of `python -m app`.")
    # --- scale out (Ray Serve; pip install 'semsearch[ray]'; docs/scale.md)
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: this process serves the whole index; ray: a Ray Serve application with one "
        "deployment per shard and an ingress serving this same API.",
    )
    ray_address: str | None = Field(
        None, description="engine ray: the Ray cluster to join. Default: RAY_ADDRESS, else a local Ray."
    )
    shard_replicas: int = _in_range(1, 1, 1024, "engine ray: replicas of each shard deployment.")
    replica_cpus: float = _in_range(
        1.0, 0.0, 1024, "engine ray: CPUs reserved by each shard replica (the ingress reserves at most 0.5)."
    )
    shard_timeout_s: float = _in_range(
        10.0, 0, 3600, "engine ray: how long one search waits for a shard before it counts as unavailable.", above=True
    )
    shard_partial: bool = Field(
        False,
        description="engine ray: when a shard has no healthy replica, answer from the others with "
        '`"partial": true` and the shards that answered, instead of 503.',
    )
    access_log: bool = Field(True, description="Log one line per HTTP request (uvicorn access log).")
    # --- online writes (POST /documents ...; docs/api.md#writes)
    writable: bool = Field(
        False,
        description="Accept writes (POST /documents, POST /documents/delete, DELETE /documents/{id}): the "
        "service then holds the index's writer lock, logs every write to DIR/wal before acknowledging it and "
        "flushes to segments in the background. Off: write routes answer 403 naming this setting.",
    )
    refresh_interval_s: float = _in_range(
        1.0, 0, 3600, "writable: seconds between refreshes that make acknowledged writes searchable.", above=True
    )
    flush_rows: int = _in_range(10_000, 1, 10_000_000, "writable: pending rows + deletes that trigger a flush.")
    flush_age_s: float = _in_range(
        60.0, 0, 86_400, "writable: seconds after which pending writes are flushed whatever their number.", above=True
    )
    max_write_queue: int = _in_range(
        64, 1, 100_000, "writable: write requests being encoded or logged at once; one more gets 429."
    )
    max_write_documents: int = _in_range(1000, 1, 100_000, "writable: most documents (or ids) in one write request.")
    write_batch_tokens: int = _in_range(
        2048,
        1,
        1_000_000,
        "writable: most tokens (estimated as for max_batch_tokens) encoded in one chunk of a write; queries "
        "waiting are always encoded first.",
    )
    # --- keys, audit, snapshots (issue 23; app/keys.py, app/audit.py, app/routes/collections.py)
    keys_file: Path | None = Field(
        None,
        description="JSON file of scoped API keys (hashes only; `python -m app.keys add` makes them): name, scopes "
        "(read, write, admin), collections, optional rate limit. Reloaded on SIGHUP and when it changes; "
        "a broken file keeps the old keys. Also `--keys`.",
    )
    audit_log: Path | None = Field(
        None,
        description="Append one JSON line per write and admin call (key name, route, collection, counts, "
        "status; never a key or document text) to this file. Default: the `semsearch.audit` logger.",
    )
    snapshots_dir: Path | None = Field(
        None, description="Where `POST /collections/{name}/snapshots` writes archives. Default: INDEX/snapshots."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, plus the renamed fields' old variables just below the environment."""
        return init_settings, env_settings, RenamedEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _index_or_data(self) -> Settings:
        if (self.index is None) == (self.data is None):
            raise ValueError(
                "SEMSEARCH_INDEX / --index: required, or SEMSEARCH_DATA / --data (a directory of collections)"
                if self.index is None
                else "give one of SEMSEARCH_INDEX / --index and SEMSEARCH_DATA / --data, not both"
            )
        if self.default_collection is not None and self.data is None:
            raise ValueError("SEMSEARCH_DEFAULT_COLLECTION / --default-collection needs --data")
        return self

    @field_validator("data")
    @classmethod
    def _data_is_dir(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser()
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory (it should hold one index directory per collection)")
        return path.resolve()

    @field_validator("default_collection")
    @classmethod
    def _default_collection_name(cls, value: str | None) -> str | None:
        from app.security import COLLECTION_NAME, COLLECTION_NAME_MAX

        if value is not None and (len(value) > COLLECTION_NAME_MAX or not COLLECTION_NAME.match(value)):
            raise ValueError(
                f"{value!r} is not a collection name (letters, digits, `_`, `-`, single dots between them, "
                f"at most {COLLECTION_NAME_MAX} characters)"
            )
        return value

    @field_validator("index")
    @classmethod
    def _index_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser()
        if not path.exists():
            raise ValueError(
                f"{path} does not exist; build an index with "
                f"`python -m indexer build --input FILE --output {path}` "
                "or point SEMSEARCH_INDEX / --index at one"
            )
        try:
            resolve_version_dir(path)
        except SemsearchError as e:
            raise ValueError(e.message) from e
        return path.resolve()

    @field_validator("keys_file")
    @classmethod
    def _keys_file_loads(cls, value: Path | None) -> Path | None:
        """A keys file that cannot be used stops the start-up with one line saying why."""
        if value is None:
            return None
        from app.keys import KeyFileError, read_keys_file

        path = value.expanduser().resolve()
        try:
            read_keys_file(path)
        except KeyFileError as e:
            raise ValueError(str(e)) from None
        return path

    @field_validator("audit_log", "snapshots_dir")
    @classmethod
    def _parent_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser().resolve()
        if not path.parent.is_dir():
            raise ValueError(f"the directory {path.parent} does not exist")
        return path

    @field_validator("model", "reranker", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key_is_sendable(cls, value: Any) -> Any:
        """Empty means unset (compose passes ``${SEMSEARCH_API_KEY:-}``). A blank key would start the service
        without authentication and a key with whitespace or non-ASCII characters could not be sent (HTTP
        headers are Latin-1, Bearer tokens are trimmed): both refused, without echoing the key."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str):
            return value
        if raw == "":
            return None
        if not raw.strip():
            raise ValueError(
                "is blank (only whitespace), which would serve without authentication; set a real key, or "
                "leave it empty or unset to serve without one"
            )
        for position, char in enumerate(raw):
            if not "!" <= char <= "~":
                kind = (
                    "whitespace" if char.isspace() else "a control character" if char < " " else "a non-ASCII character"
                )
                raise ValueError(
                    f"holds {kind} at position {position}; a key must be printable ASCII without spaces "
                    "(what every client can send in `Authorization: Bearer KEY`)"
                )
        return value

    @field_validator("reranker")
    @classmethod
    def _reranker_path(cls, value: str | None) -> str | None:
        if value is not None and value.startswith((".", "/", "~")) and not Path(value).expanduser().exists():
            raise ValueError(f"reranker folder {value} does not exist; train one with `make reranker`")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_urls(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if o != "*" and not o.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"CORS origins must be `*` or start with http:// or https://, got {bad}")
        return value

    @property
    def batching(self) -> bool:
        """False for the unbatched baseline (``max_batch=1``)."""
        return self.max_batch > 1

    def api_key_bytes(self) -> bytes | None:
        return self.api_key.get_secret_value().encode() if self.api_key is not None else None


class RenamedEnvSource(PydanticBaseSettingsSource):
    """The old ``SEMSEARCH_*`` variable of each renamed field (:data:`RENAMED_FIELDS`), with a warning."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for old, new in RENAMED_FIELDS.items():
            value = os.environ.get(ENV_PREFIX + old.upper())
            if value is not None:
                warn_renamed(ENV_PREFIX + old.upper(), ENV_PREFIX + new.upper())
                values[new] = value
        return values


class ConfigError(ValueError):
    """Settings could not be built; the message names the env variables / flags to fix."""


def explain(error: ValidationError) -> str:
    """A validation error as lines naming both the env variable and the flag."""
    lines = []
    for e in error.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule over several fields names them itself
            lines.append(msg)
            continue
        field = str(e["loc"][0])
        where = f"{ENV_PREFIX}{field.upper()} / --{field.replace('_', '-')}"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "invalid semsearch settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus ``overrides``; a :class:`ConfigError` that reads well on failure."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(explain(e)) from None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests build their own ``Settings``)."""
    return load_settings()
