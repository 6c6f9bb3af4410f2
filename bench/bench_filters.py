"""What a metadata filter costs at its bounds (issue 13, finding 4): the first evaluation of a filter over
N rows (``semsearch.search.filters.matching_iids``, uncached), for a normal one-field filter and for the
largest filters the bounds allow. Metadata: 32 string keys per row (every filter field present, the
worst case: no clause short-circuits).

    python bench/bench_filters.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time

from _common import markdown_table, save

from semsearch.search import compile_filter, filters, matching_iids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE docs (iid INTEGER PRIMARY KEY, metadata TEXT NOT NULL DEFAULT '{}')")
    deep = {"b": {"b": {"b": {"b": {"b": {"b": {"b": {"b": "x"}}}}}}}}
    meta = json.dumps({**{f"f{j}": "a" for j in range(32)}, "a" * filters.MAX_FIELD_CHARS: 1, "b": deep["b"]})
    conn.executemany("INSERT INTO docs VALUES (?, ?)", ((i, meta) for i in range(args.rows)))
    n = filters.MAX_FIELDS
    many = ["a", *(f"v{i}" for i in range(filters.MAX_IN_VALUES - 1))]
    cases = {
        "one field (normal)": {"f0": "a"},
        f"{n} fields (the most allowed)": {f"f{j}": "a" for j in range(n)},
        f"{n} fields, each in[str, num, bool]": {f"f{j}": {"in": ["a", 1, True]} for j in range(n)},
        f"in with {filters.MAX_IN_VALUES} values": {"f0": {"in": many}},
        f"{n} fields x in with {filters.MAX_IN_VALUES} values": {
            f"f{j}": {"in": many} for j in range(n)
        },
        f"{filters.MAX_FIELD_CHARS}-char field name": {"a" * filters.MAX_FIELD_CHARS: 1},
        f"{filters.MAX_PATH_DEPTH}-key dotted path": {".".join(["b"] * filters.MAX_PATH_DEPTH): "x"},
        f"{n} fields x range bounds": {f"f{j}": {"gte": "a", "lte": "z", "gt": "0", "lt": "zz"} for j in range(n)},
    }  # fmt: skip
    rows = []
    base = None
    for label, spec in cases.items():
        compiled = compile_filter(spec)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            matched = len(matching_iids(conn, compiled))
            times.append(time.perf_counter() - started)
        ms = min(times) * 1000
        base = base or ms
        rows.append([label, matched, round(ms, 1), round(ms / base, 1)])
    print(f"{args.rows} rows, 32 metadata keys per row; best of {args.repeat}")
    print(markdown_table(["filter", "rows matched", "ms (uncached)", "x one field"], rows))
    save("filters", {"rows": args.rows, "table": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
