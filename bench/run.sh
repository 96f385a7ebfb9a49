#!/usr/bin/env bash
# Benchmark opsgate against the LiteLLM proxy with the shared gateway harness (see bench/README.md).
#
#   bench/run.sh [extra peer.sh options, e.g. --rounds 1 --conc 8 --no-litellm]
#
# Builds a throwaway opsgate project for the run under bench/runs/<stamp>/ (its own
# config/gateway.yaml with the request log on, routers fake-gpt -> {upstream},
# fake-gpt-stream -> {upstream_stream} and, for --modes slowstream, fake-gpt-slow ->
# {upstream_slow}), imports the bench key, and runs the harness in place:
# ../shared/bench/peer.sh from the repo root, or $BENCH_HARNESS.
#
# Environment:
#   BENCH_HARNESS   path to peer.sh (default: <repo>/../shared/bench/peer.sh)
#   LITELLM_BIN     LiteLLM proxy binary (default: /work/litellm-venv/bin/litellm); a --litellm-bin
#                   given on the command line wins (it comes later)
#   OPSGATE_BIN     opsgate binary (default: <repo>/.venv/bin/opsgate)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${BENCH_HARNESS:-$REPO/../shared/bench/peer.sh}"
LITELLM_BIN="${LITELLM_BIN:-/work/litellm-venv/bin/litellm}"
OPSGATE_BIN="${OPSGATE_BIN:-$REPO/.venv/bin/opsgate}"
BENCH_KEY="sk-bench-7f3c9a1e5b2d4c6f8a0e"

[[ -x "$HARNESS" ]] || { echo "bench: harness not found at $HARNESS (set BENCH_HARNESS)" >&2; exit 2; }
[[ -x "$OPSGATE_BIN" ]] || { echo "bench: $OPSGATE_BIN not found (run make first)" >&2; exit 2; }
HARNESS="$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN="$REPO/bench/runs/$STAMP"
PROJ="$RUN/project"
DATA="$RUN/data"
mkdir -p "$PROJ/config/routers" "$PROJ/templates" "$DATA"

# How the gateway behaves: defaults, request log on (it is always on; written explicitly here).
cat >"$PROJ/config/gateway.yaml" <<'EOF'
server:
  host: 127.0.0.1
  port: 8080
  access_log: false
request_log:
  queue_size: 10000
  batch_size: 500
  flush_interval_s: 0.2
cache:
  refresh_interval_s: 0.5
egress:   # the harness's fake upstream on 127.0.0.1, with its key variable
  hosts: ['127.0.0.1:*']
  api_key_envs: [BENCH_FAKE_UPSTREAM_KEY]
EOF

# Router templates: the target command renders them with the harness's upstream URLs before `serve`
# (which registers config/routers/*.yaml), so a non-default --upstream-port works too.
router_template() {  # name placeholder
  cat <<EOF
name: $1
description: Bench route to the harness's fake OpenAI-compatible upstream.
strategy: {type: fallback}
deployments:
  - id: fake-upstream
    model: openai/gpt-4o-mini
    api_base: $2
    api_key_env: BENCH_FAKE_UPSTREAM_KEY
EOF
}
router_template fake-gpt @UPSTREAM@ >"$PROJ/templates/fake-gpt.yaml"
router_template fake-gpt-stream @UPSTREAM_STREAM@ >"$PROJ/templates/fake-gpt-stream.yaml"
router_template fake-gpt-slow @UPSTREAM_SLOW@ >"$PROJ/templates/fake-gpt-slow.yaml"
# Rendered with the default upstream too, so that `keys create` and a manual `serve` see valid files.
for t in "$PROJ"/templates/*.yaml; do
  sed -e 's|@UPSTREAM@|http://127.0.0.1:18080/v1|; s|@UPSTREAM_STREAM@|http://127.0.0.1:18080/stream/v1|' \
    -e 's|@UPSTREAM_SLOW@|http://127.0.0.1:18080/slow/v1|' \
    "$t" >"$PROJ/config/routers/$(basename "$t")"
done

# The bench project is not a git repository: its first start registers the working tree (an operator's
# explicit choice, docs/registry.md "A fresh install").
export OPSGATE_PROJECT_DIR="$PROJ" OPSGATE_DATA_DIR="$DATA" OPSGATE_BOOTSTRAP_WORKING_TREE=true
"$OPSGATE_BIN" keys create --name bench --role app --key "$BENCH_KEY" >"$RUN/keys-create.log" 2>&1 \
  || { cat "$RUN/keys-create.log" >&2; exit 1; }

TARGET_CMD="cd '$PROJ' && export OPSGATE_PROJECT_DIR='$PROJ' OPSGATE_DATA_DIR='$DATA' OPSGATE_BOOTSTRAP_WORKING_TREE=true \
BENCH_FAKE_UPSTREAM_KEY=sk-fake-upstream && \
for t in templates/*.yaml; do sed -e 's|@UPSTREAM@|{upstream}|; s|@UPSTREAM_STREAM@|{upstream_stream}|' \
-e 's|@UPSTREAM_SLOW@|{upstream_slow}|' \
\"\$t\" > config/routers/\$(basename \"\$t\") || exit 1; done && \
exec '$OPSGATE_BIN' serve --host 127.0.0.1 --port {port}"

echo "bench: run folder $RUN" >&2
set +e
"$HARNESS" --stream --target-name opsgate --target-url http://127.0.0.1:8080 \
  --model fake-gpt --stream-model fake-gpt-stream --slow-model fake-gpt-slow \
  --target-cmd "$TARGET_CMD" \
  --litellm-bin "$LITELLM_BIN" \
  --json-out "$RUN/results.json" \
  "$@" 2>&1 | tee "$RUN/output.txt"
rc=${PIPESTATUS[0]}
set -e

# Keep the harness's logs (gateway and LiteLLM output per round) beside the figures.
tmp_run="$(sed -n 's/.*run folder \(\/[^ ;]*gwbench-[^ ;]*\).*/\1/p' "$RUN/output.txt" | head -1)"
if [[ -n "$tmp_run" && -d "$tmp_run" ]]; then
  mkdir -p "$RUN/logs"
  cp "$tmp_run"/*.log "$RUN/logs/" 2>/dev/null || true
fi
# The request log the gateway wrote during the run: rows by status (a quick check that it was on).
if [[ $rc == 0 ]]; then
  "$REPO/.venv/bin/python" - "$DATA/opsgate.db" >"$RUN/requestlog-summary.txt" 2>&1 <<'EOF' || true
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("select route, stream, status, count(*) from request_log group by 1, 2, 3").fetchall()
for route, stream, status, n in rows:
    print(f"{route} stream={bool(stream)} status={status}: {n} rows")
EOF
  cat "$RUN/requestlog-summary.txt" >&2
fi
echo "bench: figures in $RUN (output.txt, results.json, logs/)" >&2
exit "$rc"
