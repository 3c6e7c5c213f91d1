#!/usr/bin/env bash
# The broker hop: one publisher on node A, its subscribers first on A (single-node fan-out)
# then on node B (through the broker), same rate, same run; for NATS and for Redis, at a
# fan-out-heavy and a broker-heavy load. Each row is one path of one run of
# examples/cluster_fanout.rs, which starts its own broker and two `ringws serve --shards 1`
# nodes on this machine and stops them.
#
#   scripts/bench-cluster.sh [SECONDS]        default 10 s per path
#
# Writes target/bench-cluster/results.md; each path also reports on stderr what the nodes
# counted (publish failures, broker messages dropped by a node that fell behind, shard
# backlog refusals, reconnects).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
out=target/bench-cluster
mkdir -p "$out"
scripts/lib/brokers.sh
cargo build --release --quiet --bins --example cluster_fanout
{
  echo "| broker | subscribers on | subscribers | published msg/s | deliveries/s | p50 µs | p99 µs | p99.9 µs | lost | broker CPU µs/msg | nodes' CPU µs/msg |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for broker in nats redis; do
    for load in "100 1000" "10 10000" "10 50000"; do
      set -- $load
      target/release/examples/cluster_fanout "$broker" "$1" "$2" "$seconds"
    done
  done
} | tee "$out/results.md"
