#!/usr/bin/env bash
# Pub/sub fan-out capacity: one publisher, 20-byte messages, 1,000 subscribers on one server
# core, publish rates stepping up until deliveries per second stop growing; for each step
# the deliveries per second, the generator's latency, the server's own delivery latency
# (`ringws_delivery_latency_seconds`, publish to the kernel taking the bytes), what was lost
# and dropped, and the server's CPU time (user + system, from /proc/PID/stat) per delivery.
#
#   scripts/bench-fanout-capacity.sh [options]
#     --seconds N         measurement per step (default 5)
#     --rates "R ..."     publish rates to step through (default "1000 2000 4000 8000 16000")
#     --subscribers N     (default 1000)
#     --ringws PATH       the server binary (default target/release/ringws, built here)
#     --label NAME        the first column of every row (default ringws)
#     --ringws-args "..." more `ringws serve` flags, e.g. "--max-delivery-lag 0"
#     --wide              one more row at 100,000 subscribers (`--shards 6`, the generator's
#                         worker processes and loopback addresses, both cores unpinned)
#     --wide-rate R       its publish rate (default 1)
#     --uws DIR --usockets DIR
#                         also run a uWebSockets pub/sub server (benches/peers/uws-pubsub,
#                         built from the user's uWebSockets and uSockets source folders) at
#                         each rate, right after ringws, on the same core
#     --uws-bin PATH      a uws-pubsub built before, instead
#     --uws-backpressure BYTES
#                         its per-subscriber bound (default 4194304, ringws's default)
#
# The server runs pinned to core 0 (`--shards 1`), ringws-loadgen pinned to core 1 with one
# thread. Server CPU counts from the moment every connection is open (the server's
# established TCP connections, by `ss`) to the last moment all still are: the measurement and its drain,
# when the last deliveries arrive, without the generator's connecting and closing; its
# share of that time is the CPU column. Appends rows to target/bench-fanout/results.md
# and leaves each step's loadgen JSON and /metrics beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds=5
rates="1000 2000 4000 8000 16000"
subscribers=1000
ringws=""
label=ringws
ringws_args=""
wide=0
wide_rate=1
uws_dir="" usockets_dir="" uws_bin="" uws_backpressure=$((4 << 20))
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --subscribers) subscribers=$2; shift 2 ;;
    --ringws) ringws=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    --ringws-args) ringws_args=$2; shift 2 ;;
    --wide) wide=1; shift ;;
    --wide-rate) wide_rate=$2; shift 2 ;;
    --uws) uws_dir=$2; shift 2 ;;
    --usockets) usockets_dir=$2; shift 2 ;;
    --uws-bin) uws_bin=$2; shift 2 ;;
    --uws-backpressure) uws_backpressure=$2; shift 2 ;;
    *) echo "bench-fanout-capacity: unknown option $1" >&2; exit 2 ;;
  esac
done
out=target/bench-fanout
bench_setup "$out"

if [ -z "$ringws" ]; then
  cargo build --release --quiet --workspace --bins
  ringws=target/release/ringws
fi
if [ -z "$uws_bin" ] && [ -n "$uws_dir$usockets_dir" ]; then
  build_uws_peer uws-pubsub "$uws_dir" "$usockets_dir" "$out"
  uws_bin="$out/uws-pubsub"
fi
loadgen=target/release/ringws-loadgen
[ -x "$loadgen" ] || cargo build --release --quiet -p ringws-loadgen
ticks=$(getconf CLK_TCK)

# cpu_ticks PID: user + system time of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# server_p99 METRICS: the upper bound of the histogram bucket holding the 99th percentile of
# the server's delivery latency, in µs ("-" when nothing was observed).
server_p99() {
  python3 - "$1" <<'EOF'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'ringws_delivery_latency_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
    if m:
        buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), int(m[2])))
total = buckets[-1][1] if buckets else 0
if total == 0:
    print("-")
else:
    le = next(le for le, n in buckets if n >= 0.99 * total)
    print("> 10 s" if le == float("inf") else f"≤ {round(le * 1e6):,}")
EOF
}

# connected ADDR: established TCP connections to the server at ADDR.
connected() { ss -Htn state established "( sport = :${1##*:} )" | wc -l; }

