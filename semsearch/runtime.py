"""Process-level facts and set-up shared by the entry points (the CLI, the service, training)."""

from __future__ import annotations

import logging
import os
import sys

# third-party loggers that are chatty at INFO
NOISY_LOGGERS = ("httpx", "urllib3", "huggingface_hub", "transformers", "sentence_transformers", "faiss")


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def setup_logging(level: int | str) -> None:
    """The one logging configuration of an entry point: timestamped lines on stderr, noisy libraries at WARNING.

    Only entry points call this; library modules just use ``logging.getLogger(__name__)``.
    """
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


_warned_renames: set[str] = set()


def warn_renamed(old: str, new: str) -> None:
    """Log once per process that ``old`` (a flag, environment variable or argument) is a deprecated name of ``new``.

    Old names of renamed knobs keep working through this: the value is used, the operator is told the new name.
    """
    if old in _warned_renames:
        return
    _warned_renames.add(old)
    logging.getLogger("semsearch").warning("%s is deprecated and will be removed; use %s", old, new)
