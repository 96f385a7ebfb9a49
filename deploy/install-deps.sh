#!/usr/bin/env bash
# What deploy/topology.sh needs beyond the project's venv, from Debian's packages: nginx (the balancer),
# iproute2 (network namespaces), curl, redis-server, PostgreSQL's server binaries; with --bench also wrk
# (bench/scaleout.py's load generator). Installs only what is missing; never starts a system service.
# The netns tests (tests/deploy/) run it, so a clean CI machine gets nginx without a change to .ci/run.
set -euo pipefail

want=(nginx:nginx ip:iproute2 curl:curl redis-server:redis-server taskset:util-linux)
[[ "${1:-}" == --bench ]] && want+=(wrk:wrk)
missing=()
for item in "${want[@]}"; do
  command -v "${item%%:*}" >/dev/null 2>&1 || missing+=("${item#*:}")
done
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
((${#missing[@]})) || exit 0
[[ $EUID -eq 0 ]] || { echo "install-deps: needs root to install ${missing[*]}" >&2; exit 1; }

echo "install-deps: installing ${missing[*]}" >&2
# Debian starts a package's service on install (nginx on :80): not here, the topology runs its own.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
fi
trap '((made_policy)) && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
