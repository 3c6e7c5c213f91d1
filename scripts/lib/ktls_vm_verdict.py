"""Reads the console of the kernel TLS guest (scripts/ktls-vm.sh) and says whether it passed.

    ktls_vm_verdict.py check|bench CONSOLE KERNEL_VERSION

check: the echo came back intact, every ktls_client run passed (each version and cipher, key
updates, close_notify), the kernel's TLS counters rose (key updates both ways included),
ringws counted offloads and key updates.
bench: server CPU per message, kernel TLS against user-space records, as a Markdown table.
"""

import json
import re
import statistics
import sys


def sections(text):
    """The console's `== NAME` sections, by name."""
    found, name = {}, None
    for line in text.splitlines():
        marker = re.match(r"^== (.+)$", line)
        if marker:
            name = marker.group(1).strip()
            found[name] = []
        elif name is not None:
            found[name].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def tls_stat(text):
    return {
        match.group(1): int(match.group(2))
        for match in re.finditer(r"^(Tls\w+)\s+(\d+)$", text, re.M)
    }


def metrics(text):
    return {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^(ringws_tls[^\s]*)\s+([0-9.e+-]+)$", text, re.M)
    }


CLIENT_RUNS = [(v, c) for v in ("tls13", "tls12") for c in ("aes128", "aes256", "chacha")]


def client_problems(text):
    """Each ktls_client run said it passed: echo intact, its key updates, close_notify."""
    problems = []
    for version, cipher in CLIENT_RUNS:
        match = re.search(rf"^ktls_client: {version} {cipher}: (.*)$", text, re.M)
        if not match:
            failed = re.search(r"^ktls_client: FAIL: .*$", text, re.M)
            problems.append(f"ktls_client {version} {cipher} did not pass"
                            + (f" ({failed.group(0)})" if failed else ""))
            continue
        line = match.group(1)
        updates = 2 if version == "tls13" else 0
        if f"{updates} key updates sent" not in line or "close_notify seen" not in line:
            problems.append(f"ktls_client {version} {cipher}: {line}")
        print(f"ktls-vm: {version} {cipher}: {line}")
    return problems


def echo_problems(name, text):
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return [f"echo {name}: no report ({text.strip()[:200]!r})"]
    report = json.loads(match.group(0))
    problems = []
    if report["messages_received"] == 0:
        problems.append(f"echo {name}: no message came back")
    if report["messages_sent"] != report["messages_received"]:
        problems.append(
            f"echo {name}: {report['messages_sent']} sent, {report['messages_received']} back"
        )
    for field in ("connect_errors", "connections_dropped", "messages_lost",
                  "messages_corrupted", "messages_duplicated", "messages_reordered"):
        if report.get(field):
            problems.append(f"echo {name}: {field} = {report[field]}")
    print(f"ktls-vm: echo {name}: {report['messages_received']} messages intact over "
          f"{report['connections_established']} connections")
    return problems


