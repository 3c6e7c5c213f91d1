#!/usr/bin/env bash
# Server CPU per echoed message: ringws against uWebSockets and tokio-tungstenite, measured
# in one interleaved run on this machine, so the results are ratios.
#
#   scripts/bench-vs-uws.sh --uws DIR --usockets DIR [options]
#   scripts/bench-vs-uws.sh --uws-bin PATH [options]
#
#   --uws DIR, --usockets DIR   uWebSockets and uSockets source folders (the user's own
#                               checkouts; nothing of theirs is part of this project): the
#                               peer in benches/peers/uws-echo is compiled against them,
#                               -O3, epoll, LIBUS_NO_SSL, no zlib
#   --uws-bin PATH              a uws-echo built before, instead
#   --seconds N                 each measurement (default 5)
#   --rounds N                  rounds per message size (default 5)
#   --sizes "A B ..."           message sizes in bytes (default "20 1024 16384")
#   --ringws-bin PATH           the ringws binary (default: this tree's release build)
#   --baseline PATH             another ringws binary, run as a fourth server "baseline":
#                               a build to compare against, in the same rounds
#   --ringws-args "ARGS"        more `ringws serve` flags for ringws (e.g. buffer sizes)
#   --baseline-args "ARGS"      the same for the baseline, which may be this tree's build:
#                               compares settings rather than builds
#   --peers none                with --baseline: run only ringws and the baseline, for
#                               more rounds of a before/after in the same time
#
# Every server is started once and pinned to core 0 (`ringws serve --shards 1`;
# uws-echo and tokio-tungstenite on one thread each); the independent epoll client
# (benches/peers/epoll-client) runs pinned to core 1: 100 connections x 16 messages in
# flight, closed loop, every echo checked. Within a round the servers take turns, the order
# rotating from round to round, so whatever else the host does falls on all of them.
# Server CPU is the user and system time in /proc/PID/stat over the client's whole run,
# divided by the messages it echoed. The epoll client records no latency, so p99 is not
# reported. Writes target/bench-vs-uws/results.md and each run's client output beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
uws_dir="" usockets_dir="" uws_bin="" ringws_bin=target/release/ringws baseline=""
ringws_args="" baseline_args="" peers=all
seconds=5 rounds=5 sizes="20 1024 16384"
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --uws) uws_dir=$2 ;;
    --usockets) usockets_dir=$2 ;;
    --uws-bin) uws_bin=$2 ;;
    --seconds) seconds=$2 ;;
    --rounds) rounds=$2 ;;
    --sizes) sizes=$2 ;;
    --ringws-bin) ringws_bin=$2 ;;
    --baseline) baseline=$2 ;;
    --ringws-args) ringws_args=$2 ;;
    --baseline-args) baseline_args=$2 ;;
    --peers) peers=$2 ;;
    *) echo "bench: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
out=target/bench-vs-uws
bench_setup "$out"

case "$peers" in
  all) ;;
  none) [ -n "$baseline" ] || { echo "bench: --peers none needs --baseline" >&2; exit 2; } ;;
  *) echo "bench: --peers is all or none" >&2; exit 2 ;;
esac

if [ "$peers" = all ] && [ -z "$uws_bin" ]; then
  [ -n "$uws_dir" ] && [ -n "$usockets_dir" ] || {
    echo "bench: give --uws DIR and --usockets DIR (uWebSockets and uSockets source folders)," >&2
    echo "       or --uws-bin PATH (a uws-echo built before)" >&2
    exit 2
  }
  build_uws_peer uws-echo "$uws_dir" "$usockets_dir" "$out"
  uws_bin="$out/uws-echo"
fi

[ "$ringws_bin" = target/release/ringws ] && cargo build --release --quiet -p ringws --bins
[ "$peers" = all ] && cargo build --release --quiet --manifest-path benches/peers/tungstenite-echo/Cargo.toml
cargo build --release --quiet --manifest-path benches/peers/epoll-client/Cargo.toml
epoll=benches/peers/epoll-client/target/release/epoll-client

# Start every server once; each stays up for the whole run.
servers=(ringws)
[ "$peers" = all ] && servers+=(uws tungstenite)
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
    tungstenite) taskset -c 0 benches/peers/tungstenite-echo/target/release/tungstenite-echo \
                   127.0.0.1:0 >"$log" 2>&1 & ;;
  esac
  started "$log" "$server"
  pids[$server]=$pid
  addrs[$server]=$addr