# metric METRICS NAME: a counter's value, summed over its lines.
metric() { awk -v n="ringws_$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }' "$1"; }

[ -s "$out/results.md" ] || {
  echo "| server | subscribers | published msg/s | deliveries/s | p50 µs | p99 µs | server p99 µs | lost | dropped by server | server CPU | server ns/delivery | generator CPU |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$out/results.md"

# step SERVER NAME SUBSCRIBERS RATE CPUS SHARDS [loadgen args...]; SERVER is ringws or uws.
step() {
  local server=$1 name=$2 subs=$3 rate=$4 cpus=$5 shards=$6
  shift 6
  local log="$out/$name.server.log" j="$out/$name.json" m="$out/$name.metrics"
  if [ "$server" = uws ]; then
    taskset -c "$cpus" "$uws_bin" 0 "$uws_backpressure" >"$log" 2>&1 &
  else
    # shellcheck disable=SC2086
    taskset -c "$cpus" "$ringws" serve --listen 127.0.0.1:0 --shards "$shards" --idle-timeout 0 \
      --max-connections $((subs + 1000)) $ringws_args >"$log" 2>&1 &
  fi
  started "$log" "$server"
  "$@" --url "ws://$addr/pubsub/bench" --scenario fanout --connections "$subs" --rate "$rate" \
    --message-size 20 --duration "$seconds" --quiet --json "$j" >"$out/$name.txt" 2>&1 &
  local gen=$!
  # The server's CPU from the moment every subscriber and the publisher are connected.
  until [ "$(connected "$addr")" -ge $((subs + 1)) ] \
    || ! kill -0 "$gen" 2>/dev/null; do
    sleep 0.2
  done
  local before wall_before after wall_after
  before=$(cpu_ticks "$pid")
  wall_before=$(date +%s.%N)
  after=$before
  wall_after=$wall_before
  # ... to the last moment all are still connected: the generator's closing is not counted.
  while kill -0 "$gen" 2>/dev/null; do
    local now_ticks now_wall
    now_ticks=$(cpu_ticks "$pid")
    now_wall=$(date +%s.%N)
    [ "$(connected "$addr")" -ge $((subs + 1)) ] || break
    after=$now_ticks
    wall_after=$now_wall
    sleep 0.2
  done
  wait "$gen" || true
  local used wall
  used=$(( after - before ))
  wall=$(python3 -c "print($wall_after - $wall_before)")
  local received dropped="-" p99="-" label=$label
  if [ "$server" = uws ]; then
    label=uWebSockets
  else
    curl -s "http://$addr/metrics" >"$m" || true
    dropped=$(metric "$m" pubsub_dropped_total)
    p99=$(server_p99 "$m")
  fi
  stop
  received=$(field "$j" 'messages_received')
  python3 - "$label" "$subs" "$rate" "$j" "$used" "$ticks" "$wall" "$received" "$dropped" \
    "$p99" >>"$out/results.md" <<'EOF'
import json, sys
label, subs, rate, path, used, ticks, wall, received, dropped, sp99 = sys.argv[1:]
r = json.load(open(path))
cpu = int(used) / int(ticks)
received = int(received)
ns = f"{cpu * 1e9 / received:,.0f}" if received else "-"
lat = r["latency_us"]
print(f"| {label} | {int(subs):,} | {int(rate):,} | {round(r['throughput_msgs_per_sec']):,} "
      f"| {lat['p50']:,} | {lat['p99']:,} | {sp99} | {r['messages_lost']:,} | {dropped if dropped == '-' else f'{int(dropped):,}'} "
      f"| {100 * cpu / float(wall):.0f}% | {ns} | {r.get('loadgen_cpu_percent', '-')}% |")
EOF
  tail -1 "$out/results.md"
}

for rate in $rates; do
  step ringws "$label-$subscribers-$rate" "$subscribers" "$rate" 0 1 \
    taskset -c 1 "$loadgen" --threads 1 --drain 5
  [ -z "$uws_bin" ] || step uws "uws-$subscribers-$rate" "$subscribers" "$rate" 0 1 \
    taskset -c 1 "$loadgen" --threads 1 --drain 5
done
if [ "$wide" = 1 ]; then
  step ringws "$label-100000-$wide_rate" 100000 "$wide_rate" 0,1 6 "$loadgen" --drain 10 --connect-timeout 300
fi
cat "$out/results.md"
