"""``python -m app --index DIR``: run the search service with uvicorn.

Every flag is a field of :class:`app.settings.Settings` (``--max-k`` = ``SEMSEARCH_MAX_K``); flags win
over the environment. Bad settings exit with status 2 and a message naming the flag and variable; a
model/index that cannot be loaded exits with status 1 before the port is bound. SIGTERM and Ctrl-C
shut down gracefully (uvicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

import uvicorn

from app.settings import ENV_PREFIX, FLAG_ALIASES, RENAMED_FIELDS, ConfigError, Settings, load_settings
from semsearch.runtime import setup_logging, warn_renamed

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


class _RenamedFlag(argparse.Action):
    """The old flag of a renamed setting: sets the new field, with a deprecation warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warn_renamed(str(option_string), "--" + self.dest.replace("_", "-"))
        setattr(namespace, self.dest, values)


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
                *FLAG_ALIASES.get(name, ()),
                default=None,
                choices=choices,
                help=help_text,
                metavar=name.upper() if choices is None else None,
            )
    for old, new in RENAMED_FIELDS.items():  # deprecated old names: they still work, hidden in --help
        parser.add_argument(
            "--" + old.replace("_", "-"), dest=new, default=None, action=_RenamedFlag, help=argparse.SUPPRESS
        )
    server = parser.add_argument_group("server process (uvicorn; flags only)")
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port; each loads the model and memory-maps the same index "
        "(the index files are shared page cache). Measured against threads in docs/benchmarks.md [default 1]",
    )
    server.add_argument(
        "--http", choices=["auto", "httptools", "h11"], default="auto", help="HTTP parser [default auto: httptools]"
    )
    server.add_argument(
        "--loop", choices=["auto", "uvloop", "asyncio"], default="auto", help="event loop [default auto: uvloop]"
    )
    return parser


_SERVER_FLAGS = ("workers", "http", "loop")


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    """(settings, the settings given as flags, server options); exits 2 with a readable message when invalid."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    server = {k: args.pop(k) for k in _SERVER_FLAGS}
    if server["workers"] < 1:
        parser.error(f"--workers must be >= 1, got {server['workers']}")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        return load_settings(**overrides), overrides, server
    except ConfigError as e:
        parser.error(str(e))


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment and ``argv``; exits 2 with a readable message when invalid."""
    return parse_args(argv)[0]


def _setup_logging(level: str) -> None:
    setup_logging(level)


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
            "semsearch serving %s (%s, %d sentences) at http://%s:%d/ (http %s, loop %s; Ctrl-C or SIGTERM to stop)",
            self._index_path,
            version,
            count,
            shown,
            port,
            _http_implementation(self.config),
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )


def _http_implementation(config: uvicorn.Config) -> str:
    """``httptools`` or ``h11``: what uvicorn's ``http="auto"`` picked (httptools when installed)."""
    protocol = getattr(config, "http_protocol_class", None)
    uvicorn_bases = [c for c in getattr(protocol, "__mro__", ()) if c.__module__.startswith("uvicorn.")]
    name = (uvicorn_bases[0].__module__ if uvicorn_bases else getattr(protocol, "__module__", "")) or ""
    return name.rsplit(".", 1)[-1].removesuffix("_impl") or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    settings, overrides, server = parse_args(argv)
    _setup_logging(settings.log_level)
    if settings.writable and settings.engine == "ray":
        log.error(
            "cannot start: --writable is not supported with --engine ray (writes would have to reach the shard "
            "owning each id); serve writes with --engine local, one process"
        )
        return 2
    if settings.writable and server["workers"] > 1:
        log.error(
            "cannot start: --writable needs --workers 1: one process holds the index's writer lock, its "
            "write-ahead log and the in-memory segment, which other workers could not see"
        )
        return 2
    if settings.data is not None:
        return _serve_data(settings, server)
    if settings.engine == "ray":
        from app.ray import deploy

        return deploy.run(settings)
    from app.main import create_app
    from app.services import Services, version_name
    from semsearch.errors import SemsearchError

    try:
        services = Services.load(settings)
    except SemsearchError as e:
        log.error("cannot start: %s", e.message)
        return 1

    def describe() -> tuple[str, int]:
        index = services.indexes.current
        return version_name(index), index.count

    common = _uvicorn_options(settings, server)
    if server["workers"] > 1:
        return _serve_processes(settings, overrides, server["workers"], common, services, describe)
    app = create_app(settings, services=services)
    config = uvicorn.Config(app, **common)
    _Server(config, str(settings.index), describe).run()
    return 0


def _serve_data(settings: Settings, server: dict[str, Any]) -> int:
    """``--data DIR``: every index directory under DIR as a collection, loaded on first use."""
    refused = (
        "--writable (writes stay single-index: serve the collection to write with --index DIR --writable)"
        if settings.writable
        else "--engine ray"
        if settings.engine == "ray"
        else "--workers > 1"
        if server["workers"] > 1
        else None
    )
    if refused:
        log.error("cannot start: --data does not support %s", refused)
        return 2
    from app.catalog import default_collection, scan
    from app.main import create_app
    from semsearch.errors import SemsearchError

    assert settings.data is not None
    try:
        names = list(scan(settings.data))
        default = default_collection(settings, names)
    except (SemsearchError, OSError) as e:
        log.error("cannot start: %s", getattr(e, "message", e))
        return 1
    common = _uvicorn_options(settings, server)
    config = uvicorn.Config(create_app(settings), **common)
    _Server(config, f"{settings.data} ({len(names)} collections, default {default or 'none'})", lambda: ("-", 0)).run()
    return 0


def _uvicorn_options(settings: Settings, server: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's options for the service: its parser with read deadlines and a connection cap fitted
    under the file-descriptor limit (app/connections.py)."""
    from app import connections

    cap = connections.fit_fd_limit(settings.max_connections)
    connections.configure(connections.ConnectionLimits(cap, settings.header_timeout_s, settings.body_timeout_s))
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "lifespan": "on",
        "loop": server["loop"],  # auto: uvloop and httptools when installed (uvicorn[standard], a dependency)
        "http": connections.guarded_protocol(server["http"]),
        "timeout_keep_alive": settings.keep_alive_s,
    }


def worker_app() -> Any:
    """The app of one ``--workers`` process: settings from the environment, logging as in the parent."""
    from app.main import create_app
    from app.settings import get_settings

    settings = get_settings()
    _setup_logging(settings.log_level)
    return create_app(settings)


def _serve_processes(
    settings: Settings,
    overrides: dict[str, Any],
    workers: int,
    common: dict[str, Any],
    services: Any,
    describe: Any,
) -> int:
    """``workers`` uvicorn processes on one socket, each building the app from the environment.

    The parent has already loaded everything once (a bad index or model exits 1 before the port is
    bound, and an ONNX export happens once, not in every worker); it closes that copy and only
    supervises. The flags are handed to the workers as ``SEMSEARCH_*`` variables."""
    import os

    from uvicorn.supervisors import Multiprocess

    version, count = describe()
    services.close()
    for name, value in overrides.items():
        os.environ[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    config = uvicorn.Config("app.__main__:worker_app", factory=True, workers=workers, **common)
    sock = config.bind_socket()
    sock.listen(config.backlog)  # connections queue from now on, while the workers load the model
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "semsearch serving %s (%s, %d sentences) at http://%s:%d/ (%d worker processes; Ctrl-C or SIGTERM to stop)",
        settings.index,
        version,
        count,
        shown,
        port,
        workers,
    )
    Multiprocess(config, sockets=[sock]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
