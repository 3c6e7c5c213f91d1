#!/usr/bin/env bash
# Server CPU per WebSocket handshake: ringws against uWebSockets, measured in one
# interleaved run on this machine, so the results are ratios.
#
#   scripts/bench-handshakes-vs-uws.sh --uws-bin PATH [options]
#
#   --uws-bin PATH          the uws-echo peer, as scripts/bench-vs-uws.sh builds it from
#                           uWebSockets and uSockets source folders (target/bench-vs-uws/uws-echo)
#   --seconds N             each measurement (default 4)
#   --rounds N              rounds (default 5)
#   --concurrency N         handshakes in flight at once (default 32)
#   --ringws-bin PATH       the ringws binary (default: this tree's release build)
#   --baseline PATH         another ringws binary, run as a third server "baseline"
#   --ringws-args "ARGS"    more `ringws serve` flags for ringws
#   --baseline-args "ARGS"  the same for the baseline
#
# Every server is started once and pinned to core 0 (`ringws serve --shards 1`, uws-echo on
# its one thread); the independent epoll client (benches/peers/epoll-client --handshakes)
# runs pinned to core 1: N connections at a time each connect, send the upgrade request,
# check the 101 and reset (SO_LINGER 0, so no TIME_WAIT piles up), in a loop. Within a round
# the servers take turns, the order rotating. Server CPU is the user and system time in
# /proc/PID/stat over the client's run, divided by the handshakes completed. Writes
# target/bench-handshakes-vs-uws/results.md and each run's client output beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
uws_bin="" ringws_bin=target/release/ringws baseline="" ringws_args="" baseline_args=""
seconds=4 rounds=5 concurrency=32
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --uws-bin) uws_bin=$2 ;;
    --seconds) seconds=$2 ;;
    --rounds) rounds=$2 ;;
    --concurrency) concurrency=$2 ;;
    --ringws-bin) ringws_bin=$2 ;;
    --baseline) baseline=$2 ;;
    --ringws-args) ringws_args=$2 ;;
    --baseline-args) baseline_args=$2 ;;
    *) echo "bench: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
[ -x "$uws_bin" ] || {
  echo "bench: give --uws-bin PATH (scripts/bench-vs-uws.sh --uws DIR --usockets DIR builds it)" >&2
  exit 2
}
out=target/bench-handshakes-vs-uws
bench_setup "$out"

[ "$ringws_bin" = target/release/ringws ] && cargo build --release --quiet -p ringws --bins
cargo build --release --quiet --manifest-path benches/peers/epoll-client/Cargo.toml
epoll=benches/peers/epoll-client/target/release/epoll-client

servers=(ringws uws)
[ -n "$baseline" ] && servers+=(baseline)
declare -A pids addrs
for server in "${servers[@]}"; do
  log="$out/$server.log"
  case "$server" in
    ringws|baseline)
      bin=$ringws_bin extra=$ringws_args
      [ "$server" = baseline ] && bin=$baseline extra=$baseline_args
      # shellcheck disable=SC2086 # the extra flags are words
      taskset -c 0 "$bin" serve --listen 127.0.0.1:0 --shards 1 --idle-timeout 0 \
        --max-connections 1000 $extra >"$log" 2>&1 & ;;
    uws) taskset -c 0 "$uws_bin" 0 >"$log" 2>&1 & ;;
  esac
  started "$log" "$server"
  pids[$server]=$pid
  addrs[$server]=$addr
done
pid=""
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

rows="$out/rounds.tsv"
printf 'round\tserver\tper_s\tdone\tuser_s\tsystem_s\n' >"$rows"
for round in $(seq "$rounds"); do
  n=${#servers[@]}
  for i in $(seq 0 $((n - 1))); do
    server=${servers[$(( (round + i) % n ))]}
    text="$out/$server-$round.txt"
    read -r u0 s0 < <(cpu_ticks "${pids[$server]}")
    taskset -c 1 "$epoll" --url "ws://${addrs[$server]}/bench" --handshakes "$concurrency" \
      --duration "$seconds" >"$text" \
      || echo "bench: epoll-client reported failed handshakes against $server; see $text" >&2
    read -r u1 s1 < <(cpu_ticks "${pids[$server]}")
    rate=$(awk '/^throughput_handshakes_per_sec/ {print $2}' "$text")
    done_=$(awk '/^handshakes/ {print $2}' "$text")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$server" "${rate:-0}" "${done_:-0}" \
      "$(( u1 - u0 ))/$hz" "$(( s1 - s0 ))/$hz" >>"$rows"
    echo "bench: round $round $server: ${rate:-0} handshakes/s" >&2
  done
done

python3 - "$rows" "$seconds" "$rounds" "$concurrency" "${servers[@]}" >"$out/results.md" <<'PY'
import csv, statistics, subprocess, sys
from fractions import Fraction

rows_path, seconds, rounds, concurrency, servers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
runs = {}
for row in csv.DictReader(open(rows_path), delimiter="\t"):
    done = max(int(row["done"]), 1)
    user = float(Fraction(row["user_s"])) * 1e6 / done
    system = float(Fraction(row["system_s"])) * 1e6 / done
    runs[(int(row["round"]), row["server"])] = (float(row["per_s"]), user, system)
names = {"ringws": "ringws", "uws": "uWebSockets", "baseline": "ringws baseline"}

def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
date = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True,
                      text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[0]
print(f"Measured {date} on {len(open('/proc/cpuinfo').read().split('processor')) - 1} cores "
      f"({cpu}), load average {load} at the end. {rounds} interleaved rounds of {seconds} s, "
      f"{concurrency} handshakes in flight; medians, with the range over the rounds in brackets.")
print()
print("| server | handshakes/s | server µs/handshake | user µs | system µs |")
print("|---|---|---|---|---|")
for server in servers:
    r = [runs[k] for k in sorted(runs) if k[1] == server]
    print(f"| {names[server]} | {spread([x[0] for x in r], lambda v: f'{v:,.0f}')} "
          f"| {spread([x[1] + x[2] for x in r], lambda v: f'{v:.1f}')} "
          f"| {statistics.median(x[1] for x in r):.1f} | {statistics.median(x[2] for x in r):.1f} |")
print()
others = [s for s in servers if s != "ringws"]
print("| " + " | ".join(f"µs/handshake ringws / {names[s]}" for s in others)
      + " | " + " | ".join(f"handshakes/s ringws / {names[s]}" for s in others) + " |")
print("|" + "---|" * (2 * len(others)))
rounds_of = sorted({k[0] for k in runs})
cells = []
for measure in (lambda run: run[1] + run[2], lambda run: run[0]):
    for other in others:
        ratios = [measure(runs[(r, "ringws")]) / measure(runs[(r, other)])
                  for r in rounds_of if measure(runs[(r, other)])]
        cells.append(spread(ratios, lambda v: f"{v:.2f}") if ratios else "n/a")
print("| " + " | ".join(cells) + " |")
PY
cat "$out/results.md"
