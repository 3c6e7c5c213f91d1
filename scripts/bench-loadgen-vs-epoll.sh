#!/usr/bin/env bash
# The load generator against an independent client on the same server: ringws-loadgen and
# benches/peers/epoll-client (std and libc, one epoll loop) in interleaved rounds, each
# closed loop, 100 connections x 16 messages in flight, 20-byte messages, against one echo
# server pinned to core 0 (the tokio-tungstenite peer, then `ringws serve --shards 1`),
# the client pinned to core 1 (ringws-loadgen with its default threads, which follow the
# CPUs it may run on: one). Integrity checking and latency recording stay on.
#
#   scripts/bench-loadgen-vs-epoll.sh [SECONDS] [ROUNDS]     default 5 s, 5 rounds
#
# Then the fan-out subscriber path on `ringws serve --shards 1`: one publisher at 1,000
# messages a second of 64 bytes to 1,000 subscribers (a million deliveries a second),
# ringws-loadgen's fanout scenario against the epoll client's fan-out mode.
#
# Prints, per server, each round's rates and their ratio (which client goes first
# alternates), then the median ratio and its spread, and the same for messages per CPU
# second of each client. Writes target/bench-loadgen/vs-epoll.md and the JSON reports.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
seconds="${1:-5}"
rounds="${2:-5}"
out=target/bench-loadgen
bench_setup "$out"

cargo build --release --quiet -p ringws-loadgen -p ringws --bins
cargo build --release --quiet --manifest-path benches/peers/tungstenite-echo/Cargo.toml
cargo build --release --quiet --manifest-path benches/peers/epoll-client/Cargo.toml
loadgen=target/release/ringws-loadgen
epoll=benches/peers/epoll-client/target/release/epoll-client

start() {
  local log="$out/$1.log"
  case "$1" in
    ringws) taskset -c 0 target/release/ringws serve --listen 127.0.0.1:0 --shards 1 \
              --idle-timeout 0 >"$log" 2>&1 & ;;
    tungstenite) taskset -c 0 benches/peers/tungstenite-echo/target/release/tungstenite-echo \
                   127.0.0.1:0 >"$log" 2>&1 & ;;
  esac
  started "$log" "$1"
}

# run_loadgen NAME [fanout]: sets $rate and $per_cpu (messages per CPU second).
run_loadgen() {
  local json="$out/$1.json"
  local load=(--url "ws://$addr/bench" --connections 100 --pipeline 16 --message-size 20)
  [ "${2:-}" = fanout ] && load=(--url "ws://$addr/pubsub/bench" --scenario fanout \
    --connections 1000 --rate 1000 --message-size 64)
  taskset -c 1 "$loadgen" "${load[@]}" --duration "$seconds" --quiet --json "$json" >/dev/null \
    || echo "bench: ringws-loadgen reported errors; see $json" >&2
  rate=$(field "$json" 'round(throughput_msgs_per_sec)')
  per_cpu=$(field "$json" 'round(throughput_msgs_per_sec * 100 / max(loadgen_cpu_percent * loadgen_threads, 1e-9))')
}

# run_epoll NAME [fanout]: sets $rate and $per_cpu.
run_epoll() {
  local text="$out/$1.txt"
  local load=(--url "ws://$addr/bench" --connections 100 --pipeline 16 --size 20)
  [ "${2:-}" = fanout ] && load=(--url "ws://$addr/pubsub/bench2" --subscribers 1000 \
    --rate 1000 --size 64)
  taskset -c 1 "$epoll" "${load[@]}" --duration "$seconds" >"$text" \
    || echo "bench: epoll-client reported errors; see $text" >&2
  rate=$(awk '/^throughput_msgs_per_sec/ {print $2}' "$text")
  local cpu
  cpu=$(awk '/^cpu_seconds/ {print $2}' "$text")
  per_cpu=$(python3 -c "print(round($rate * $seconds / max($cpu, 1e-9)))")
}

summary() { python3 -c "
import statistics, sys
values = [float(v) for v in sys.argv[1:]]
print(f'{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})')" "$@"; }

{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r)."
  echo "Command: \`scripts/bench-loadgen-vs-epoll.sh $seconds $rounds\`"
  echo
  echo "| case | round | ringws-loadgen msg/s | epoll-client msg/s | ratio | loadgen msg per CPU s | epoll msg per CPU s | CPU ratio |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out/vs-epoll.md"
declare -A ratios cpu_ratios
# bench CASE SERVER [fanout]: interleaved rounds of both clients.
bench() {
  local case=$1 server=$2 mode=${3:-}
  start "$server"
  ratios[$case]=""
  cpu_ratios[$case]=""
  for round in $(seq "$rounds"); do
    if (( round % 2 )); then
      run_loadgen "$case-loadgen-$round" "$mode"; lg=$rate; lg_cpu=$per_cpu
      run_epoll "$case-epoll-$round" "$mode"; ep=$rate; ep_cpu=$per_cpu
    else
      run_epoll "$case-epoll-$round" "$mode"; ep=$rate; ep_cpu=$per_cpu
      run_loadgen "$case-loadgen-$round" "$mode"; lg=$rate; lg_cpu=$per_cpu
    fi
    ratio=$(python3 -c "print(f'{$lg / max($ep, 1e-9):.2f}')")
    cpu_ratio=$(python3 -c "print(f'{$lg_cpu / max($ep_cpu, 1e-9):.2f}')")
    ratios[$case]+=" $ratio"
    cpu_ratios[$case]+=" $cpu_ratio"
    echo "| $case | $round | $lg | $ep | $ratio | $lg_cpu | $ep_cpu | $cpu_ratio |" | tee -a "$out/vs-epoll.md"
  done
  stop
}
bench tungstenite tungstenite
bench ringws ringws
bench fanout ringws fanout
{
  echo
  echo "| case | throughput ratio, median (range) | messages per CPU second ratio, median (range) |"
  echo "|---|---|---|"
  for case in tungstenite ringws fanout; do
    # shellcheck disable=SC2086
    echo "| $case | $(summary ${ratios[$case]}) | $(summary ${cpu_ratios[$case]}) |"
  done
} >>"$out/vs-epoll.md"
cat "$out/vs-epoll.md"
