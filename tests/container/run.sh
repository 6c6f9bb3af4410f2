#!/usr/bin/env bash
# Container test of semsearch, for real: a Docker engine, the image, the compose stack, HTTP through the
# published port, a re-index that the running API hot-reloads, graceful SIGTERM, teardown.
# Run from anywhere as `make container-test` (or `bash tests/container/run.sh`). See docs/docker.md.
#
# Environment (all optional):
#   ENGINE_SH      the engine script            (default: ../shared/container/engine.sh, from the repo root)
#   TORCH_SPEC     torch requirement for the image (default torch==2.13.0)
#   PYTHON         python with pip, to stage the torch wheel (default python3)
#   KEEP_ENGINE=1  leave the Docker engine running afterwards (it is left running anyway when it already
#                  ran before this test started)
#   KEEP_STACK=1   leave the compose stack (containers, index volume) up for inspection
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

ENGINE_SH=${ENGINE_SH:-../shared/container/engine.sh}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}
export COMPOSE_PROJECT_NAME=semsearch-ctest
WHEELS=docker/wheels             # git-ignored (docker/wheels/.gitignore), in the build context
T0=$(date +%s)
STEP_T=$T0
STEP_NAME=""
TIMINGS=()
WORK=$(mktemp -d /tmp/semsearch-ctest.XXXXXX)
# The compose file's defaults, whatever this shell has set; the API on a free localhost port.
unset SEMSEARCH_API_KEY SEMSEARCH_RERANKER SEMSEARCH_MODELS SEMSEARCH_LOG_LEVEL SEMSEARCH_MAX_K \
    SEMSEARCH_CORS_ORIGINS CORPUS CORPUS_FILE REINDEX API_CPUS API_MEMORY INDEXER_CPUS INDEXER_MEMORY
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SEMSEARCH_BIND=127.0.0.1 SEMSEARCH_PORT=$PORT
BASE="http://127.0.0.1:$PORT"
ENGINE_WAS_RUNNING=0
ENGINE_STARTED=0
STACK_UP=0

