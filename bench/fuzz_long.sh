#!/bin/sh
# The long schemathesis run of docs/reliability.md: a real server (with a reranker and an API key), then
# `st run` over every operation with all checks, all phases and generation modes, with and without the key.
#   bench/fuzz_long.sh INDEX RERANKER_DIR [MAX_EXAMPLES]
set -eu
INDEX=$1; RERANKER=$2; N=${3:-100}; PORT=${PORT:-8713}; KEY=fuzz-key-0123456789
PY=${PYTHON:-python}
SEMSEARCH_API_KEY=$KEY SEMSEARCH_RERANKER=$RERANKER SEMSEARCH_MAX_CANDIDATES=20 SEMSEARCH_MAX_RERANK_TEXTS=20 \
SEMSEARCH_MAX_QUEUE=1024 SEMSEARCH_RELOAD_POLL_S=0 SEMSEARCH_ACCESS_LOG=false \
  "$PY" -m app --index "$INDEX" --port "$PORT" > fuzz-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
until grep -q "semsearch serving" fuzz-server.log; do sleep 1; done
ST="$(dirname "$PY")/st"
status=0
"$ST" run "http://127.0.0.1:$PORT/openapi.json" --checks all --max-examples "$N" --workers 1 \
  -H "Authorization: Bearer $KEY" --report junit --report-dir fuzz-report-key || status=1
"$ST" run "http://127.0.0.1:$PORT/openapi.json" --checks all --max-examples "$N" --workers 1 \
  --exclude-checks positive_data_acceptance --report junit --report-dir fuzz-report-nokey || status=1
grep -c " 500 \| Traceback" fuzz-server.log || true
exit $status
