"""One exception hierarchy for the core, the CLI and the service.

Every error carries a stable machine-readable ``code``; the service maps it to an HTTP status
and the CLI to an exit code, so both speak the same vocabulary.
"""

from __future__ import annotations

from typing import Any


class SemsearchError(Exception):
    """Base class: ``code`` is stable, ``message`` is for humans, ``detail`` is structured context."""

    code = "error"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInputError(SemsearchError):
    """The caller's input is malformed (bad file, bad query, bad option)."""

    code = "invalid_input"


class TooManyRejectsError(InvalidInputError):
    """More input rows were rejected than ``--max-rejects`` allows; nothing was published."""

    code = "too_many_rejects"


class DuplicateIdError(InvalidInputError):
    """The same id appears twice and ``--on-duplicate error`` (the default) is in force."""

    code = "duplicate_id"


class IndexNotFoundError(SemsearchError):
    """No published index version at the given path."""

    code = "index_not_found"


class CorruptIndexError(SemsearchError):
    """An index version fails its integrity checks (missing files, count or checksum mismatch)."""

    code = "corrupt_index"


class ModelMismatchError(SemsearchError):
    """The model or pooling in use differs from the one the index was built with."""

    code = "model_mismatch"


class ModelLoadError(SemsearchError):
    """A model could not be loaded (missing folder, no network for a hub name, bad files)."""

    code = "model_load_failed"


class DiskFullError(SemsearchError):
    """The filesystem holding the index ran out of space; nothing was published."""

    code = "disk_full"