log() { printf '[container-test %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
step() {
    local now
    now=$(date +%s)
    if [ -n "$STEP_NAME" ]; then TIMINGS+=("$(printf '%5ds  %s' "$((now - STEP_T))" "$STEP_NAME")"); fi
    STEP_NAME=$1
    STEP_T=$now
    [ -n "$1" ] && log "== $1"
    return 0
}
print_timings() {
    step ""
    log "timings per step:"
    local t
    for t in "${TIMINGS[@]}"; do printf '    %s\n' "$t"; done
    printf '    %5ds  total\n' "$(($(date +%s) - T0))"
}

teardown() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ "$STACK_UP" = 1 ]; then
        log "logs of the stack (last 60 lines) after the failure:"
        docker compose logs --no-color --tail 60 2>&1 | sed 's/^/    /'
    fi
    if [ "$STACK_UP" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then
        log "teardown: docker compose down -v"
        docker compose down -v --remove-orphans --timeout 30 >"$WORK/down.log" 2>&1 || cat "$WORK/down.log"
    fi
    if [ "$ENGINE_STARTED" = 1 ] && [ "$ENGINE_WAS_RUNNING" = 0 ] && [ "${KEEP_ENGINE:-0}" != 1 ] \
        && [ "${KEEP_STACK:-0}" != 1 ]; then
        log "teardown: engine stop"
        bash "$ENGINE_SH" stop
    fi
    rm -rf "$WORK"
    print_timings
    if [ "$rc" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# JSON assertions with python3 (jq is not needed): json_check FILE 'python expression over d' 'message'
json_check() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, expr, msg = sys.argv[1:]
with open(path) as fh:
    d = json.load(fh)
if not eval(expr, {"d": d}):
    sys.exit(f"assertion failed: {msg}\n  expression: {expr}\n  response: {json.dumps(d)[:1500]}")
PY
}
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$1" "$2"; }

# ---------------------------------------------------------------------------------------------------------
step "engine start"
[ -f "$ENGINE_SH" ] || fail "the container engine script $ENGINE_SH is absent (expected at ../shared/container/engine.sh next to the repo; set ENGINE_SH)"
CTR_SOCK="${CTR_WORK:-/tmp/ctr-engine}/docker.sock"
if command -v docker >/dev/null && [ -S "$CTR_SOCK" ] && DOCKER_HOST="unix://$CTR_SOCK" docker info >/dev/null 2>&1; then
    ENGINE_WAS_RUNNING=1
fi
ENGINE_ENV=$(bash "$ENGINE_SH" start) || fail "engine.sh start failed"
eval "$ENGINE_ENV"
ENGINE_STARTED=1
docker info >/dev/null 2>&1 || fail "docker is not answering on $DOCKER_HOST"
log "docker $(docker version --format '{{.Server.Version}}'), $(docker compose version)"

# ---------------------------------------------------------------------------------------------------------
step "stage the torch wheel into $WHEELS"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$TORCH_SPEC" -d "$WHEELS" \
    || fail "pip download $TORCH_SPEC failed"
if ls "$WHEELS"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    # A CPU wheel is staged: build from it alone (no PyTorch index needed; torch's small deps from PyPI).
    export TORCH_INDEX_URL=""
    log "staged $(find "$WHEELS" -maxdepth 1 -name 'torch-*+cpu-*.whl' -printf '%f ')"
else
    # pip took a CUDA build from PyPI: drop it, let the image use the PyTorch CPU index (its default).
    find "$WHEELS" -name 'torch-*.whl' ! -name '*+cpu*' -delete
    unset TORCH_INDEX_URL
    log "no CPU torch wheel available locally; the build uses the PyTorch CPU index"
fi
export TORCH_SPEC

# ---------------------------------------------------------------------------------------------------------
step "lint: hadolint, compose config, compose schema"
hadolint Dockerfile || fail "hadolint reported problems in the Dockerfile"
docker compose config -q || fail "docker compose config rejected docker-compose.yml"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml \
    || fail "docker-compose.yml does not validate against the compose spec schema"
# Files the image and compose need by default must be in a fresh clone, not git-ignored.
if git rev-parse --git-dir >/dev/null 2>&1; then
    for f in docker/entrypoint.sh docker/wheels/.gitignore docker/empty-models/README.md data/sample/wordnet_glosses.jsonl.gz; do
        [ -e "$f" ] || fail "$f is missing"
        if git check-ignore -q "$f"; then fail "$f is git-ignored: a fresh clone (CI) would not have it"; fi
    done
fi
if command -v shellcheck >/dev/null; then
    shellcheck docker/entrypoint.sh tests/container/run.sh || fail "shellcheck"
fi

# ---------------------------------------------------------------------------------------------------------
step "build the image (docker compose build)"
docker compose down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an aborted run
if ! docker compose --progress plain build indexer >"$WORK/build.log" 2>&1; then
    tail -60 "$WORK/build.log"
    fail "image build failed"
fi
grep -E '^#[0-9]+ (DONE|CACHED)' "$WORK/build.log" | tail -3 | sed 's/^/    /' || true
SIZE=$(docker image ls semsearch:latest --format '{{.Size}}')
log "image semsearch:latest: $SIZE"
[ "$(docker image inspect semsearch:latest --format '{{.Config.User}}')" != "" ] || fail "image has no USER"
[ "$(docker image inspect semsearch:latest --format '{{.Config.StopSignal}}')" = SIGTERM ] || fail "no STOPSIGNAL SIGTERM"

# ---------------------------------------------------------------------------------------------------------
step "index the sample corpus (docker compose run --rm indexer)"
STACK_UP=1
docker compose run --rm -T indexer >"$WORK/index1.log" 2>&1 || { tail -40 "$WORK/index1.log"; fail "indexer build"; }
grep -v -E '^\s*$' "$WORK/index1.log" | tail -3 | sed 's/^/    /'
grep -q '^published v000001' "$WORK/index1.log" || fail "the indexer did not publish v000001"

# ---------------------------------------------------------------------------------------------------------
step "start the API (docker compose up -d --wait api)"
# As a user would: `up` first runs the one-shot indexer again (its dependency, condition
# service_completed_successfully), which finds the index up to date and exits 0; then api starts.
docker compose up -d --wait api || fail "api did not become healthy"
docker compose logs --no-color indexer 2>&1 | grep -q 'up to date' || fail "up: the indexer did not skip the unchanged corpus"
API_CID=$(docker compose ps -q api)

# ---------------------------------------------------------------------------------------------------------
step "HTTP checks through the published port"
curl -fsS "$BASE/health" -o "$WORK/health.json" || fail "GET /health"
curl -fsS "$BASE/ready" -o "$WORK/ready.json" || fail "GET /ready"
curl -fsS "$BASE/info" -o "$WORK/info.json" || fail "GET /info"
json_check "$WORK/info.json" 'd["index_version"] == "v000001" and d["count"] > 10000' "/info: v000001, the 12k sample"
V1=$(json_get "$WORK/info.json" 'd["index_version"]')

curl -fsS -G "$BASE/search" --data-urlencode "q=a small stream of water" --data-urlencode "k=5" \
    -o "$WORK/get.json" || fail "GET /search"
json_check "$WORK/get.json" 'len(d["results"]) == 5 and d["index_version"] == "v000001" and "took_ms" in d' \
    "GET /search returns k=5 results from v000001"
json_check "$WORK/get.json" 'all(set(h) >= {"id", "text", "score", "metadata"} for h in d["results"])' \
    "hits carry id, text, score, metadata"
json_check "$WORK/get.json" '[h["score"] for h in d["results"]] == sorted((h["score"] for h in d["results"]), reverse=True)' \
    "hits sorted by score"
json_check "$WORK/get.json" 'any("stream" in h["text"] or "river" in h["text"] for h in d["results"][:3])' \
    "a stream/river gloss in the top 3"
log "GET /search top hit: $(json_get "$WORK/get.json" 'd["results"][0]["text"]')"

# An exact gloss of the sample comes back first, with cosine ~1.
curl -fsS -X POST "$BASE/search" -H 'Content-Type: application/json' \
    -d '{"query": "physical space independent of what occupies it", "k": 3}' -o "$WORK/post.json" \
    || fail "POST /search"
json_check "$WORK/post.json" 'd["results"][0]["id"] == "n-00029007" and d["results"][0]["score"] > 0.99' \
    "POST /search: exact gloss n-00029007 first"

curl -fsS "$BASE/" -o "$WORK/page.html" || fail "GET /"
grep -qi '<html' "$WORK/page.html" || fail "GET / is not an HTML page"
log "GET / page: $(wc -c <"$WORK/page.html") bytes, title: $(grep -o -i '<title>[^<]*' "$WORK/page.html" | sed 's/<title>//I' | head -1)"

# ---------------------------------------------------------------------------------------------------------
step "security and health: non-root, healthy, localhost bind"
uid=$(docker compose exec -T api id -u)
[ "$uid" != 0 ] || fail "the api container runs as root"
log "api runs as uid $uid ($(docker compose exec -T api id -un))"
health=$(docker inspect --format '{{.State.Health.Status}}' "$API_CID")
[ "$health" = healthy ] || fail "health status is $health"
bind=$(docker port "$API_CID" 8000/tcp)
case "$bind" in 127.0.0.1:*) ;; *) fail "port published on $bind, expected 127.0.0.1 only" ;; esac
log "health: $health; published: $bind"
ro=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$API_CID")
[ "$ro" = true ] || fail "api root filesystem is not read-only"

