#!/usr/bin/env bash
# Makes sure Debian's nats-server and redis-server are installed (the cluster tests start
# their own, on free ports), openssl (for their TLS certificates), and ss from iproute2
# (the operations tests read the server's socket memory with it).
set -euo pipefail
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v ss >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "tests: ${missing[*]} missing and there is no apt-get to install them" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "tests: installing Debian's ${missing[*]} (once)" >&2
$sudo apt-get update -qq >&2
# Where the packages start their own service, it stays on its default port: the tests
# never use it.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
