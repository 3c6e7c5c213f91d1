#!/usr/bin/env bash
# User-space instructions per echoed message, counted by valgrind's callgrind: the same
# count for the same build and load whatever else the host does, so a change of a few
# percent in the server's own code shows where timed runs only show noise.
#
#   scripts/bench-instructions.sh [options]
#
#   --ringws-bin PATH   the ringws binary (default: this tree's release build)
#   --baseline PATH     another ringws binary, counted the same way
#   --sizes "A B ..."   message sizes in bytes (default "20 1024")
#   --seconds N         each run (default 10)
#
# Each server runs alone under callgrind, pinned to core 0 (`ringws serve --shards 1`); the
# independent epoll client (benches/peers/epoll-client) pinned to core 1 keeps 100
# connections x 16 messages in flight and checks every echo. The server's whole run is
# counted (start, 100 handshakes and shutdown are well under 1% of it) and divided by the
# messages echoed. Only user space is counted, not the kernel. Valgrind runs no AVX-512,
# so the unmasking and UTF-8 paths counted are the AVX2 ones. Writes
# target/bench-instructions/results.md and the callgrind files beside it, for
# `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/bench.sh
ringws_bin=target/release/ringws baseline="" sizes="20 1024" seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --ringws-bin) ringws_bin=$2 ;;
    --baseline) baseline=$2 ;;
    --sizes) sizes=$2 ;;
    --seconds) seconds=$2 ;;
    *) echo "bench-instructions: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
command -v valgrind >/dev/null || { echo "bench: valgrind is needed (Debian's valgrind)" >&2; exit 1; }
out=target/bench-instructions
bench_setup "$out"

[ "$ringws_bin" = target/release/ringws ] && cargo build --release --quiet -p ringws --bins
cargo build --release --quiet --manifest-path benches/peers/epoll-client/Cargo.toml
epoll=benches/peers/epoll-client/target/release/epoll-client

builds=(ringws)
[ -n "$baseline" ] && builds+=(baseline)
{
  echo "| size | server | messages | instructions | per message |"
  echo "|---|---|---|---|---|"
} >"$out/results.md"
for size in $sizes; do
  for build in "${builds[@]}"; do
    bin=$ringws_bin
    [ "$build" = baseline ] && bin=$baseline
    log="$out/$build-$size.log" counts="$out/$build-$size.callgrind"
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$counts" "$bin" serve \
      --listen 127.0.0.1:0 --shards 1 --idle-timeout 0 --max-connections 1000 >"$log" 2>&1 &
    # Under valgrind the server takes seconds to start, a minute on a busy host.
    for _ in $(seq 1200); do grep -q 'listening on' "$log" && break; sleep 0.1; done
    started "$log" "$build"
    text="$out/$build-$size.txt"
    taskset -c 1 "$epoll" --url "ws://$addr/bench" --connections 100 --pipeline 16 \
      --size "$size" --duration "$seconds" >"$text" \
      || echo "bench: epoll-client reported errors against $build ($size B); see $text" >&2
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
    python3 - "$size" "$build" "$text" "$log" >>"$out/results.md" <<'EOF'
import re, sys
size, build, text, log = sys.argv[1:]
messages = next(int(l.split()[1]) for l in open(text) if l.startswith("sent "))
instructions = int(re.search(r"Collected : (\d+)", open(log).read())[1])
print(f"| {size} B | {build} | {messages:,} | {instructions:,} | {instructions / messages:,.0f} |")
EOF
    tail -1 "$out/results.md"
  done
done
cat "$out/results.md"
