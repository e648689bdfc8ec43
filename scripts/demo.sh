#!/usr/bin/env bash
# make demo: a local HA gateway stack, for real.
#   1. real Consul (UI), a Nomad server and 3 Nomad clients sharing one host
#      volume directory (the stand-in for the NFS mount), and Pebble (ACME);
#   2. `gwnomad deploy` of the embedded default spec: 3 simulated WSO2 gateway
#      nodes, the sample PizzaShack API in the shared directory;
#   3. `gwnomad lb` on :80/:443 with a certificate from Pebble;
#   4. a curl through the load balancer over TLS.
# `make demo-down` stops it all. Running this twice is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO_DIR:-.demo}
HOST=gw.am.wso2.com
if ! command -v curl >/dev/null; then   # the demo's own check, and what it tells you to run
  echo "== installing curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
fi
for port in 80 443; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && ! [ -f "$DEMO/lb.pid" ]; then
    echo "port $port is taken by another program: the demo's load balancer needs 80 and 443" >&2; exit 1
  fi
done
bin/devstack up -dir "$DEMO" -clients 3
# shellcheck disable=SC1091
source "$DEMO/env"

echo "== gwnomad deploy (embedded default spec; 'gwnomad init' writes it out to edit)"
bin/gwnomad deploy

echo "== gwnomad lb on :80/:443 (ACME from Pebble, certificates in Consul KV)"
head -c 32 /dev/urandom | base64 > "$DEMO/lb-storage.key"
cat > "$DEMO/lb.toml" <<TOML
[listen]
http = ":80"
https = ":443"
admin = "127.0.0.1:9901"

[[routes]]
hosts = ["$HOST"]
service = "apim-gateway"
port = "passthru_http"
policy = "p2c"

[tls]
mode = "acme"
email = "sre@example.com"
ca = "$PEBBLE_DIRECTORY"
ca_root = "$PWD/$DEMO/pebble-ca.pem"
storage = "consul"
storage_key_file = "$PWD/$DEMO/lb-storage.key"

[log]
access_log = "$PWD/$DEMO/logs/lb-access.log"
TOML
# --pid-file: after an upgrade (kill -USR2) the file names the new process,
# so that make demo-down stops the right one.
setsid bin/gwnomad lb --config "$DEMO/lb.toml" --pid-file "$DEMO/lb.pid" > "$DEMO/logs/lb.log" 2>&1 < /dev/null &
echo $! > "$DEMO/lb.pid"

URL="https://$HOST/pizzashack/1.0.0/menu"
CURL=(curl -sS --resolve "$HOST:443:127.0.0.1" --cacert "$DEMO/pebble-root.pem")
for _ in $(seq 1 120); do
  if "${CURL[@]}" -o /dev/null "$URL" 2>/dev/null; then break; fi
  if ! kill -0 "$(cat "$DEMO/lb.pid")" 2>/dev/null; then
    echo "gwnomad lb exited; its log:"; tail -30 "$DEMO/logs/lb.log"; exit 1
  fi
  sleep 1
done
echo "== through the load balancer, over TLS:"
for _ in 1 2 3 4 5 6; do "${CURL[@]}" -D - -o /dev/null "$URL" | grep -i '^x-gateway-node' || true; done
"${CURL[@]}" "$URL"; echo

cat <<TXT

The stack is up. Look around:
  Consul UI            ${CONSUL_HTTP_ADDR/#/http://}/ui/dc1/services/apim-gateway/instances
  gateway status       source $DEMO/env && bin/gwnomad status
  through the LB       ${CURL[*]} $URL
  LB routing table     curl -s http://127.0.0.1:9901/routes
  LB access log        tail $DEMO/logs/lb-access.log   (kill -HUP \$(cat $DEMO/lb.pid) reopens it)
  LB upgrade in place  kill -USR2 \$(cat $DEMO/lb.pid)   (a new process takes the sockets; see $DEMO/logs/lb.log)
  stop everything      make demo-down
TXT
