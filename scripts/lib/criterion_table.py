"""Prints a criterion group's results as a Markdown table: one row per parameter, one column
per function, throughput where criterion knows it, else the time per iteration.

usage: criterion_table.py GROUP [FUNCTION ...]     (run from the workspace root)
"""
import json
import pathlib
import sys


def load(group):
    results = {}
    for estimates in pathlib.Path("target/criterion", group).glob("**/new/estimates.json"):
        bench = json.loads((estimates.parent / "benchmark.json").read_text())
        mean_ns = json.loads(estimates.read_text())["mean"]["point_estimate"]
        function = bench.get("function_id") or bench["title"]
        parameter = bench.get("value_str") or ""
        throughput = bench.get("throughput") or {}
        results[(function, parameter)] = (mean_ns, throughput)
    return results


def cell(mean_ns, throughput):
    if "Bytes" in throughput:
        gib = throughput["Bytes"] / mean_ns * 1e9 / 2**30
        return f"{gib:.2f} GiB/s"
    if "Elements" in throughput:
        per_sec = throughput["Elements"] / mean_ns * 1e9
        return f"{per_sec / 1e6:.1f} M/s"
    return f"{mean_ns:.1f} ns"


def main():
    group, functions = sys.argv[1], sys.argv[2:]
    results = load(group)
    functions = functions or sorted({f for f, _ in results})
    parameters = sorted({p for _, p in results}, key=lambda p: (len(p), p) if not p.isdigit() else (0, int(p)))
    print("| " + " | ".join([group] + functions) + " |")
    print("|" + "---|" * (len(functions) + 1))
    for parameter in parameters:
        cells = [cell(*results[(f, parameter)]) if (f, parameter) in results else "" for f in functions]
        print("| " + " | ".join([parameter or "-"] + cells) + " |")


main()
