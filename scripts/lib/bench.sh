# What the bench scripts share. Source it after `cd` to the repository root.
#
#   bench_setup DIR        creates DIR, checks for taskset and two cores
#   started LOG NAME       after starting a server in the background: sets $pid to it and
#                          $addr to the address it prints (`listening on ADDR`)
#   stop                   stops the server in $pid (also on exit)
#   field FILE EXPR        evaluates a Python expression over a JSON report's fields
#   build_uws_peer NAME UWS USOCKETS OUT
#                          compiles benches/peers/NAME/main.cpp against uWebSockets and
#                          uSockets source folders (epoll, no SSL, -O3) into OUT/NAME

bench_setup() {
  mkdir -p "$1"
  command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is needed" >&2; exit 1; }
  [ "$(nproc)" -ge 2 ] || { echo "bench: needs two cores (server on one, client on the other)" >&2; exit 1; }
}

pid=""
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap stop EXIT

started() {
  pid=$!
  local log=$1 name=$2
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$log" | head -1)
  [ -n "$addr" ] || { cat "$log" >&2; echo "bench: $name did not start" >&2; exit 1; }
}

field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, r))" "$@"; }

build_uws_peer() {
  local name=$1 uws=$2 usockets=$3 out=$4
  [ -f "$uws/src/App.h" ] && [ -f "$usockets/src/libusockets.h" ] || {
    echo "bench: $uws and $usockets are not uWebSockets and uSockets source folders" >&2
    exit 2
  }
  command -v g++ >/dev/null && command -v gcc >/dev/null \
    || { echo "bench: gcc and g++ are needed to build the uWebSockets peer" >&2; exit 1; }
  local objects="$out/usockets"
  rm -rf "$objects" && mkdir -p "$objects"
  (cd "$objects" && gcc -O3 -DLIBUS_NO_SSL -std=c11 -I"$usockets/src" -c \
    "$usockets"/src/*.c "$usockets"/src/eventing/*.c "$usockets"/src/crypto/*.c)
  g++ -O3 -std=c++20 -DLIBUS_NO_SSL -DUWS_NO_ZLIB -I"$uws/src" -I"$usockets/src" \
    "benches/peers/$name/main.cpp" "$objects"/*.o -o "$out/$name"
}
