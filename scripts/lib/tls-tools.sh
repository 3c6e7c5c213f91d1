#!/usr/bin/env bash
# Makes sure the tools the TLS tests use are installed: Debian's openssl (test certificates,
# and a client offering ciphers the server lacks) and certutil from libnss3-tools (a test CA
# that headless Chromium trusts).
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v certutil >/dev/null || missing+=(libnss3-tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "tests: ${missing[*]} missing and there is no apt-get to install them" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "tests: installing Debian's ${missing[*]} (once)" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
