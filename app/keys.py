"""Scoped API keys: the keys file, its reload, per-key rate limits, and ``python -m app.keys``.

The keys file (``--keys FILE`` / ``SEMSEARCH_KEYS_FILE``) is JSON::

    {"keys": [
      {"name": "frontend", "hash": "sha256:9f86d0…", "scopes": ["read"], "collections": ["*"],
       "rate_limit": {"per_second": 20, "burst": 40}},
      {"name": "ingest", "hash": "sha256:…", "scopes": ["read", "write"], "collections": ["catalogue"]}
    ]}

Only a hash of each key is stored. A key is 32 random bytes (``python -m app.keys add`` makes them), so
a plain SHA-256 is as hard to invert as the key is to guess: a slow password hash (scrypt, argon2)
protects *low-entropy* secrets and would cost tens of milliseconds of CPU on every request, an easy
denial of service. The presented token's SHA-256 is compared with every stored hash by
``hmac.compare_digest`` (the time does not depend on where they differ, nor on which key matched).

Scopes are not hierarchical: ``read`` (search, embed, rerank, documents by id, info), ``write``
(adding and deleting documents), ``admin`` (``/admin/...``, collections, snapshots). A rate limit is a
token bucket per key (``per_second`` refill, ``burst`` capacity), in each server process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
ALL_COLLECTIONS = "*"
HASH_PREFIX = "sha256:"
KEY_PREFIX = "sk-semsearch-"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


CollectionPattern = Annotated[str, Field(max_length=64, pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*)$")]


class KeyFileError(ValueError):
    """The keys file cannot be used; the message is one line naming the file and the problem."""


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_second: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[int | None, Field(ge=1, le=10_000_000)] = None

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.per_second))


class KeyEntry(BaseModel):
    """One key of the keys file (its hash, never the key)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    hash: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    scopes: Annotated[list[Scope], Field(min_length=1)]
    collections: Annotated[
        list[Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")]], Field(min_length=1)
    ]
    rate_limit: RateLimit | None = None

    @field_validator("scopes")
    @classmethod
    def _unique_scopes(cls, value: list[Scope]) -> list[Scope]:
        return sorted(set(value), key=SCOPES.index)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for what in ("name", "hash"):
            seen: set[str] = set()
            for entry in self.keys:
                value = getattr(entry, what)
                if value in seen:
                    shown = value if what == "name" else "(a hash)"
                    raise ValueError(f"two keys have the same {what} {shown}")
                seen.add(value)
        return self


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key's name, what it may do and where."""

    name: str | None  # None: no authentication is configured (anonymous)
    scopes: frozenset[str]
    collections: frozenset[str]
    rate_limit: RateLimit | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def sees(self, collection: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection in self.collections


ANONYMOUS = Principal(None, frozenset(("read", "write")), frozenset({ALL_COLLECTIONS}))
LEGACY = Principal("api-key", frozenset(SCOPES), frozenset({ALL_COLLECTIONS}))  # --api-key: all-powerful


def hash_key(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return HASH_PREFIX + hashlib.sha256(raw).hexdigest()


def new_key() -> str:
    """A fresh secret: printable ASCII without spaces (sendable as ``Authorization: Bearer``)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys_file(path: Path) -> KeysFile:
    """The parsed keys file, or :class:`KeyFileError` with one line saying what is wrong where."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KeyFileError(f"keys file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise KeyFileError(f"keys file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return KeysFile.model_validate_json(text)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise KeyFileError(f"keys file {path}: {where}: {msg}{more}") from None


@dataclass
class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; one request takes one."""

    rate: float
    capacity: int
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.capacity)

    def take(self, now: float | None = None) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyRing:
    """The keys of one keys file, reloadable in place: :meth:`reload` swaps the table in one assignment
    (requests in flight keep the principal they were given) and keeps the old keys when the new file is
    broken. Buckets survive a reload for keys whose name and limit are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[tuple[bytes, Principal]] = []
        self._buckets: dict[str, TokenBucket] = {}
        self._mtime: float | None = None
        self.last_error: str | None = None
        self._load(read_keys_file(path))

    def _load(self, parsed: KeysFile) -> None:
        entries = []
        buckets: dict[str, TokenBucket] = {}
        for e in parsed.keys:
            principal = Principal(e.name, frozenset(e.scopes), frozenset(e.collections), e.rate_limit)
            entries.append((e.hash.encode("ascii"), principal))
            if e.rate_limit is not None:
                old = self._buckets.get(e.name)
                same = old is not None and (old.rate, old.capacity) == (e.rate_limit.per_second, e.rate_limit.capacity)
                buckets[e.name] = old if same and old else TokenBucket(e.rate_limit.per_second, e.rate_limit.capacity)
        self._entries, self._buckets = entries, buckets
        with contextlib.suppress(OSError):
            self._mtime = self.path.stat().st_mtime

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, token: bytes) -> Principal | None:
        """The key whose hash is the token's, compared with every stored hash in constant time."""
        presented = hash_key(token).encode("ascii")
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(presented, stored):
                found = principal
        return found

    def throttle(self, principal: Principal) -> float:
        """0 to go ahead, else the seconds until this key may send again."""
        bucket = self._buckets.get(principal.name or "")
        return bucket.take() if bucket is not None else 0.0

    def reload(self) -> bool:
        """Read the file again; True when the new keys are in force. A broken file keeps the old keys and
        logs one error (once per broken state of the file)."""
        try:
            parsed = read_keys_file(self.path)
        except KeyFileError as e:
            if str(e) != self.last_error:
                log.error("%s; still using the %d keys loaded before", e, len(self._entries))
            self.last_error = str(e)
            with contextlib.suppress(OSError):
                self._mtime = self.path.stat().st_mtime
            return False
        self._load(parsed)
        self.last_error = None
        log.info("keys file %s reloaded: %d keys", self.path, len(self._entries))
        return True

    def changed(self) -> bool:
        """The file's modification time moved since it was last read."""
        try:
            return self.path.stat().st_mtime != self._mtime
        except OSError:
            return self._mtime is not None


class KeyWatcher:
    """Reloads a :class:`KeyRing` on SIGHUP (main thread only) and when the file's mtime moves (every
    ``poll_s`` seconds; 0: SIGHUP only). Runs on the event loop: a reload is a small file read."""

    def __init__(self, keyring: KeyRing, poll_s: float) -> None:
        self.keyring = keyring
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._signal = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal = True
        if self.poll_s > 0:
            self._task = loop.create_task(self._poll(), name="semsearch-keys")

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the keys file %s", self.keyring.path)
        self.keyring.reload()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if self.keyring.changed():
                    self.keyring.reload()
            except Exception:  # keep watching whatever happens
                log.exception("keys file check failed")

    async def stop(self) -> None:
        if self._signal:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ---------------------------------------------------------------------------------- python -m app.keys


def _write_file(path: Path, data: KeysFile) -> None:
    text = json.dumps(data.model_dump(exclude_none=True), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _existing(path: Path) -> KeysFile:
    return read_keys_file(path) if path.exists() else KeysFile(keys=[])


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.keys",
        description="Manage the service's keys file (--keys / SEMSEARCH_KEYS_FILE): it stores hashes only; "
        "a running server reloads it on SIGHUP or when it changes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a key: prints the secret once, stores its hash")
    add.add_argument("--file", type=Path, required=True, help="keys file (created if missing)")
    add.add_argument("--name", required=True, help="unique name (shown in the audit log)")
    add.add_argument("--scopes", required=True, help="comma-separated: read, write, admin")
    add.add_argument("--collections", default="*", help="comma-separated collection names, or * [default *]")
    add.add_argument("--rate", type=float, default=None, help="requests per second (token bucket) [default none]")
    add.add_argument("--burst", type=int, default=None, help="bucket size [default: ceil(--rate)]")
    listing = sub.add_parser("list", help="names, scopes, collections and limits (never hashes)")
    listing.add_argument("--file", type=Path, required=True, help="keys file")
    remove = sub.add_parser("remove", help="delete a key by name")
    remove.add_argument("--file", type=Path, required=True, help="keys file")
    remove.add_argument("--name", required=True, help="the key's name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        current = _existing(args.file)
        if args.command == "list":
            for e in current.keys:
                limit = f"{e.rate_limit.per_second:g}/s burst {e.rate_limit.capacity}" if e.rate_limit else "no limit"
                sys.stdout.write(f"{e.name}\t{','.join(e.scopes)}\t{','.join(e.collections)}\t{limit}\n")
            return 0
        if args.command == "remove":
            kept = [e for e in current.keys if e.name != args.name]
            if len(kept) == len(current.keys):
                parser.exit(1, f"error: no key named {args.name!r} in {args.file}\n")
            _write_file(args.file, KeysFile(keys=kept))
            sys.stderr.write(f"removed key {args.name!r} from {args.file}\n")
            return 0
        secret = new_key()
        rate = None if args.rate is None else {"per_second": args.rate, "burst": args.burst}
        try:
            entry = KeyEntry.model_validate(
                {
                    "name": args.name,
                    "hash": hash_key(secret),
                    "scopes": _csv(args.scopes),
                    "collections": _csv(args.collections),
                    "rate_limit": rate,
                }
            )
            updated = KeysFile(keys=[*current.keys, entry])
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "value"
            parser.error(f"{where}: {str(first['msg']).removeprefix('Value error, ')}")
        _write_file(args.file, updated)
    except KeyFileError as e:
        parser.exit(1, f"error: {e}\n")
    sys.stdout.write(secret + "\n")  # the one time the secret is shown: the command's output, on stdout
    sys.stderr.write(f"added key {args.name!r} to {args.file}; the secret above is not stored anywhere\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
