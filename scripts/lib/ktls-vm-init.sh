#!/bin/busybox sh
# /init of the kernel TLS guest (scripts/ktls-vm.sh): loads the kernel's `tls` module, runs
# ringws with a TLS listener and the load generator's wss echo against it, prints what the
# host checks between `== NAME` markers, and powers off. The kernel command line picks the
# mode: `ktls.mode=check` (default) or `ktls.mode=bench` (`ktls.rounds`, `ktls.seconds`).
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
ip link set lo up
ulimit -n 65536

param() { sed -n "s/.*ktls\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mode=$(param mode)
rounds=$(param rounds)
seconds=$(param seconds)
log=$(param log)

echo "== modules"
for module in tls aesni_intel gcm ghash_generic chacha20poly1305 chacha chacha_x86_64 poly1305_x86_64; do
  modprobe "$module" || echo "modprobe $module failed"
done
cat /proc/sys/net/ipv4/tcp_available_ulp

# serve NAME PORT METRICS_PORT ARGS...: a ringws on core 0; sets $server_pid. $rekey_after,
# when set, replaces its TLS 1.3 transmit keys after that many records.
serve() {
  name=$1 port=$2 metrics=$3
  shift 3
  env ${rekey_after:+RINGWS_TLS_KERNEL_REKEY_AFTER_RECORDS=$rekey_after} RINGWS_LOG=${log:-info} \
    taskset -c 0 /bin/ringws serve --listen "127.0.0.1:$metrics" --tls-listen "127.0.0.1:$port" \
    --tls-cert /pki/leaf.pem --tls-key /pki/leaf.key --shards 1 --idle-timeout 0 "$@" \
    >"/tmp/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q '(TLS)' "/tmp/$name.log" && return 0; sleep 0.1; done
  echo "ringws ($name) did not start"
  cat "/tmp/$name.log"
}

# echo_run URL JSON ARGS...: the load generator's wss echo on core 1.
echo_run() {
  url=$1 json=$2
  shift 2
  taskset -c 1 /bin/ringws-loadgen --url "$url" --ca /pki/ca.pem --threads 1 --quiet \
    --json "$json" "$@" >/dev/null 2>&1
  echo "loadgen exit $?"
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

if [ "$mode" = bench ]; then
  serve kernel 9443 9001 --tls-kernel auto
  kernel_pid=$server_pid
  serve user 9444 9002 --tls-kernel off
  user_pid=$server_pid
  echo "== bench"
  echo "clk_tck $(getconf CLK_TCK 2>/dev/null || echo 100)"
  for round in $(seq "${rounds:-3}"); do
    for name in kernel user; do
      if [ $name = kernel ]; then pid=$kernel_pid port=9443; else pid=$user_pid port=9444; fi
      for size in 20 4096; do
        before=$(ticks $pid)
        echo_run "wss://127.0.0.1:$port/bench" /tmp/bench.json --connections 20 --pipeline 4 \
          --message-size $size --duration "${seconds:-5}"
        after=$(ticks $pid)
        echo "round $round $name size $size ticks $((after - before)) $(tr -d '\n ' </tmp/bench.json)"
      done
    done
  done
  echo "== metrics"
  wget -qO- http://127.0.0.1:9001/metrics | grep '^ringws_tls'
  wget -qO- http://127.0.0.1:9002/metrics | grep '^ringws_tls' | sed 's/^/off: /'
  echo "== tls_stat"
  cat /proc/net/tls_stat
  echo "== server log"
  kill $kernel_pid $user_pid
  sleep 1
  cat /tmp/kernel.log /tmp/user.log
else
  # The default (auto), which offloads only where the kernel takes new keys; the server's
  # own key updates come every 64 records.
  rekey_after=64 serve check 9443 9001 --log-connections
  echo "== tls_stat before"
  cat /proc/net/tls_stat
  echo "== echo small"
  echo_run wss://127.0.0.1:9443/echo /tmp/small.json --connections 20 --pipeline 8 \
    --message-size 20 --duration 2
  cat /tmp/small.json
  echo
  echo "== echo large"
  echo_run wss://127.0.0.1:9443/echo /tmp/large.json --connections 4 --pipeline 2 \
    --message-size 100000 --duration 2
  cat /tmp/large.json
  echo
  echo "== clients"
  # Each version and cipher: pipelined echo, the client's KeyUpdates (TLS 1.3), the server's
  # close_notify.
  for version in tls13 tls12; do
    for cipher in aes128 aes256 chacha; do
      taskset -c 1 /bin/ktls_client 127.0.0.1:9443 /pki/ca.pem $version $cipher 2 2>&1
    done
  done
  echo "== tls_stat after"
  cat /proc/net/tls_stat
  echo "== metrics"
  wget -qO- http://127.0.0.1:9001/metrics | grep '^ringws_tls'
  echo "== server log"
  kill $server_pid
  sleep 1
  cat /tmp/check.log
fi
echo "== end"
poweroff -f
