#!/usr/bin/env bash
# Echo throughput and idle memory: ringws against a tokio-tungstenite echo server, measured
# in one run on this machine, so the result is a ratio.
#
#   scripts/bench-echo.sh [SECONDS]        default 10 s per measurement
#
# Each server is pinned to core 0 (`ringws serve --shards 1`; tokio-tungstenite on one
# thread); ringws-loadgen runs pinned to core 1 with one thread. Echo: 100 and 10,000
# connections, 20-byte messages, 16 in flight per connection. Idle memory: 10,000 connections
# held open, the server's RSS growth per connection, and the kernel's (slab and socket
# memory, both ends of each loopback connection counted together, so halved).
# Writes target/bench-echo/results.md and the loadgen JSON reports beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds="${1:-10}"
out=target/bench-echo
bench_setup "$out"

cargo build --release --quiet --workspace --bins
cargo build --release --quiet --manifest-path benches/peers/tungstenite-echo/Cargo.toml
loadgen=target/release/ringws-loadgen
peer_bin=benches/peers/tungstenite-echo/target/release/tungstenite-echo

# start NAME: starts the named server pinned to core 0 and sets $pid and $addr.
start() {
  local log="$out/$1.log"
  case "$1" in
    ringws) taskset -c 0 target/release/ringws serve --listen 127.0.0.1:0 --shards 1 \
              --idle-timeout 0 --max-connections 20000 >"$log" 2>&1 & ;;
    tungstenite) taskset -c 0 "$peer_bin" 127.0.0.1:0 >"$log" 2>&1 & ;;
  esac
  started "$log" "$1"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
kernel_kib() {
  local slab sock
  slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
  sock=$(awk '/^TCP:/ {for (i=1;i<NF;i++) if ($i=="mem") print $(i+1)*4}' /proc/net/sockstat)
  echo $(( slab + sock ))
}

declare -A rate p99 mem kmem
for server in ringws tungstenite; do
  for conns in 100 10000; do
    start "$server"
    json="$out/$server-echo-$conns.json"
    taskset -c 1 "$loadgen" --url "ws://$addr/bench" --connections "$conns" --pipeline 16 \
      --message-size 20 --duration "$seconds" --threads 1 --quiet --json "$json" >"$out/$server-echo-$conns.txt" \
      || echo "bench: loadgen reported errors against $server ($conns connections); see $json" >&2
    rate[$server-$conns]=$(field "$json" 'throughput_msgs_per_sec')
    p99[$server-$conns]=$(field "$json" 'latency_us["p99"]')
    stop
  done

  start "$server"
  sleep 0.5
  n=10000
  rss0=$(rss_kib "$pid"); k0=$(kernel_kib)
  taskset -c 1 "$loadgen" --url "ws://$addr/idle" --scenario hold --connections "$n" \
    --duration 6 --threads 1 --quiet --json "$out/$server-hold.json" >/dev/null &
  holder=$!
  # Sample once every connection is open and the server has settled.
  for _ in $(seq 100); do
    [ "$(ss -Htn state established "( sport = :${addr##*:} )" | wc -l)" -ge "$n" ] && break
    sleep 0.2
  done
  sleep 2
  rss1=$(rss_kib "$pid"); k1=$(kernel_kib)
  wait "$holder" || true
  mem[$server]=$(( (rss1 - rss0) * 1024 / n ))
  kmem[$server]=$(( (k1 - k0) * 1024 / n / 2 ))
  stop
done

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r)."
  echo "Command: \`scripts/bench-echo.sh $seconds\`"
  echo
  echo "| echo, 20 B, 16 in flight | ringws msg/s | tokio-tungstenite msg/s | ratio | ringws p99 µs | tokio-tungstenite p99 µs |"
  echo "|---|---|---|---|---|---|"
  for conns in 100 10000; do
    echo "| $conns connections | ${rate[ringws-$conns]} | ${rate[tungstenite-$conns]} | $(ratio "${rate[ringws-$conns]}" "${rate[tungstenite-$conns]}") | ${p99[ringws-$conns]} | ${p99[tungstenite-$conns]} |"
  done
  echo
  echo "| idle connection (10,000 held) | ringws | tokio-tungstenite |"
  echo "|---|---|---|"
  echo "| server RSS growth per connection | ${mem[ringws]} B | ${mem[tungstenite]} B |"
  echo "| kernel memory per connection end | ${kmem[ringws]} B | ${kmem[tungstenite]} B |"
} | tee "$out/results.md"