# ---------------------------------------------------------------------------------------------------------
step "re-run the indexer with the same corpus (skips: nothing changed)"
docker compose run --rm -T indexer >"$WORK/index2.log" 2>&1 || { cat "$WORK/index2.log"; fail "indexer re-run"; }
grep -q 'up to date' "$WORK/index2.log" || { cat "$WORK/index2.log"; fail "indexer did not skip an unchanged corpus"; }
tail -1 "$WORK/index2.log" | sed 's/^/    /'

# ---------------------------------------------------------------------------------------------------------
step "re-index with a new document while api runs; wait for the hot reload"
NEW_ID="ctest-$(date +%s)-$$"
NEW_TEXT="the quindlewort lighthouse keeper paints violet clocks every tuesday"
mkdir -p "$WORK/extra"
printf '{"id": "%s", "text": "%s", "pos": "test"}\n' "$NEW_ID" "$NEW_TEXT" >"$WORK/extra/new.jsonl"
chmod 755 "$WORK" "$WORK/extra"
chmod 644 "$WORK/extra/new.jsonl"
docker compose run --rm -T -v "$WORK/extra:/extra:ro" indexer \
    indexer add --input /extra/new.jsonl --index /index --keep 3 --no-progress >"$WORK/add.log" 2>&1 \
    || { tail -40 "$WORK/add.log"; fail "indexer add"; }
