#!/usr/bin/env bash
# Kernel TLS, verified for real: boots a Debian kernel that has `tls.ko` in a QEMU guest,
# runs the release ringws with a TLS listener and ringws-loadgen's wss echo against it, and
# checks that the echo came back intact, that the kernel's TLS counters
# (/proc/net/tls_stat) rose, and that ringws counted the connections as offloaded.
#
#   scripts/ktls-vm.sh                  the check (about a minute once cached)
#   scripts/ktls-vm.sh --bench [ROUNDS] [SECONDS]
#                                       server CPU per wss echo message, kernel TLS against
#                                       user-space records (`--tls-kernel off`), interleaved
#
# KTLS_VM_LOG sets the guest server's RINGWS_LOG (default info).
#
# Exits 0 when it passes, 1 when it fails; 77 when KVM is unusable here and
# KTLS_VM_REQUIRE_KVM=1 (else the guest runs under TCG, see below). Needs qemu-system-x86, busybox-static and cpio (installed with apt-get when
# missing). The kernel package is fetched with `apt-get download` and unpacked into
# target/ktls-vm, never installed: Debian's newest `linux-image-*-amd64` of at least 6.7
# (io_uring's setsockopt, which sets the keys on direct descriptors, came in 6.7).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=check
rounds=3
seconds=5
if [ "${1:-}" = --bench ]; then
  mode=bench
  rounds=${2:-3}
  seconds=${3:-5}
fi
cache=target/ktls-vm
mkdir -p "$cache"

# The accelerator: KVM when it can run a stock kernel. A KVM that is PVM (module kvm_pvm:
# guests run without hardware virtualization) boots only kernels built as PVM guests, which
# Debian's is not: the guest then runs under QEMU's TCG, a software CPU, a few times slower
# but the same kernel code. KTLS_VM_REQUIRE_KVM=1 exits 77 instead.
accel=(-enable-kvm -cpu host,-arch-capabilities)
why_not_kvm=""
if [ ! -e /dev/kvm ] || [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  why_not_kvm="/dev/kvm is missing or not readable and writable"
elif [ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
  why_not_kvm="/dev/kvm is PVM (kvm_pvm), which boots only kernels built as PVM guests"
fi
if [ -n "$why_not_kvm" ]; then
  if [ "${KTLS_VM_REQUIRE_KVM:-0}" = 1 ]; then
    echo "ktls-vm: KVM is unusable here: $why_not_kvm; kernel TLS not verified" >&2
    exit 77
  fi
  echo "ktls-vm: KVM is unusable here ($why_not_kvm): the guest runs under TCG (software CPU)" >&2
  accel=(-accel tcg,thread=multi -cpu max)
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx modprobe || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || missing+=(kmod)
command -v xz >/dev/null || missing+=(xz-utils)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ktls-vm: installing Debian's ${missing[*]} (once)" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi

# The kernel: the newest Debian amd64 image package of 6.7 or later, unpacked once.
kernel_package() {
  apt-cache search --names-only '^linux-image-[0-9].*-amd64$' | awk '{print $1}' |
    grep -Ev -- '-(cloud|rt)-amd64$' | sort -V |
    awk -F- '{ split($3, v, "."); if (v[1] > 6 || (v[1] == 6 && v[2] >= 7)) print }' | tail -1
}
if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  package=$(kernel_package)
  if [ -z "$package" ]; then
    $sudo apt-get update -qq >&2
    package=$(kernel_package)
  fi
  [ -n "$package" ] || { echo "ktls-vm: no Debian kernel package of 6.7 or later found" >&2; exit 1; }
  echo "ktls-vm: fetching $package (once)" >&2
  rm -rf "$cache/deb" "$cache/kernel"
  mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download -q "$package" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2)
  dpkg -x "$cache"/deb/*.deb "$cache/kernel"
fi
vmlinuz=$(ls "$cache"/kernel/boot/vmlinuz-* | head -1)
version=${vmlinuz##*/vmlinuz-}
modules="$cache/kernel/lib/modules/$version"
[ -e "$modules/modules.dep" ] || depmod -b "$cache/kernel" "$version"

