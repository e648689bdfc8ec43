#!/usr/bin/env bash
# make bench: gwnomad lb vs HAProxy vs Caddy vs direct, tables into
# BENCHMARKS.md. Installs Debian's wrk, haproxy and caddy when missing.
# Extra arguments go to bench/lbbench (e.g. -reps 5 -duration 20s).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in wrk haproxy caddy; do command -v "$p" >/dev/null || missing+=("$p"); done
if ((${#missing[@]})); then
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
	# The packages start their services where an init system allows it;
	# the benchmark runs its own instances.
	for s in haproxy caddy; do (service "$s" stop || true) >/dev/null 2>&1; done
fi
export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3}
go build -o bin/ ./bench/lbbench ./bench/minproxy
# bench/gnetmin (target gnet-min, an experiment) is a module of its own, so
# that gnet stays out of gwnomad's go.mod.
(cd bench/gnetmin && go build -o ../../bin/gnetmin .)
exec bin/lbbench "$@"