def check(parts):
    problems = []
    for name in ("small", "large"):
        problems += echo_problems(name, parts.get(f"echo {name}", ""))
    problems += client_problems(parts.get("clients", ""))
    before, after = tls_stat(parts.get("tls_stat before", "")), tls_stat(parts.get("tls_stat after", ""))
    for counter in ("TlsTxSw", "TlsRxSw"):
        rose = after.get(counter, 0) - before.get(counter, 0)
        print(f"ktls-vm: /proc/net/tls_stat {counter} rose by {rose}")
        if rose <= 0:
            problems.append(f"{counter} did not rise: the kernel encrypted nothing")
    # Key updates: the clients' (received) and the server's own every 64 records (sent).
    for counter in ("TlsRxRekeyOk", "TlsTxRekeyOk", "TlsRxRekeyReceived"):
        rose = after.get(counter, 0) - before.get(counter, 0)
        print(f"ktls-vm: /proc/net/tls_stat {counter} rose by {rose}")
        if rose <= 0:
            problems.append(f"{counter} did not rise: no key was replaced")
    for counter in ("TlsDecryptError", "TlsRxNoPadViolation", "TlsDecryptRetry",
                    "TlsRxRekeyError", "TlsTxRekeyError"):
        if after.get(counter, 0) > before.get(counter, 0):
            problems.append(f"/proc/net/tls_stat {counter} rose")
    found = metrics(parts.get("metrics", ""))
    offloaded = found.get("ringws_tls_kernel_offloaded_total", 0)
    fallbacks = sum(v for k, v in found.items() if k.startswith("ringws_tls_kernel_fallbacks_total"))
    print(f"ktls-vm: ringws offloaded {offloaded:.0f} connections, {fallbacks:.0f} fell back")
    if offloaded <= 0:
        problems.append("ringws_tls_kernel_offloaded_total did not rise")
    if fallbacks > 0:
        problems.append("some connections fell back to user-space records")
    received = found.get('ringws_tls_kernel_key_updates_total{direction="received"}', 0)
    sent = found.get('ringws_tls_kernel_key_updates_total{direction="sent"}', 0)
    print(f"ktls-vm: ringws key updates: {received:.0f} received, {sent:.0f} sent")
    tls13_runs = sum(1 for version, _ in CLIENT_RUNS if version == "tls13")
    if received < 2 * tls13_runs:
        problems.append(f"ringws counted {received:.0f} key updates received, "
                        f"not the clients' {2 * tls13_runs}")
    if sent <= received:
        problems.append(f"ringws counted {sent:.0f} key updates sent: fewer than the "
                        "answers to the clients' and its own every 64 records")
    return problems


def bench(parts, version):
    clk = 100
    rows = {}
    for line in parts.get("bench", "").splitlines():
        if line.startswith("clk_tck"):
            clk = int(line.split()[1])
            continue
        match = re.match(r"round (\d+) (\w+) size (\d+) ticks (\d+) (\{.*\})$", line)
        if not match:
            continue
        _, name, size, ticks, report = match.groups()
        report = json.loads(report)
        received = max(report["messages_received"], 1)
        rows.setdefault((int(size), name), []).append(
            (int(ticks) / clk * 1e9 / received, report["throughput_msgs_per_sec"])
        )
    if not rows:
        return ["no bench results"]
    where = ("inside a KVM guest on this host" if "kvm" in version
             else "inside a QEMU TCG guest on this host (a software CPU: not KVM)")
    print(f"Kernel {version.split()[0]}, {where}, 2 vCPUs: server on vCPU 0, "
          "ringws-loadgen on vCPU 1, 20 connections, 4 messages in flight each.\n")
    print("| message | server CPU per message, kernel TLS | user-space records | kernel / user "
          "(median, min-max over rounds) | msg/s kernel | msg/s user |")
    print("|---|---|---|---|---|---|")
    for size in sorted({size for size, _ in rows}):
        kernel, user = rows.get((size, "kernel"), []), rows.get((size, "user"), [])
        ratios = [k[0] / u[0] for k, u in zip(kernel, user)]
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        print(f"| {size} B | {med([k[0] for k in kernel]):.0f} ns | {med([u[0] for u in user]):.0f} ns "
              f"| {med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"| {med([k[1] for k in kernel]):.0f} | {med([u[1] for u in user]):.0f} |")
    found = metrics(parts.get("metrics", ""))
    print(f"\nktls-vm: offloaded {found.get('ringws_tls_kernel_offloaded_total', 0):.0f} connections")
    return []


def main():
    mode, console, version = sys.argv[1:4]
    with open(console, errors="replace") as f:
        parts = sections(f.read())
    problems = check(parts) if mode == "check" else bench(parts, version)
    if problems:
        for problem in problems:
            print(f"ktls-vm: FAIL: {problem}", file=sys.stderr)
        print(f"ktls-vm: the guest's console: {console}", file=sys.stderr)
        sys.exit(1)
    if mode == "check":
        print(f"ktls-vm: kernel TLS verified on {version}")


main()
