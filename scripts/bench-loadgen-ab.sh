#!/usr/bin/env bash
# Two builds of the load generator and the independent epoll client on one server, in
# rotating order per round: what a change to the generator buys per message, measured
# against itself and against the yardstick in the same minutes.
#
#   scripts/bench-loadgen-ab.sh BEFORE AFTER [fanout|echo] [SECONDS] [ROUNDS]
#
# BEFORE and AFTER are ringws-loadgen binaries (build one, copy it, build the other).
# `ringws serve --shards 1` on core 0, each client on core 1: fanout is one publisher at
# 1,000 messages a second of 64 bytes to 1,000 subscribers; echo is closed loop, 100
# connections x 16 in flight, 20-byte messages. Prints each round's rates and messages per
# CPU second, then the medians of the per-round ratios. Writes target/bench-loadgen-ab/.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
[ $# -ge 2 ] || { sed -n '6p' "$0" >&2; exit 2; }
before=$(realpath "$1") after=$(realpath "$2")
mode="${3:-fanout}" seconds="${4:-4}" rounds="${5:-9}"
out=target/bench-loadgen-ab
bench_setup "$out"
cargo build --release --quiet -p ringws --bins
cargo build --release --quiet --manifest-path benches/peers/epoll-client/Cargo.toml
epoll=benches/peers/epoll-client/target/release/epoll-client

taskset -c 0 target/release/ringws serve --listen 127.0.0.1:0 --shards 1 --idle-timeout 0 \
  >"$out/server.log" 2>&1 &
started "$out/server.log" ringws

# loadgen NAME BINARY ROUND: prints NAME ROUND RATE PER_CPU_SECOND
loadgen() {
  local json="$out/$mode-$1-$3.json" load
  if [ "$mode" = fanout ]; then
    load=(--url "ws://$addr/pubsub/$1-$3" --scenario fanout --connections 1000 --rate 1000 --message-size 64)
  else
    load=(--url "ws://$addr/bench" --connections 100 --pipeline 16 --message-size 20)
  fi
  taskset -c 1 "$2" "${load[@]}" --duration "$seconds" --quiet --json "$json" >/dev/null \
    || echo "bench: $1 reported errors; see $json" >&2
  echo "$1 $3 $(field "$json" 'round(throughput_msgs_per_sec)') \
$(field "$json" 'round(throughput_msgs_per_sec * 100 / max(loadgen_cpu_percent * loadgen_threads, 1e-9))')"
}

# epoll ROUND
epoll() {
  local text="$out/$mode-epoll-$1.txt" load rate cpu
  if [ "$mode" = fanout ]; then
    load=(--url "ws://$addr/pubsub/epoll-$1" --subscribers 1000 --rate 1000 --size 64)
  else
    load=(--url "ws://$addr/bench" --connections 100 --pipeline 16 --size 20)
  fi
  taskset -c 1 "$epoll" "${load[@]}" --duration "$seconds" >"$text" \
    || echo "bench: epoll-client reported errors; see $text" >&2
  rate=$(awk '/^throughput_msgs_per_sec/ {print $2}' "$text")
  cpu=$(awk '/^cpu_seconds/ {print $2}' "$text")
  echo "epoll $1 $rate $(python3 -c "print(round($rate * $seconds / max($cpu, 1e-9)))")"
}

for round in $(seq "$rounds"); do
  case $((round % 3)) in
    1) loadgen before "$before" "$round"; loadgen after "$after" "$round"; epoll "$round" ;;
    2) loadgen after "$after" "$round"; epoll "$round"; loadgen before "$before" "$round" ;;
    0) epoll "$round"; loadgen before "$before" "$round"; loadgen after "$after" "$round" ;;
  esac
done | tee "$out/$mode-rounds.txt"
stop
python3 - "$out/$mode-rounds.txt" <<'PY'
import collections, statistics, sys
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, number, rate, per_cpu = line.split()
    rounds[number][name] = float(per_cpu)
def ratio(a, b):
    values = [r[a] / r[b] for r in rounds.values() if r.get(b)]
    return f"{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"
print("messages per CPU second, median ratio (range) over", len(rounds), "rounds:")
print("  after / epoll-client ", ratio("after", "epoll"))
print("  before / epoll-client", ratio("before", "epoll"))
print("  after / before       ", ratio("after", "before"))
PY
