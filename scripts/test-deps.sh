#!/usr/bin/env bash
# Installs the Debian packages that `make test` needs and this machine lacks.
# make test runs it first, so the README's second command needs nothing else.
# Without root or apt-get it only names what is missing (the tests that need
# it then fail, saying so).
set -euo pipefail
# command the package gives, then the package, then the tests that need it
deps=(
  "ip        iproute2   network namespaces (lb, resilience)"
  "curl      curl       the demo's and the TLS tests' client"
  "chromium  chromium   the Consul UI browser test"
  "logrotate logrotate  deploy/lb/gwnomad-lb.logrotate's test"
  "zsh       zsh        gwnomad completion zsh's test"
)
need=()
for d in "${deps[@]}"; do
  read -r cmd pkg _ <<<"$d"
  command -v "$cmd" >/dev/null || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test-deps: missing ${need[*]} (install them; make test's tests need them)" >&2
  exit 0
fi
echo "== installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
