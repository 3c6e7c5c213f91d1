#!/usr/bin/env bash
# Pub/sub fan-out: deliveries per second and delivery latency, one publisher to 1,000 and
# 10,000 subscribers; then the slow-subscriber check: fast subscribers' p99 with 10% of
# subscribers on slow-3g, against a run where all are on wifi.
#
#   scripts/bench-pubsub.sh [SECONDS] [PART] [FLAGS...]
#       SECONDS   per measurement, default 10
#       PART      `all` (default) or `isolation`, the slow-subscriber check alone
#       FLAGS     more `ringws serve` flags, e.g. --send-buffer 64KiB
#
# The server runs pinned to core 0 (`ringws serve --shards 1`), ringws-loadgen pinned to
# core 1 with one thread: the numbers are a floor set by whichever side saturates first,
# and the report's CPU line says which. 100,000 subscribers need more descriptors than one
# process may open (RLIMIT_NOFILE 20,000 here): that run uses `--shards 6` (six direct-
# descriptor tables) and the generator's worker processes and loopback source addresses,
# both sides unpinned on both cores.
# Writes target/bench-pubsub/results.md and the loadgen JSON reports beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds="${1:-10}"
part="${2:-all}"
shift $(($# < 2 ? $# : 2))
server_flags=("$@")
case "$part" in
  all|isolation) ;;
  *) echo "bench-pubsub: PART is all or isolation, not $part" >&2; exit 2 ;;
esac
out=target/bench-pubsub
bench_setup "$out"

cargo build --release --quiet --workspace --bins
loadgen=target/release/ringws-loadgen

# start_server [CPUS SHARDS MAX_CONNECTIONS]
start_server() {
  local log="$out/server.log" cpus=${1:-0} shards=${2:-1} max=${3:-20000}
  taskset -c "$cpus" target/release/ringws serve --listen 127.0.0.1:0 --shards "$shards" \
    --idle-timeout 0 --max-connections "$max" "${server_flags[@]}" >"$log" 2>&1 &
  started "$log" ringws
}


# fanout NAME SUBSCRIBERS RATE SIZE [loadgen args...]: one run, its JSON in $out/NAME.json.
fanout() {
  local name=$1 subscribers=$2 rate=$3 size=$4
  shift 4
  start_server
  taskset -c 1 "$loadgen" --url "ws://$addr/pubsub/bench" --scenario fanout \
    --connections "$subscribers" --rate "$rate" --message-size "$size" --threads 1 \
    --duration "$seconds" --drain 5 --quiet --json "$out/$name.json" "$@" \
    | tee "$out/$name.txt" || true
  curl -s "http://$addr/metrics" >"$out/$name.metrics" || true
  stop
}

# metric METRICS NAME: a counter's value, summed over its lines.
metric() { awk -v n="ringws_$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }' "$1"; }

: >"$out/results.md"
[ "$part" = all ] && {
  echo "| subscribers | published msg/s | deliveries/s | p50 µs | p99 µs | p99.9 µs | lost | generator CPU |"
  echo "|---|---|---|---|---|---|---|---|"
} >>"$out/results.md"
[ "$part" = all ] && for run in "1000 200" "1000 1000" "10000 20" "10000 100"; do
  set -- $run
  name="fanout-$1-$2"
  fanout "$name" "$1" "$2" 64
  j="$out/$name.json"
  echo "| $1 | $2 | $(field "$j" 'round(throughput_msgs_per_sec)') | $(field "$j" 'latency_us["p50"]') | $(field "$j" 'latency_us["p99"]') | $(field "$j" 'latency_us["p999"]') | $(field "$j" 'messages_lost') | $(field "$j" 'loadgen_cpu_percent')% |" >>"$out/results.md"
done

# 100,000 subscribers: six shards, worker processes, both cores shared.
[ "$part" = all ] && for rate in 1 10; do
  name="fanout-100000-$rate"
  start_server 0,1 6 110000
  "$loadgen" --url "ws://$addr/pubsub/bench" --scenario fanout --connections 100000 \
    --rate "$rate" --message-size 64 --duration "$seconds" --drain 10 --connect-timeout 300 \
    --quiet --json "$out/$name.json" | tee "$out/$name.txt" || true
  stop
  j="$out/$name.json"
  echo "| 100000 | $rate | $(field "$j" 'round(throughput_msgs_per_sec)') | $(field "$j" 'latency_us["p50"]') | $(field "$j" 'latency_us["p99"]') | $(field "$j" 'latency_us["p999"]') | $(field "$j" 'messages_lost') | $(field "$j" 'loadgen_cpu_percent')% |" >>"$out/results.md"
done

echo >>"$out/results.md"
echo "| population (1,000 subscribers, 100 msg/s of 1 KiB) | wifi p50 µs | wifi p99 µs | slow-3g p99 µs | lost | dropped as stale by the server |" >>"$out/results.md"
echo "|---|---|---|---|---|---|" >>"$out/results.md"
for mix in "100:wifi" "90:wifi,10:slow-3g"; do
  name="isolation-${mix//[:,]/-}"
  fanout "$name" 1000 100 1024 --profile-mix "$mix"
  j="$out/$name.json"
  slow=$(field "$j" 'next((p["latency_us"]["p99"] for p in profiles if p["name"] == "slow-3g"), "-")')
  echo "| $mix | $(field "$j" 'profiles[0]["latency_us"]["p50"]') | $(field "$j" 'profiles[0]["latency_us"]["p99"]') | $slow | $(field "$j" 'messages_lost') | $(metric "$out/$name.metrics" pubsub_dropped_stale_total) |" >>"$out/results.md"
done
cat "$out/results.md"
