#!/usr/bin/env bash
# Fuzzes the protocol core with libFuzzer (cargo-fuzz) for a bounded time per target.
#
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh 600             every target, 10 minutes each
#   scripts/fuzz.sh 300 session     one target
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer=address and friends). Where only
# the stable toolchain exists, RUSTC_BOOTSTRAP=1 lets stable rustc accept them; the address
# sanitizer runtime ships with the stable x86_64-unknown-linux-gnu standard library.
# Crashes land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(handshake session connection)

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --locked --version 0.13.2 >&2
fi

export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for $seconds s" >&2
  # -rss_limit_mb catches unbounded memory growth as a crash, not just a panic.
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=8192 -print_final_stats=1
done
echo "fuzz: every target ran clean" >&2
