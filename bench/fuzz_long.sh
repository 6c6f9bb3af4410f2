#!/bin/sh
# The long schemathesis run of docs/reliability.md: a real server (with a reranker and an API key), then
# `st run` over every operation with all checks and phases, with the key (positive and negative data) and
# without it (every route but /health must answer 401). Reports and the server log go to OUT.
#   bench/fuzz_long.sh INDEX RERANKER_DIR [MAX_EXAMPLES] [OUT]
set -eu
INDEX=$1; RERANKER=$2; N=${3:-100}; OUT=${4:-/tmp/semsearch-fuzz}; PORT=${PORT:-8713}; KEY=fuzz-key-0123456789
PY=${PYTHON:-python}
ST="$(dirname "$(command -v "$PY")")/st"
mkdir -p "$OUT"
SEMSEARCH_API_KEY=$KEY SEMSEARCH_RERANKER=$RERANKER SEMSEARCH_MAX_CANDIDATES=20 SEMSEARCH_MAX_RERANK_TEXTS=20 \
SEMSEARCH_MAX_QUEUE=1024 SEMSEARCH_RELOAD_POLL_S=0 SEMSEARCH_ACCESS_LOG=false \
  "$PY" -m app --index "$INDEX" --port "$PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
until grep -q "semsearch serving" "$OUT/server.log"; do sleep 1; done
status=0
"$ST" run "http://127.0.0.1:$PORT/openapi.json" --checks all --max-examples "$N" --workers 1 \
  -H "Authorization: Bearer $KEY" --report junit --report-dir "$OUT/with-key" || status=1
# without the key every answer is 401, so schema-valid data is "rejected": that check does not apply
"$ST" run "http://127.0.0.1:$PORT/openapi.json" --checks all --exclude-checks positive_data_acceptance \
  --mode positive --max-examples "$N" --workers 1 --report junit --report-dir "$OUT/without-key" || status=1
echo "server log lines with a 5xx or a traceback: $(grep -c ' 50[0-9] \|Traceback' "$OUT/server.log" || true)"
exit $status