tail -1 "$WORK/add.log" | sed 's/^/    /'
grep -q '^published v000002' "$WORK/add.log" || fail "indexer add did not publish v000002"
deadline=$(($(date +%s) + 60))
while :; do
    curl -fsS "$BASE/info" -o "$WORK/info2.json" || fail "GET /info during reload"
    V2=$(json_get "$WORK/info2.json" 'd["index_version"]')
    [ "$V2" != "$V1" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "api still serves $V1 60 s after v000002 was published"
    sleep 1
done
log "api hot-reloaded: $V1 -> $V2"
[ "$V2" = v000002 ] || fail "expected v000002, got $V2"
curl -fsS -X POST "$BASE/search" -H 'Content-Type: application/json' \
    -d "{\"query\": \"$NEW_TEXT\", \"k\": 3}" -o "$WORK/post2.json" || fail "POST /search after reload"
json_check "$WORK/post2.json" "d['results'][0]['id'] == '$NEW_ID' and d['index_version'] == 'v000002'" \
    "the new document is found first in v000002"
docker compose run --rm -T indexer indexer info --index /index --json >"$WORK/iinfo.json" 2>/dev/null \
    || fail "indexer info"
json_check "$WORK/iinfo.json" 'd["versions"] == ["v000001", "v000002"]' "two versions kept"

# ---------------------------------------------------------------------------------------------------------
step "no network needed: the packaged model loads with --network none"
docker run --rm --network none -v "$WORK/extra:/extra:ro" semsearch:latest \
    indexer build --input /extra/new.jsonl --output /tmp/offline-index --no-progress >"$WORK/offline.log" 2>&1 \
    || { tail -20 "$WORK/offline.log"; fail "indexer build without network"; }
tail -1 "$WORK/offline.log" | sed 's/^/    /'

# ---------------------------------------------------------------------------------------------------------
step "API key (SEMSEARCH_API_KEY): 401 without it, healthcheck still healthy"
KEY="ctest-key-$$-$RANDOM"
SEMSEARCH_API_KEY=$KEY docker compose up -d --wait --no-deps api || fail "api with an API key did not become healthy"
API_CID=$(docker compose ps -q api)
code=$(curl -s -o /dev/null -w '%{http_code}' -G "$BASE/search" --data-urlencode "q=water")
[ "$code" = 401 ] || fail "GET /search without the key answered $code, expected 401"
curl -fsS -G "$BASE/search" -H "Authorization: Bearer $KEY" --data-urlencode "q=water" -o "$WORK/key.json" \
    || fail "GET /search with the key"
json_check "$WORK/key.json" 'len(d["results"]) > 0' "search with the key returns results"
curl -fsS "$BASE/health" >/dev/null || fail "/health must stay public"
log "401 without key, 200 with it; health $(docker inspect --format '{{.State.Health.Status}}' "$API_CID")"

# ---------------------------------------------------------------------------------------------------------
step "graceful stop (SIGTERM)"
s=$(date +%s)
docker compose stop --timeout 30 api >/dev/null 2>&1
took=$(($(date +%s) - s))
code=$(docker inspect --format '{{.State.ExitCode}}' "$API_CID")
docker logs --tail 5 "$API_CID" 2>&1 | sed 's/^/    /'
# 0, or 143 where uvicorn re-raises the SIGTERM it handled after its graceful shutdown; 137 = SIGKILL.
case "$code" in 0 | 143) ;; *) fail "api exited with $code after SIGTERM (137 = killed, not graceful)" ;; esac
docker logs "$API_CID" 2>&1 | grep -q -E 'Application shutdown complete|Finished server process' \
    || fail "no graceful shutdown in the api log"
[ "$took" -lt 25 ] || fail "api took ${took}s to stop"
log "api stopped gracefully in ${took}s (exit code $code)"

# ---------------------------------------------------------------------------------------------------------
step "image size"
docker image ls semsearch:latest
log "image semsearch:latest size: $SIZE"
