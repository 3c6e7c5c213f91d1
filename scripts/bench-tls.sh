#!/usr/bin/env bash
# wss against ws, and ringws's wss against a tokio-tungstenite + tokio-rustls peer, measured
# in one run on this machine, so the results are ratios.
#
#   scripts/bench-tls.sh [SECONDS] [ROUNDS]     default 5 s per measurement, 3 rounds
#
# Servers pinned to core 0 (`ringws serve --shards 1` with a plain and a TLS listener; the
# peer on one thread), ringws-loadgen pinned to core 1 with one thread.
# - Echo: 100 connections, 20-byte messages, 16 in flight each; rounds interleave ringws ws,
#   ringws wss and the peer's wss, so whatever else the machine does falls on all three.
#   Server CPU per message: the server's user+system time over the run (handshakes
#   included, a few ms) divided by the messages it echoed.
# - Handshakes: `--scenario handshake` on 20 loops, full (`--no-resumption`) and resumed
#   (tickets), and plain ws for reference; the rate, the server's CPU share, and so
#   handshakes per second of one core's time.
# - Idle memory: 10,000 connections held, the server's RSS growth per connection, ws and wss.
# Writes target/bench-tls/results.md and the loadgen JSON reports beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds="${1:-5}"
rounds="${2:-3}"
out=target/bench-tls
bench_setup "$out"
command -v openssl >/dev/null || { echo "bench: openssl is needed (scripts/lib/tls-tools.sh)" >&2; exit 1; }

cargo build --release --quiet --workspace --bins
cargo build --release --quiet --manifest-path benches/peers/tungstenite-tls-echo/Cargo.toml
loadgen=target/release/ringws-loadgen
peer_bin=benches/peers/tungstenite-tls-echo/target/release/tungstenite-tls-echo

# A CA and a P-256 leaf for 127.0.0.1 it signs (ECDSA, as most deployments now use).
pki="$out/pki"
mkdir -p "$pki"
p256=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${p256[@]}" -keyout "$pki/ca.key" -out "$pki/ca.pem" -days 1 \
  -subj /CN=ringws-bench-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req "${p256[@]}" -keyout "$pki/leaf.key" -out "$pki/leaf.csr" -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$pki/leaf.ext"
openssl x509 -req -in "$pki/leaf.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
  -out "$pki/leaf.pem" -days 1 -extfile "$pki/leaf.ext" 2>/dev/null

# start_ringws: ringws on core 0 with a plain and a TLS listener; sets $ringws_pid,
# $ws_addr and $wss_addr.
start_ringws() {
  taskset -c 0 target/release/ringws serve --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
    --tls-cert "$pki/leaf.pem" --tls-key "$pki/leaf.key" --shards 1 --idle-timeout 0 \
    --max-connections 20000 >"$out/ringws.log" 2>&1 &
  started "$out/ringws.log" ringws
  ringws_pid=$pid
  for _ in $(seq 50); do grep -q '(TLS)' "$out/ringws.log" && break; sleep 0.1; done
  ws_addr=$(sed -n 's/^ringws: listening on \([0-9.:]*\)$/\1/p' "$out/ringws.log" | head -1)
  wss_addr=$(sed -n 's/^ringws: listening on \([0-9.:]*\) (TLS)$/\1/p' "$out/ringws.log" | head -1)
}

# Both servers run through the echo and handshake rounds; each measurement reads their CPU
# time.
start_ringws
taskset -c 0 "$peer_bin" 127.0.0.1:0 "$pki/leaf.pem" "$pki/leaf.key" >"$out/peer.log" 2>&1 &
peer_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$out/peer.log" && break; sleep 0.1; done
peer_addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$out/peer.log" | head -1)
[ -n "$peer_addr" ] || { cat "$out/peer.log" >&2; echo "bench: the peer did not start" >&2; exit 1; }
trap 'kill "$ringws_pid" "$peer_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

# cpu_ticks PID: user+system time in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
calc() { python3 -c "print($1)"; }

# run NAME PID URL JSON ARGS...: one loadgen run on core 1; sets $cpu_s to the server's CPU
# seconds over it.
run() {
  local name=$1 server=$2 url=$3 json=$4
  shift 4
  local before after
  before=$(cpu_ticks "$server")
  taskset -c 1 "$loadgen" --url "$url" --threads 1 --quiet --json "$json" --ca "$pki/ca.pem" "$@" \
    >"${json%.json}.txt" || echo "bench: loadgen reported errors ($name); see $json" >&2
  after=$(cpu_ticks "$server")
  cpu_s=$(calc "($after - $before) / $hz")
}

