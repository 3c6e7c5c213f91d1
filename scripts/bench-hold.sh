#!/usr/bin/env bash
# Many connections in one server: memory per idle connection, time to open them all, a
# publish reaching all of them, and a reconnect storm of all of them.
#
#   scripts/bench-hold.sh [N]              default 100000 connections
#   scripts/bench-hold.sh N --idle-only    step 1 alone (memory per idle connection)
#
# `ringws serve` runs with its default flags but `--max-connections` (N and a few more for the
# publisher; one shard per core, as many descriptor tables as that needs). ringws-loadgen, with its defaults (worker processes
# and loopback source addresses as the file limit and the port range need), then:
#   1. holds N idle connections: the server's RSS growth per connection, the kernel's memory
#      per connection end (slab and TCP buffer pages, both ends of each loopback connection
#      counted, so halved), and the time until all N were established;
#   2. subscribes N connections to one topic and publishes to it, one message a second up to
#      50,000 subscribers and one per N/50,000 seconds beyond (so that one publish has reached
#      all before the next), for 30 s: the largest delivery latency is the time a publish
#      takes to reach all N;
#   3. holds N connections that all drop at once and reconnect (churn with a storm): the
#      time until the last one was back.
# Writes target/bench-hold/results-N.md and the loadgen JSON reports beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
n="${1:-100000}"
idle_only=""
[ "${2:-}" = "--idle-only" ] && idle_only=1
out=target/bench-hold
bench_setup "$out"

cargo build --release --quiet --workspace --bins
loadgen=target/release/ringws-loadgen

start_server() {
  local log="$out/ringws-$1.log"
  target/release/ringws serve --listen 127.0.0.1:0 --max-connections $(( n + 16 )) >"$log" 2>&1 &
  started "$log" ringws
  for _ in $(seq 50); do grep -q ' connections: ' "$log" && break; sleep 0.1; done
  layout=$(grep -m1 ' connections: ' "$log" | sed 's/^ringws: //')
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
kernel_kib() {
  local slab sock
  slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
  sock=$(awk '/^TCP:/ {for (i=1;i<NF;i++) if ($i=="mem") print $(i+1)*4}' /proc/net/sockstat)
  echo $(( slab + sock ))
}
established() { ss -Htn state established "( sport = :${addr##*:} )" | wc -l; }
now_ms() { date +%s%3N; }

# 1. Idle connections.
start_server hold
sleep 1
rss0=$(rss_kib "$pid"); k0=$(kernel_kib)
t0=$(now_ms)
"$loadgen" --url "ws://$addr/idle" --scenario hold --connections "$n" --duration 600 \
  --quiet --json "$out/hold-$n.json" >"$out/hold-$n.txt" 2>&1 &
holder=$!
# Until all N are established, or the count has not grown for 15 s (a client whose upgrade
# took longer than the handshake timeout was answered 408 and does not come back).
open_ms="" held=0 still=0
while [ "$still" -lt 75 ]; do
  count=$(established)
  if [ "$count" -ge "$n" ]; then held=$count; open_ms=$(( $(now_ms) - t0 )); break; fi
  if [ "$count" -gt "$held" ]; then held=$count still=0; else still=$(( still + 1 )); fi
  sleep 0.2
done
[ -n "$open_ms" ] || open_ms="(not all: $held held)"
sleep 3
rss1=$(rss_kib "$pid"); k1=$(kernel_kib)
kill -TERM "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
rss_per=$(( (rss1 - rss0) * 1024 / held ))
kernel_per=$(( (k1 - k0) * 1024 / held / 2 ))
stop

report_idle() {
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end (the host is shared)."
  echo "Command: \`scripts/bench-hold.sh ${*:-$n}\`; server: $layout"
  echo
  echo "| $n connections | |"
  echo "|---|---|"
  echo "| idle connections held | $held |"
  echo "| server RSS: before, with all held | $rss0 KiB, $rss1 KiB |"
  echo "| server RSS growth per idle connection | $rss_per B |"
  echo "| kernel memory per connection end | $kernel_per B |"
  echo "| time to open all | $open_ms ms |"
}
if [ -n "$idle_only" ]; then
  report_idle "$@" | tee "$out/results-$n-idle.md"
  exit 0
fi

# 2. A publish to one topic all N subscribed to.
start_server fanout
rate=$(awk -v n="$n" 'BEGIN { r = 50000 / n; print (r > 1 ? 1 : r) }')
"$loadgen" --url "ws://$addr/pubsub/all" --scenario fanout --connections "$n" --publishers 1 \
  --rate "$rate" --duration 30 --quiet --json "$out/fanout-$n.json" >"$out/fanout-$n.txt" 2>&1 \
  || echo "bench: the fan-out run reported errors; see $out/fanout-$n.json" >&2
fanout_max=$(field "$out/fanout-$n.json" 'latency_us["max"]')
fanout_p50=$(field "$out/fanout-$n.json" 'latency_us["p50"]')
fanout_lost=$(field "$out/fanout-$n.json" 'messages_lost')
fanout_received=$(field "$out/fanout-$n.json" 'messages_received')
stop

# 3. Every connection drops at once and reconnects.
start_server storm
"$loadgen" --url "ws://$addr/storm" --scenario churn --connections "$n" --lifetime 100000 \
  --storm-after 20 --duration 60 --quiet --json "$out/storm-$n.json" >"$out/storm-$n.txt" 2>&1 \
  || echo "bench: the storm run reported errors; see $out/storm-$n.json" >&2
storm_ms=$(field "$out/storm-$n.json" 'storm_recovery_ms')
stop

{
  report_idle "$@"
  echo "| a publish reaching all (largest latency; median) | $fanout_max µs; $fanout_p50 µs ($fanout_received received, $fanout_lost lost) |"
  echo "| reconnect storm of all, until the last is back | $storm_ms ms |"
} | tee "$out/results-$n.md"
