#!/usr/bin/env bash
# Runs the Autobahn test suite's fuzzingclient against `ringws serve` and fails on any case
# that does not pass (or is missing from the report).
#
#   scripts/autobahn.sh                 groups 1-11 (no compression)
#   scripts/autobahn.sh --all           all 517 cases, with permessage-deflate on
#   scripts/autobahn.sh --cases '6.*,7.*'
#   scripts/autobahn.sh --cases '9.*' --exclude '9.3.1,9.4.1'    (after --cases)
#   scripts/autobahn.sh --url ws://127.0.0.1:9001    against a server already running
#   scripts/autobahn.sh --tls           over wss: the server on a TLS listener, with a
#                                       certificate made here (openssl)
#   scripts/autobahn.sh --write-docs    also rewrite docs/compliance.md
set -euo pipefail
cd "$(dirname "$0")/.."

cases='"*"'
exclude='"12.*", "13.*"'
url=""
write_docs=""
deflate="off"
tls=""
label="groups 1-11"
while [ $# -gt 0 ]; do
  case "$1" in
    --all) exclude=""; deflate="shared"; label="all groups" ;;
    --cases) shift; cases=$(printf '%s' "$1" | sed 's/[^,][^,]*/"&"/g'); exclude=""; label="cases $1" ;;
    --exclude) shift; exclude=$(printf '%s' "$1" | sed 's/[^,][^,]*/"&"/g'); label="$label but $1" ;;
    --url) shift; url="$1" ;;
    --write-docs) write_docs=1 ;;
    --tls) tls=1 ;;
    *) echo "autobahn: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

venv=$(scripts/lib/autobahn-env.sh)
out="target/autobahn"
rm -rf "$out"
mkdir -p "$out/reports"

server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [ -z "$url" ]; then
  cargo build --release --quiet --bin ringws
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  listen=(--listen "127.0.0.1:$port")
  scheme=ws
  if [ -n "$tls" ]; then
    # The suite does not check the certificate; a self-signed one for 127.0.0.1 will do.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
      -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
      -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
    listen=(--listen 127.0.0.1:0 --tls-listen "127.0.0.1:$port" --tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
    scheme=wss
    label="$label over TLS"
  fi
  target/release/ringws serve "${listen[@]}" --max-message-size 16MiB \
    --idle-timeout 0 --deflate "$deflate" >"$out/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q 'listening on' "$out/server.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log" >&2; echo "autobahn: the server exited" >&2; exit 1; }
    sleep 0.1
  done
  grep -q 'listening on' "$out/server.log" || { echo "autobahn: the server never said 'listening on'" >&2; exit 1; }
  url="$scheme://127.0.0.1:$port"
fi

cat >"$out/spec.json" <<JSON
{
  "outdir": "$out/reports",
  "servers": [{"agent": "ringws", "url": "$url", "options": {"version": 18}}],
  "cases": [$cases],
  "exclude-cases": [$exclude],
  "exclude-agent-cases": {}
}
JSON
"$venv/bin/python" scripts/lib/autobahn_cases.py "$out/spec.json" >"$out/expected.json"

echo "autobahn: $label against $url" >&2
start=$(date +%s)
# wstest waits forever on a server that hangs: bound it.
if ! timeout 1500 "$venv/bin/wstest" -m fuzzingclient -s "$out/spec.json" >"$out/wstest.log" 2>&1; then
  echo "autobahn: wstest failed or timed out; its log: $out/wstest.log" >&2
fi
echo "autobahn: ran in $(( $(date +%s) - start )) s" >&2

docs=()
[ -n "$write_docs" ] && docs=(--markdown docs/compliance.md
  --command "scripts/autobahn.sh ($label; server: ringws serve --max-message-size 16MiB --idle-timeout 0 --deflate $deflate)")
python3 scripts/lib/autobahn_verdict.py "$out/reports/index.json" "$out/expected.json" ringws "${docs[@]}"
