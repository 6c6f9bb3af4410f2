"""The service's one settings class: every option, from ``SEMSEARCH_*`` environment variables or the CLI.

``python -m app`` builds its flags from these fields (``--max-k`` for ``max_k``); ``create_app()`` without
arguments reads the environment through :func:`get_settings` (cached); tests pass their own ``Settings``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from semsearch.encoder import Backend
from semsearch.errors import SemsearchError
from semsearch.layout import resolve_version_dir
from semsearch.runtime import available_cores, warn_renamed

ENV_PREFIX = "SEMSEARCH_"
LogLevel = Literal["debug", "info", "warning", "error"]

# Renamed fields: old name -> new name. The old ``SEMSEARCH_OLD`` variable and ``--old`` flag (hidden in
# --help) still set the new field, with a deprecation warning; the new variable wins over the old one.
RENAMED_FIELDS: dict[str, str] = {"reranker_weight": "retrieval_weight", "workers_threads": "threads"}


def default_threads() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    return available_cores()


class Settings(BaseSettings):
    """Service configuration. Field ``x`` is env ``SEMSEARCH_X`` and flag ``--x`` (underscores as dashes)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # --- what to serve
    index: Path = Field(description="Index root directory (follows its `current` version) or a version directory.")
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
    retrieval_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Weight of the retrieval score (the cosine; the hybrid score in hybrid mode) when reranking "
        "a query's candidates: (1 - w) * z(cross-encoder) + w * z(retrieval). "
        "Default: the reranker folder's own (semsearch_reranker.json).",
    )
    reranker_backend: Backend = Field(
        "torch",
        description="Reranker backend (torch, onnx, onnx-int8); the ONNX ones need a local folder and are "
        "exported once into the semsearch cache.",
    )
    # --- network
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
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
    max_query_chars: int = Field(1000, ge=1, le=100_000, description="Longest accepted query (characters).")
    max_k: int = Field(100, ge=1, le=10_000, description="Largest accepted `k`.")
    max_batch_queries: int = Field(64, ge=1, le=10_000, description="Most queries in one /search/batch request.")
    max_embed_texts: int = Field(64, ge=1, le=10_000, description="Most texts in one /embed request.")
    max_text_chars: int = Field(4000, ge=1, le=1_000_000, description="Longest text accepted by /embed and /rerank.")
    max_rerank_texts: int = Field(200, ge=1, le=10_000, description="Most texts in one /rerank request.")
    max_body_bytes: int = Field(
        2_000_000,
        ge=1024,
        le=1_000_000_000,
        description="Largest accepted request body (bytes); larger is 413.",
    )
    max_candidates: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Largest `candidates` (bi-encoder hits rescored) for /search with rerank.",
    )
    # --- concurrency
    threads: int = Field(
        default_factory=default_threads,
        ge=1,
        le=1024,
        description="Intra-op threads of torch, ONNX and FAISS in each server process. Default: the cores this "
        "process may use.",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long the micro-batcher waits for more requests after the first one. 0: no wait; "
        "requests that arrive while a batch is being encoded still form the next batch.",
    )
    onnx_spinning: bool = Field(
        False,
        description="Let ONNX intra-op threads spin-wait between operators: ~1 ms less per lone query, but "
        "they then hold the cores that the event loop and other requests need (docs/benchmarks.md).",
    )
    max_batch: int = Field(
        32,
        ge=1,
        le=4096,
        description="Most texts encoded in one micro-batch; 1 disables batching (baseline).",
    )
    max_queue: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Requests waiting for the encoder (and for the reranker) before 429.",
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="`Retry-After` seconds sent with 429.")
    # --- operations
    reload_poll_s: float = Field(
        2.0,
        ge=0,
        le=86_400,
        description="Seconds between checks of the index's `current` version; 0 disables polling.",
    )
    log_level: LogLevel = Field("info", description="Log level of `python -m app`.")
    # --- scale out (Ray Serve; pip install 'semsearch[ray]'; docs/scale.md)
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: this process serves the whole index; ray: a Ray Serve application with one "
        "deployment per shard and an ingress serving this same API.",
    )
    ray_address: str | None = Field(
        None, description="engine ray: the Ray cluster to join. Default: RAY_ADDRESS, else a local Ray."
    )
    shard_replicas: int = Field(1, ge=1, le=1024, description="engine ray: replicas of each shard deployment.")
    replica_cpus: float = Field(
        1.0, ge=0.0, le=1024, description="engine ray: CPUs reserved by each shard replica and the ingress."
    )
    shard_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="engine ray: how long one search waits for a shard before it counts as unavailable.",
    )
    shard_partial: bool = Field(
        False,
        description="engine ray: when a shard has no healthy replica, answer from the others with "
        '`"partial": true` and the shards that answered, instead of 503.',
    )
    access_log: bool = Field(True, description="Log one line per HTTP request (uvicorn access log).")

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

    @field_validator("index")
    @classmethod
    def _index_exists(cls, value: Path) -> Path:
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

    @field_validator("model", "reranker", "api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

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
        field = str(e["loc"][0]) if e["loc"] else "?"
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
