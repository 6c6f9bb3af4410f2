"""Metadata filters: validate a filter object and compile it to SQL over ``docs.metadata`` (JSON).

Grammar (all fields must match, i.e. AND)::

    {"field": value}                        equality; value is a string, number or boolean
    {"field": {"in": [v1, v2, ...]}}        equality with any of the values
    {"field": {"gte": x, "lte": y}}         range; any of gt, gte, lt, lte (at least one)

``field`` is a metadata key, or a dotted path into nested objects (``"source.year"``), made of
letters, digits and underscores. Comparisons are typed as in JSON: a number matches numbers
(``2020`` does not match the string ``"2020"``), a string strings (ranges on strings compare
lexicographically, by code point), ``true``/``false`` booleans; a row without the field never matches.
A field whose value is a list matches when **any element** matches the condition (equality, ``in`` or
range; as Qdrant and Weaviate do): ``{"tags": "cat"}`` matches ``"tags": ["cat", "wild"]``. Only the
list's own elements count (a list inside the list, or an object, never matches a scalar).

Strings compare **exactly, code point for code point**: no case folding, no Unicode normalisation (NFC
``"é"`` and NFD ``"e\u0301"`` differ), no trimming, the same rule as row ids (:mod:`semsearch.ids`).
Lexical search is the forgiving one (FTS5's ``unicode61`` folds case and removes diacritics). String
values must be valid Unicode text without NUL (:func:`semsearch.text.text_problem`), like every text
the service accepts. The filter addresses metadata only: the row id is not a metadata field.

Every input is bounded (the ``MAX_*`` constants below) so that no filter costs more than a small multiple of a
one-field filter: evaluating a filter reads each row's metadata once per field, so the number of
fields, the length of a field path, the number of values and the length of each string value are
capped (measured in docs/reliability.md). Numbers must lie within +-2**53 (exact in JSON, bindable by SQLite).

The matching rows are cached per (segment, filter): a segment is immutable. The first evaluation of
a filter can take a while on a big index (docs/reliability.md, "Filter cost"), so the service runs
it on a thread of its own before the request joins a micro-batch (:mod:`app.batcher`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.text import text_problem

log = logging.getLogger(__name__)

RANGE_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS: tuple[str, ...] = ("in", *RANGE_OPERATORS)
MAX_FIELDS = 8  # each field is one pass over every row's metadata JSON
MAX_FIELD_CHARS = 128  # a field path: SQLite re-reads the path for every row
MAX_PATH_DEPTH = 8  # dotted segments of a field path
MAX_IN_VALUES = 1000  # values of one 'in' list (SQLite looks them up in a temporary b-tree)
MAX_VALUE_CHARS = 1000  # one string value
# numbers within +-2**53: exact as JSON numbers everywhere (RFC 8259 interoperability), bindable by SQLite
NUMBER_LIMIT = 2**53
_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
FIELD_PATTERN = rf"^{_KEY}(\.{_KEY}){{0,{MAX_PATH_DEPTH - 1}}}$"  # at most MAX_PATH_DEPTH keys
_FIELD_RE = re.compile(FIELD_PATTERN)
_NUMBER_TYPES = "('integer', 'real')"
_OPERATOR_HELP = (
    'a value (string, number or boolean), {"in": [values]}, or a range with any of "gt", "gte", "lt", "lte"'
)

Scalar = str | int | float | bool


@dataclass(frozen=True)
class CompiledFilter:
    """A validated filter: an SQL condition over the ``docs`` row aliased ``d``, and its parameters."""

    where: str
    params: tuple[Any, ...]
    key: str  # canonical JSON of the filter, for caching

    def __bool__(self) -> bool:
        return bool(self.where)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: error messages never echo a huge input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_scalar(field: str, value: Any, what: str) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidInputError(
                f"filter field {field!r}: {what} is {len(value)} characters long; the limit is {MAX_VALUE_CHARS}"
            )
        problem = text_problem(value, allow_blank=True)
        if problem:  # SQLite cannot bind a lone surrogate (a 500 before); NUL is refused like in every text
            raise InvalidInputError(f"filter field {field!r}: {what} {problem}")
        return value
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInputError(f"filter field {field!r}: {what} must be a finite number, got {value!r}")
        if not -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
            raise InvalidInputError(
                f"filter field {field!r}: {what} is out of range; numbers must lie within +-{NUMBER_LIMIT} (2**53)"
            )
        return value
    raise InvalidInputError(
        f"filter field {field!r}: {what} must be a string, number or boolean, got {type(value).__name__}; "
        f"a condition is {_OPERATOR_HELP}"
    )


def _element_equal(type_: str, value: str, values: list[Scalar]) -> tuple[str, list[Any]]:
    """SQL for 'the JSON value (its json_type ``type_``, its SQL value ``value``) equals one of values'
    (one ``CASE`` on the type: the type is read once however many kinds of values there are)."""
    branches: list[str] = []
    params: list[Any] = []
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    bools = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    if strings:
        branches.append(f"WHEN 'text' THEN {value} IN ({','.join('?' * len(strings))})")
        params += strings
    for number_type in ("integer", "real") if numbers else ():
        branches.append(f"WHEN '{number_type}' THEN {value} IN ({','.join('?' * len(numbers))})")
        params += numbers
    branches += [f"WHEN '{b}' THEN 1" for b in bools]
    if not branches:
        return "0", []
    return f"(CASE {type_} {' '.join(branches)} ELSE 0 END)", params


def _element_range(type_: str, value: str, bounds: dict[str, Scalar], numeric: bool) -> tuple[str, list[Any]]:
    """SQL for 'the JSON value lies within bounds' (numbers compare with numbers, strings with strings)."""
    type_test = f"{type_} IN {_NUMBER_TYPES}" if numeric else f"{type_} = 'text'"
    tests = " AND ".join(f"{value} {RANGE_OPERATORS[op]} ?" for op in sorted(bounds))
    return f"({type_test} AND {tests})", [bounds[op] for op in sorted(bounds)]


def _any_element(path: str, element: Callable[[str, str], tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """SQL for 'the value at ``path`` matches, or it is a list and one of its elements matches': the value's
    type and value are read once per row (a scalar subquery); ``element(type, value)`` builds the test."""
    in_list, p_list = element("e.type", "e.value")
    scalar, p_scalar = element("t", "v")
    sql = (
        f"(SELECT CASE WHEN t = 'array' THEN EXISTS (SELECT 1 FROM json_each(d.metadata, ?) AS e WHERE {in_list}) "
        f"ELSE {scalar} END FROM (SELECT json_type(d.metadata, ?) AS t, json_extract(d.metadata, ?) AS v))"
    )
    return sql, [path, *p_list, *p_scalar, path, path]


def compile_filter(spec: Mapping[str, Any] | CompiledFilter | None) -> CompiledFilter:
    """Validate ``spec`` and compile it; errors are :class:`InvalidInputError` naming the problem.
    A filter is compiled once per request, at the edge, and carried: a compiled one comes back as it is."""
    if isinstance(spec, CompiledFilter):
        return spec
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return CompiledFilter("", (), "")
    if not isinstance(spec, Mapping):
        raise InvalidInputError(
            f"a filter must be an object mapping metadata fields to conditions, got {type(spec).__name__}"
        )
    if len(spec) > MAX_FIELDS:
        raise InvalidInputError(f"a filter may name at most {MAX_FIELDS} fields, got {len(spec)}")
    clauses: list[str] = []
    params: list[Any] = []
    for field in sorted(spec):
        _check_field(field)
        sql, p = _any_element("$." + field, _condition(field, spec[field]))
        clauses.append(sql)
        params += p
    key = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return CompiledFilter(" AND ".join(clauses), tuple(params), key)


def _check_field(field: Any) -> None:
    if isinstance(field, str) and len(field) > MAX_FIELD_CHARS:
        raise InvalidInputError(
            f"filter field name {field[:40]!r}... is {len(field)} characters long; the limit is {MAX_FIELD_CHARS}"
        )
    if isinstance(field, str) and field.count(".") >= MAX_PATH_DEPTH:
        raise InvalidInputError(
            f"filter field {field!r} is {field.count('.') + 1} keys deep; the limit is {MAX_PATH_DEPTH}"
        )
    if not isinstance(field, str) or not _FIELD_RE.match(field):
        raise InvalidInputError(
            f"invalid filter field name {field!r}: use a metadata key made of letters, digits and "
            "underscores (dots for nested keys, e.g. 'source.year')"
        )


def _condition(field: str, cond: Any) -> Callable[[str, str], tuple[str, list[Any]]]:
    """One field's condition, validated, as the per-element SQL builder :func:`_any_element` takes."""
    if not isinstance(cond, Mapping):
        return partial(_element_equal, values=[_check_scalar(field, cond, "the value")])
    unknown = [op for op in cond if op not in OPERATORS]
    if unknown or not cond:
        raise InvalidInputError(
            f"filter field {field!r}: "
            + (f"unknown operator(s) {', '.join(map(_short, unknown[:5]))}" if unknown else "empty condition")
            + f"; valid operators: {', '.join(OPERATORS)} (a condition is {_OPERATOR_HELP})"
        )
    if "in" in cond:
        if len(cond) > 1:
            raise InvalidInputError(f"filter field {field!r}: 'in' cannot be combined with other operators")
        values = cond["in"]
        if not isinstance(values, list | tuple):
            raise InvalidInputError(f"filter field {field!r}: 'in' takes a list of values, got {_short(values)}")
        if len(values) > MAX_IN_VALUES:
            raise InvalidInputError(f"filter field {field!r}: 'in' takes at most {MAX_IN_VALUES} values")
        return partial(_element_equal, values=[_check_scalar(field, v, "each 'in' value") for v in values])
    bounds = {op: _check_scalar(field, v, f"the {op!r} bound") for op, v in cond.items()}
    kinds = {"bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "num" for v in bounds.values()}
    if "bool" in kinds or len(kinds) > 1:
        raise InvalidInputError(
            f"filter field {field!r}: range bounds must be all numbers or all strings, got {_short(dict(bounds), 200)}"
        )
    return partial(_element_range, bounds=bounds, numeric=kinds == {"num"})


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


CACHE_SIZE = 64
_caches: weakref.WeakKeyDictionary[Any, _LRU] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache(cache_owner: Any) -> _LRU:
    with _caches_lock:
        cache = _caches.get(cache_owner)
        if cache is None:
            cache = _caches[cache_owner] = _LRU(CACHE_SIZE)
        return cache


def cached_iids(compiled: CompiledFilter, cache_owner: Any) -> np.ndarray | None:
    """The cached matching iids of ``compiled`` for ``cache_owner`` (a segment, a sharded version), if any."""
    with _caches_lock:
        cache = _caches.get(cache_owner)
    return None if cache is None else cache.get(compiled.key)


def cache_iids(compiled: CompiledFilter, cache_owner: Any, iids: np.ndarray) -> np.ndarray:
    """Remember ``iids`` (made read-only) as the rows of ``cache_owner`` that match ``compiled``."""
    iids.setflags(write=False)
    _cache(cache_owner).put(compiled.key, iids)
    return iids


def matching_iids(conn: Any, compiled: CompiledFilter, cache_owner: Any = None) -> np.ndarray:
    """Ascending iids of the rows matching ``compiled`` (cached per ``cache_owner``, e.g. a segment)."""
    if cache_owner is not None:
        hit = cached_iids(compiled, cache_owner)
        if hit is not None:
            return hit
    rows = conn.execute(f"SELECT d.iid FROM docs AS d WHERE {compiled.where} ORDER BY d.iid", compiled.params)
    iids = np.fromiter((r[0] for r in rows), dtype=np.int64)
    log.debug("filter %s matches %d rows", compiled.key, len(iids))
    if cache_owner is None:
        iids.setflags(write=False)
        return iids
    return cache_iids(compiled, cache_owner, iids)
