#!/usr/bin/env bash
# The load generator's own ceiling: how many messages one generator thread sends when the
# server costs nothing (benches/peers/null-sink reads and drops everything).
#
#   scripts/bench-loadgen.sh [SECONDS]        default 5 s per measurement
#
# The sink runs pinned to core 0, ringws-loadgen pinned to core 1 with one thread, open loop
# at a rate far above what it can reach, 100 connections. Writes
# target/bench-loadgen/results.md and the JSON reports beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds="${1:-5}"
out=target/bench-loadgen
bench_setup "$out"

cargo build --release --quiet -p ringws-loadgen
cargo build --release --quiet --manifest-path benches/peers/null-sink/Cargo.toml

log="$out/sink.log"
taskset -c 0 benches/peers/null-sink/target/release/null-sink 127.0.0.1:0 >"$log" 2>&1 &
started "$log" null-sink

{
  echo "| message | sent msg/s | sent MB/s | generator CPU |"
  echo "|---|---|---|---|"
} >"$out/results.md"
for size in 20 1024; do
  json="$out/sink-$size.json"
  # Exit status 1 is expected: a sink echoes nothing, so every message counts as lost.
  taskset -c 1 target/release/ringws-loadgen --url "ws://$addr/" --connections 100 \
    --rate 100000000 --message-size "$size" --duration "$seconds" --drain 0 --threads 1 \
    --quiet --json "$json" >/dev/null || true
  sent=$(field "$json" 'messages_sent')
  secs=$(field "$json" 'duration_secs')
  rate=$(python3 -c "print(round($sent / $secs))")
  mbps=$(python3 -c "print(round($sent * $size / $secs / 1e6))")
  echo "| $size B | $rate | $mbps | $(field "$json" 'loadgen_cpu_percent')% |" >>"$out/results.md"
done
cat "$out/results.md"