done
pid=""
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

hz=$(getconf CLK_TCK)
# cpu_ticks PID: "user system" in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

rows="$out/rounds.tsv"
printf 'size\tround\tserver\tmsg_per_s\techoed\tuser_s\tsystem_s\n' >"$rows"
for size in $sizes; do
  for round in $(seq "$rounds"); do
    # Rotate the order: round r starts with server r mod n.
    n=${#servers[@]}
    for i in $(seq 0 $((n - 1))); do
      server=${servers[$(( (round + i) % n ))]}
      text="$out/$server-$size-$round.txt"
      read -r u0 s0 < <(cpu_ticks "${pids[$server]}")
      taskset -c 1 "$epoll" --url "ws://${addrs[$server]}/bench" --connections 100 \
        --pipeline 16 --size "$size" --duration "$seconds" >"$text" \
        || echo "bench: epoll-client reported errors against $server ($size B); see $text" >&2
      read -r u1 s1 < <(cpu_ticks "${pids[$server]}")
      rate=$(awk '/^throughput_msgs_per_sec/ {print $2}' "$text")
      echoed=$(awk '/^sent/ {print $4}' "$text")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$round" "$server" "${rate:-0}" "${echoed:-0}" \
        "$(( u1 - u0 ))/$hz" "$(( s1 - s0 ))/$hz" >>"$rows"
      echo "bench: $size B round $round $server: ${rate:-0} msg/s" >&2
    done
  done
done

python3 - "$rows" "$seconds" "$rounds" "${servers[@]}" >"$out/results.md" <<'EOF'
import csv, statistics, subprocess, sys
from fractions import Fraction

rows_path, seconds, rounds, servers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = {}
for row in csv.DictReader(open(rows_path), delimiter="\t"):
    echoed = max(int(row["echoed"]), 1)
    user = float(Fraction(row["user_s"])) * 1e9 / echoed
    system = float(Fraction(row["system_s"])) * 1e9 / echoed
    runs[(int(row["size"]), int(row["round"]), row["server"])] = (
        float(row["msg_per_s"]), user, system)
sizes = sorted({size for size, _, _ in runs})
names = {"ringws": "ringws", "uws": "uWebSockets", "tungstenite": "tokio-tungstenite",
         "baseline": "ringws baseline"}

def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
date = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True,
                      text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[0]
print(f"Measured {date} on {len(open('/proc/cpuinfo').read().split('processor')) - 1} cores "
      f"({cpu}), load average {load} at the end. {rounds} interleaved rounds of {seconds} s; "
      "medians, with the range over the rounds in brackets.")
print()
print("| size | server | msg/s | server ns/msg | user ns/msg | system ns/msg |")
print("|---|---|---|---|---|---|")
for size in sizes:
    for server in servers:
        r = [runs[k] for k in sorted(runs) if k[0] == size and k[2] == server]
        print(f"| {size} B | {names[server]} | {spread([x[0] for x in r], lambda v: f'{v:,.0f}')} "
              f"| {spread([x[1] + x[2] for x in r], lambda v: f'{v:,.0f}')} "
              f"| {statistics.median(x[1] for x in r):,.0f} "
              f"| {statistics.median(x[2] for x in r):,.0f} |")
print()
others = [s for s in servers if s != "ringws"]
print("| size | " + " | ".join(f"ns/msg ringws / {names[s]}" for s in others)
      + " | " + " | ".join(f"msg/s ringws / {names[s]}" for s in others) + " |")
print("|---|" + "---|" * (2 * len(others)))
for size in sizes:
    rounds_of = sorted({k[1] for k in runs if k[0] == size})
    cells = []
    for measure in (lambda run: run[1] + run[2], lambda run: run[0]):
        for other in others:
            pairs = [(measure(runs[(size, rnd, "ringws")]), measure(runs[(size, rnd, other)]))
                     for rnd in rounds_of]
            ratios = [a / b for a, b in pairs if b]
            cells.append(spread(ratios, lambda v: f"{v:.2f}") if ratios else "n/a")
    print(f"| {size} B | " + " | ".join(cells) + " |")
EOF
cat "$out/results.md"