cargo build --release --quiet -p ringws -p ringws-loadgen --bins

# The initramfs: busybox, the two binaries and the libraries they load, a test PKI, the
# modules kernel TLS and its ciphers need (uncompressed, with their modules.dep), the init.
root="$cache/root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,pki,proc,sys,dev,tmp} "$root/lib/modules/$version"
cp /bin/busybox "$root/bin/busybox"
for bin in ringws ringws-loadgen; do
  strip -o "$root/bin/$bin" "target/release/$bin"
  for lib in $(ldd "target/release/$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cp scripts/lib/ktls-vm-init.sh "$root/init"
chmod +x "$root/init"

wanted=(net/tls/tls crypto/gcm crypto/ghash-generic crypto/chacha20poly1305
  arch/x86/crypto/aesni-intel arch/x86/crypto/chacha-x86_64 arch/x86/crypto/poly1305-x86_64)
declare -A closure=()
add_module() { # a module's path in modules.dep, and what it depends on
  local path=$1
  [ -n "${closure[$path]:-}" ] && return
  closure[$path]=1
  local deps
  deps=$(grep "^$path:" "$modules/modules.dep" | cut -d: -f2)
  for dep in $deps; do add_module "$dep"; done
}
for name in "${wanted[@]}"; do
  path=$(grep -o "^kernel/$name\.ko[.a-z]*:" "$modules/modules.dep" | tr -d :) || true
  [ -n "$path" ] && add_module "$path"
done
[ -n "${closure[kernel/net/tls/tls.ko.xz]:-}${closure[kernel/net/tls/tls.ko]:-}" ] ||
  { echo "ktls-vm: $version has no tls module" >&2; exit 1; }
for path in "${!closure[@]}"; do
  out="$root/lib/modules/$version/${path%.xz}"
  mkdir -p "$(dirname "$out")"
  case $path in
    *.xz) xz -dc "$modules/$path" >"$out" ;;
    *) cp "$modules/$path" "$out" ;;
  esac
done
cp "$modules"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$version/"
depmod -b "$root" "$version"

# A CA and a P-256 leaf for 127.0.0.1, as the tests make them.
p256=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${p256[@]}" -keyout "$cache/ca.key" -out "$root/pki/ca.pem" -days 1 \
  -subj /CN=ringws-ktls-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req "${p256[@]}" -keyout "$root/pki/leaf.key" -out "$cache/leaf.csr" \
  -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  >"$cache/leaf.ext"
openssl x509 -req -in "$cache/leaf.csr" -CA "$root/pki/ca.pem" -CAkey "$cache/ca.key" \
  -CAcreateserial -out "$root/pki/leaf.pem" -days 1 -extfile "$cache/leaf.ext" 2>/dev/null

(cd "$root" && find . | cpio -o -H newc --quiet) >"$cache/initramfs.cpio"

log="$cache/$mode.log"
budget=$((120 + rounds * seconds * 8))
[ $mode = check ] && budget=240
echo "ktls-vm: booting $version (${accel[*]:0:2}, $mode)" >&2
set +e
timeout "$budget" qemu-system-x86_64 "${accel[@]}" -smp 2 -m 1024 -nographic \
  -no-reboot -kernel "$vmlinuz" -initrd "$cache/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 ktls.mode=$mode ktls.rounds=$rounds ktls.seconds=$seconds ktls.log=${KTLS_VM_LOG:-info}" \
  </dev/null >"$log" 2>&1
status=$?
set -e
tr -d '\r' <"$log" >"$log.txt"
if grep -q 'Could not access KVM\|failed to initialize kvm\|KVM not supported' "$log.txt"; then
  echo "ktls-vm: KVM is unusable here ($(grep -m1 -i kvm "$log.txt")): kernel TLS not verified" >&2
  exit 77
fi
if [ $status -ne 0 ] || ! grep -q '^== end' "$log.txt"; then
  tail -40 "$log.txt" >&2
  echo "ktls-vm: the guest did not finish (exit $status); its console is in $log.txt" >&2
  exit 1
fi

python3 scripts/lib/ktls_vm_verdict.py "$mode" "$log.txt" "$version ${accel[*]:0:2}"
