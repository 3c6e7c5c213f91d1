#!/usr/bin/env bash
# Kernel TLS, verified for real: boots a Debian kernel that has `tls.ko` in a QEMU guest,
# runs the release ringws with a TLS listener (its transmit keys replaced every 64 records),
# ringws-loadgen's wss echo and the ktls_client example against it (TLS 1.3 and 1.2,
# AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, the client's KeyUpdates mid-stream, the
# server's close_notify), and checks that every echo came back intact, that the kernel's TLS
# counters (/proc/net/tls_stat) rose, key updates included, and that ringws counted the
# connections as offloaded and the key updates both ways.
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
# missing). The kernel package is fetched with `apt-get download` from Debian's
# trixie-backports (apt pointed at a sources list and lists of its own under
# target/ktls-vm/apt, the host's apt configuration untouched) and unpacked into
# target/ktls-vm, never installed: the newest `linux-image-*-amd64` of at least 6.14 (kernel
# TLS takes new keys, TLS 1.3 KeyUpdate, from 6.14; io_uring's setsockopt from 6.7).
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

# The kernel: the newest amd64 image package of 6.14 or later in trixie-backports, unpacked
# once. apt reads a sources list of its own and keeps its lists under $cache/apt.
apt_dir=$PWD/$cache/apt
apt_options=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache::Archives="$apt_dir/archives"
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Dir::Etc::Preferences=/dev/null
  -o Dir::Etc::PreferencesParts=/dev/null -o Acquire::Languages=none)
at_least_6_14() { # reads package or kernel names, prints those of 6.14 or later
  awk -F- '{ split($3, v, "."); if (v[1] > 6 || (v[1] == 6 && v[2] >= 14)) print }'
}
kernel_package() {
  apt-cache "${apt_options[@]}" search --names-only '^linux-image-[0-9].*-amd64$' |
    awk '{print $1}' | grep -Ev -- '-(cloud|rt)-amd64$' | sort -V | at_least_6_14 | tail -1
}
# The unpacked kernel's version: from /boot/vmlinuz-VERSION, or (newer packages) from
# /usr/lib/modules/VERSION/vmlinuz.
kernel_version() {
  local image
  for image in "$cache"/kernel/boot/vmlinuz-* "$cache"/kernel/usr/lib/modules/*/vmlinuz; do
    case $image in
      *'*'*) ;;
      */vmlinuz) basename "$(dirname "$image")"; return ;;
      *) echo "${image##*/vmlinuz-}"; return ;;
    esac
  done
}
cached=$(kernel_version)
if [ -z "$cached" ] || [ -z "$(echo "linux-image-$cached" | at_least_6_14)" ]; then
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
  echo "deb http://deb.debian.org/debian trixie-backports main" >"$apt_dir/sources.list"
  apt-get "${apt_options[@]}" update -qq >&2
  package=$(kernel_package)
  [ -n "$package" ] ||
    { echo "ktls-vm: no kernel package of 6.14 or later in trixie-backports" >&2; exit 1; }
  # Newer kernels split the image package: the kernel and its modules come in these.
  packages=("$package")
  for part in linux-binary linux-modules; do
    name="$part-${package#linux-image-}"
    apt-cache "${apt_options[@]}" show "$name" >/dev/null 2>&1 && packages+=("$name")
  done
  echo "ktls-vm: fetching ${packages[*]} (once)" >&2
  rm -rf "$cache/deb" "$cache/kernel"
  mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get "${apt_options[@]}" download -q "${packages[@]}" 2>&1 |
    grep -v '^W: Download is performed unsandboxed' >&2)
  for deb in "$cache"/deb/*.deb; do dpkg -x "$deb" "$cache/kernel"; done
  # Trixie's packages keep modules under /usr/lib; depmod -b looks under /lib.
  if [ -d "$cache/kernel/usr/lib/modules" ] && [ ! -e "$cache/kernel/lib/modules" ]; then
    mkdir -p "$cache/kernel/lib"
    ln -s ../usr/lib/modules "$cache/kernel/lib/modules"
  fi
fi
version=$(kernel_version)
vmlinuz="$cache/kernel/boot/vmlinuz-$version"
[ -e "$vmlinuz" ] || vmlinuz="$cache/kernel/usr/lib/modules/$version/vmlinuz"
modules="$cache/kernel/lib/modules/$version"
[ -e "$modules/modules.dep" ] || depmod -b "$cache/kernel" "$version"

cargo build --release --quiet -p ringws -p ringws-loadgen --bins
cargo build --release --quiet -p ringws --example ktls_client

# The initramfs: busybox, the two binaries and the libraries they load, a test PKI, the
# modules kernel TLS and its ciphers need (uncompressed, with their modules.dep), the init.
root="$cache/root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,pki,proc,sys,dev,tmp} "$root/lib/modules/$version"
cp /bin/busybox "$root/bin/busybox"
for bin in ringws ringws-loadgen examples/ktls_client; do
  strip -o "$root/bin/${bin#examples/}" "target/release/$bin"
  for lib in $(ldd "target/release/$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cp scripts/lib/ktls-vm-init.sh "$root/init"
chmod +x "$root/init"

# Where each lives moved between kernels (6.17: the ChaCha20 and Poly1305 code in lib/crypto);
# a name this kernel lacks is skipped.
wanted=(net/tls/tls crypto/gcm crypto/ghash-generic crypto/chacha20poly1305 crypto/chacha
  arch/x86/crypto/aesni-intel arch/x86/crypto/chacha-x86_64 arch/x86/crypto/poly1305-x86_64
  lib/crypto/x86/chacha-x86_64 lib/crypto/x86/poly1305-x86_64)
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
# Newer packages ship no modules.order or modules.builtin: nothing is built in then.
for list in modules.order modules.builtin modules.builtin.modinfo; do
  if [ -e "$modules/$list" ]; then
    cp "$modules/$list" "$root/lib/modules/$version/"
  else
    : >"$root/lib/modules/$version/$list"
  fi
done
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