declare -A rate cpu_per_msg cpu_share client_share
names=(ws wss peer)
declare -A pids=([ws]=$ringws_pid [wss]=$ringws_pid [peer]=$peer_pid)
declare -A urls=([ws]="ws://$ws_addr/bench" [wss]="wss://$wss_addr/bench" [peer]="wss://$peer_addr/bench")
for round in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    json="$out/echo-$name-$round.json"
    run "$name" "${pids[$name]}" "${urls[$name]}" "$json" --connections 100 --pipeline 16 \
      --message-size 20 --duration "$seconds"
    rate[$name-$round]=$(field "$json" 'throughput_msgs_per_sec')
    received=$(field "$json" 'messages_received')
    cpu_per_msg[$name-$round]=$(calc "round($cpu_s * 1e9 / max($received, 1))")
    cpu_share[$name-$round]=$(calc "round(100 * $cpu_s / $(field "$json" 'duration_secs'))")
    client_share[$name-$round]=$(field "$json" 'loadgen_cpu_percent')
  done
done

# Handshakes on 20 loops: ws, wss full, wss resumed.
declare -A hs hs_cpu hs_core hs_resumed
for kind in ws full resumed; do
  case $kind in
    ws) url="ws://$ws_addr/hs"; extra=() ;;
    full) url="wss://$wss_addr/hs"; extra=(--no-resumption) ;;
    resumed) url="wss://$wss_addr/hs"; extra=() ;;
  esac
  json="$out/handshake-$kind.json"
  run "handshake $kind" "$ringws_pid" "$url" "$json" --scenario handshake --connections 20 \
    --duration "$seconds" "${extra[@]}"
  hs[$kind]=$(field "$json" 'throughput_msgs_per_sec')
  hs_cpu[$kind]=$(calc "round(100 * $cpu_s / $(field "$json" 'duration_secs'))")
  # Every handshake of the run (connect and drain included) over the server's CPU time.
  hs_core[$kind]=$(calc "round($(field "$json" 'connections_established') / max($cpu_s, 0.01))")
  hs_resumed[$kind]=$(field "$json" '(tls or {}).get("resumed", 0)')
done

# Idle memory: 10,000 connections held open on each listener in turn, each on a fresh
# server, so each starts from the same memory.
declare -A idle
for name in ws wss; do
  stop
  start_ringws
  declare -A hold_urls=([ws]="ws://$ws_addr/idle" [wss]="wss://$wss_addr/idle")
  json="$out/hold-$name.json"
  taskset -c 1 "$loadgen" --url "${hold_urls[$name]}" --scenario hold --connections 10000 \
    --duration 3 --threads 1 --quiet --json "$json" --ca "$pki/ca.pem" --server-pid "$ringws_pid" \
    >"${json%.json}.txt" || echo "bench: loadgen reported errors (hold $name); see $json" >&2
  idle[$name]=$(field "$json" 'server_rss_bytes_per_connection')
done
stop

median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:])))" "$@"; }
ratios() { # median, min and max of A/B over the rounds
  python3 -c "
import statistics, sys
a, b = sys.argv[1].split(), sys.argv[2].split()
r = [float(x) / float(y) for x, y in zip(a, b) if float(y)]
print(f'{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})' if r else 'n/a')" "$1" "$2"
}
series() { local n=$1 key=$2; local -n arr=$key; for round in $(seq "$rounds"); do printf '%s ' "${arr[$n-$round]}"; done; }
{
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r), a host shared with other work."
  echo "Command: \`scripts/bench-tls.sh $seconds $rounds\`"
  echo
  echo "| echo, 100 connections, 20 B, 16 in flight | msg/s (median of $rounds) | server CPU ns/msg (median) | server CPU % | loadgen CPU % |"
  echo "|---|---|---|---|---|"
  for name in "${names[@]}"; do
    label=$name
    [ "$name" = ws ] && label="ringws ws"
    [ "$name" = wss ] && label="ringws wss"
    [ "$name" = peer ] && label="tokio-tungstenite + tokio-rustls wss"
    echo "| $label | $(median $(series "$name" rate)) | $(median $(series "$name" cpu_per_msg)) | $(median $(series "$name" cpu_share)) | $(median $(series "$name" client_share)) |"
  done
  echo
  echo "| ratio (median of rounds, range) | throughput | server CPU per message |"
  echo "|---|---|---|"
  echo "| ringws wss / ringws ws | $(ratios "$(series wss rate)" "$(series ws rate)") | $(ratios "$(series wss cpu_per_msg)" "$(series ws cpu_per_msg)") |"
  echo "| ringws wss / peer wss | $(ratios "$(series wss rate)" "$(series peer rate)") | $(ratios "$(series wss cpu_per_msg)" "$(series peer cpu_per_msg)") |"
  echo
  echo "| handshakes, 20 loops | per second | server CPU | per second of server CPU time | resumed |"
  echo "|---|---|---|---|---|"
  for kind in ws full resumed; do
    label="ws (upgrade only)"
    [ "$kind" = full ] && label="wss, full TLS handshake"
    [ "$kind" = resumed ] && label="wss, resumed (ticket)"
    echo "| $label | ${hs[$kind]} | ${hs_cpu[$kind]}% | ${hs_core[$kind]} | ${hs_resumed[$kind]} |"
  done
  echo
  echo "| 10,000 idle connections | server RSS growth per connection |"
  echo "|---|---|"
  echo "| ws | ${idle[ws]} B |"
  echo "| wss | ${idle[wss]} B |"
} | tee "$out/results.md"
