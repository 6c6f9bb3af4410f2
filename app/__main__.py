"""``python -m app --index DIR``: run the search service with uvicorn.

Every flag is a field of :class:`app.settings.Settings` (``--max-k`` = ``SEMSEARCH_MAX_K``); flags win
over the environment. Bad settings exit with status 2 and a message naming the flag and variable; a
model/index that cannot be loaded exits with status 1 before the port is bound. SIGTERM and Ctrl-C
shut down gracefully (uvicorn).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

import uvicorn

from app.settings import ENV_PREFIX, ConfigError, Settings, load_settings

log = logging.getLogger("app")


def _literal_choices(annotation: Any) -> list[str] | None:
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    if get_origin(annotation) is Union:
        for arg in get_args(annotation):
            choices = _literal_choices(arg)
            if choices:
                return choices
    return None


def build_parser() -> argparse.ArgumentParser:
    """Flags generated from the settings fields (one source of truth for names, defaults and help)."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve a semsearch index over HTTP (search, embed, rerank, web page at /).",
        epilog="Every option can also be set as an environment variable (shown in brackets). "
        "Prefer SEMSEARCH_API_KEY over --api-key: command lines are visible to other users.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "see description"
        else:
            default = repr(field.default)
        help_text = f"{field.description} [{env}; default {default}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = _literal_choices(field.annotation)
            parser.add_argument(
                flag,
                default=None,
                choices=choices,
                help=help_text,
                metavar=name.upper() if choices is None else None,
            )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment and ``argv``; exits 2 with a readable message when invalid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return load_settings(**overrides)
    except ConfigError as e:
        parser.error(str(e))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "urllib3", "huggingface_hub", "transformers", "sentence_transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Server(uvicorn.Server):
    """uvicorn, announcing what is served and where, once the socket is bound (port 0 resolved)."""

    def __init__(self, config: uvicorn.Config, index_path: str, describe: Any) -> None:
        super().__init__(config)
        self._index_path = index_path
        self._describe = describe

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        port = listeners[0].getsockname()[1] if listeners else self.config.port
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        version, count = self._describe()
        log.info(
            "semsearch serving %s (%s, %d sentences) at http://%s:%d/ (Ctrl-C or SIGTERM to stop)",
            self._index_path,
            version,
            count,
            shown,
            port,
        )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    _setup_logging(settings.log_level)
    if settings.engine == "ray":
        from app import ray_serving

        return ray_serving.run(settings)
    from app.main import create_app
    from app.serving import Services, version_name
    from semsearch.errors import SemsearchError

    try:
        services = Services.load(settings)
    except SemsearchError as e:
        log.error("cannot start: %s", e.message)
        return 1
    app = create_app(settings, services=services)

    def describe() -> tuple[str, int]:
        index = services.indexes.current
        return version_name(index), index.count

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
    )
    _Server(config, str(settings.index), describe).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
