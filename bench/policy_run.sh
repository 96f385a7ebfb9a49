#!/usr/bin/env bash
# Governed mode vs plain mode vs the LiteLLM proxy, with the shared gateway harness (../shared/bench).
#
#   bench/policy_run.sh [extra peer.sh options, e.g. --rounds 2 --conc 1,8,32 --no-litellm]
#
# Two harness runs, one per mode, each with LiteLLM in alternating rounds (so every opsgate/LiteLLM
# ratio is formed within one run, as the harness intends):
#   governed  config/policies.yaml = bench/policy_governed.yaml: auth + rate limit (rpm, tpm) + budget
#             + PII redaction + injection block + token cap + request log, for the bench key (role app)
#   plain     config/policies.yaml = `rules: []` (auth + request log only)
# The project for each run is built like bench/run.sh's (same gateway.yaml, routers, key), under
# bench/runs/<stamp>-policy-<mode>/. At the end the two runs' RPS tables are printed side by side.
#
# Environment: BENCH_HARNESS, LITELLM_BIN, OPSGATE_BIN as for bench/run.sh.
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

build_project() {  # run-dir policy-file
  local run="$1" proj="$1/project" data="$1/data"
  mkdir -p "$proj/config/routers" "$proj/templates" "$data"
  cat >"$proj/config/gateway.yaml" <<'EOF'
server: {host: 127.0.0.1, port: 8080, access_log: false}
request_log: {queue_size: 10000, batch_size: 500, flush_interval_s: 0.2}
cache: {refresh_interval_s: 0.5}
egress: {hosts: ['127.0.0.1:*'], api_key_envs: [BENCH_FAKE_UPSTREAM_KEY]}  # the harness's fake upstream
EOF
  cp "$2" "$proj/config/policies.yaml"
  for name in fake-gpt fake-gpt-stream; do
    local placeholder="@UPSTREAM@"
    [[ $name == fake-gpt-stream ]] && placeholder="@UPSTREAM_STREAM@"
    cat >"$proj/templates/$name.yaml" <<EOF
name: $name
description: Bench route to the harness's fake OpenAI-compatible upstream.
strategy: {type: fallback}
deployments:
  - id: fake-upstream
    model: openai/gpt-4o-mini
    api_base: $placeholder
    api_key_env: BENCH_FAKE_UPSTREAM_KEY
EOF
    sed -e 's|@UPSTREAM@|http://127.0.0.1:18080/v1|; s|@UPSTREAM_STREAM@|http://127.0.0.1:18080/stream/v1|' \
      "$proj/templates/$name.yaml" >"$proj/config/routers/$name.yaml"
  done
  OPSGATE_PROJECT_DIR="$proj" OPSGATE_DATA_DIR="$data" \
    "$OPSGATE_BIN" keys create --name bench --role app --key "$BENCH_KEY" >"$run/keys-create.log" 2>&1 \
    || { cat "$run/keys-create.log" >&2; exit 1; }
}

run_mode() {  # mode policy-file [peer.sh options...]
  local mode="$1" policy="$2"; shift 2
  local run="$REPO/bench/runs/$STAMP-policy-$mode"
  build_project "$run" "$policy"
  local proj="$run/project" data="$run/data"
  local cmd="cd '$proj' && export OPSGATE_PROJECT_DIR='$proj' OPSGATE_DATA_DIR='$data' OPSGATE_BOOTSTRAP_WORKING_TREE=true \
BENCH_FAKE_UPSTREAM_KEY=sk-fake-upstream && \
for t in templates/*.yaml; do sed -e 's|@UPSTREAM@|{upstream}|; s|@UPSTREAM_STREAM@|{upstream_stream}|' \
\"\$t\" > config/routers/\$(basename \"\$t\") || exit 1; done && \
exec '$OPSGATE_BIN' serve --host 127.0.0.1 --port {port}"
  echo "bench: $mode mode, run folder $run" >&2
  set +e
  "$HARNESS" --stream --target-name "opsgate-$mode" --target-url http://127.0.0.1:8080 \
    --model fake-gpt --stream-model fake-gpt-stream --target-cmd "$cmd" --litellm-bin "$LITELLM_BIN" \
    --json-out "$run/results.json" "$@" 2>&1 | tee "$run/output.txt"
  local rc=${PIPESTATUS[0]}
  set -e
  # The decisions the gateway recorded: proof that the checks ran on the measured requests.
  "$REPO/.venv/bin/python" - "$data/opsgate.db" >"$run/decisions-summary.txt" 2>&1 <<'EOF' || true
import json, sqlite3, sys, collections
db = sqlite3.connect(sys.argv[1])
seen = collections.Counter()
for (decisions,) in db.execute("select decisions from request_log"):
    for d in json.loads(decisions):
        seen[(d.get("check"), d.get("verdict"))] += 1
for (check, verdict), n in sorted(seen.items()):
    print(f"{check} {verdict}: {n}")
EOF
  return "$rc"
}

rc=0
run_mode governed "$REPO/bench/policy_governed.yaml" "$@" || rc=$?
plain="$(mktemp)"; echo "rules: []" >"$plain"
run_mode plain "$plain" "$@" || rc=$?
rm -f "$plain"

"$REPO/.venv/bin/python" - "$REPO/bench/runs/$STAMP-policy-governed/results.json" \
  "$REPO/bench/runs/$STAMP-policy-plain/results.json" <<'EOF' || true
import json, statistics, sys
cells = {}
for path in sys.argv[1:]:
    try:
        results = json.load(open(path))["results"]
    except (OSError, ValueError):
        continue
    for r in results:
        if r.get("kind") == "ttft" or r["target"] == "direct" or not r.get("requests"):
            continue
        target = r["target"] if r["target"].startswith("opsgate") else f"{r['target']} ({path.split('-policy-')[-1].split('/')[0]} run)"
        cells.setdefault((target, r["mode"], r["conc"]), []).append(r["rps"])
print("\nRPS, median of rounds (each LiteLLM row is from the run named beside it):")
for (target, mode, conc), rps in sorted(cells.items()):
    print(f"  {target:<26} {mode:<7} c={conc:<3} {statistics.median(rps):>9.1f}")
EOF
for mode in governed plain; do
  echo "decisions recorded ($mode): $(tr '\n' ';' <"$REPO/bench/runs/$STAMP-policy-$mode/decisions-summary.txt")" >&2
done
exit "$rc"
