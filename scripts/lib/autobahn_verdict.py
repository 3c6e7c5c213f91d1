"""Judges an Autobahn run: every selected case must be present and pass.

A case passes when its behavior is OK, NON-STRICT or INFORMATIONAL and its close behavior is
OK or INFORMATIONAL. wstest skips every case after a failed connection without saying so, so
a selected case missing from the report counts as failed.

usage: autobahn_verdict.py INDEX_JSON EXPECTED_IDS_JSON AGENT [--markdown OUT --command CMD]
"""
import argparse
import collections
import datetime
import json
import sys

GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("expected")
    parser.add_argument("agent")
    parser.add_argument("--markdown")
    parser.add_argument("--command", default="scripts/autobahn.sh")
    args = parser.parse_args()

    expected = json.load(open(args.expected))
    try:
        results = json.load(open(args.index)).get(args.agent, {})
    except (OSError, ValueError):
        results = {}

    groups = collections.OrderedDict()
    failures = []
    for case_id in sorted(expected, key=case_key):
        group = case_id.split(".")[0]
        counts = groups.setdefault(group, collections.Counter())
        result = results.get(case_id)
        if result is None:
            counts["missing"] += 1
            failures.append((case_id, "MISSING", "-", "-"))
            continue
        behavior, close = result.get("behavior"), result.get("behaviorClose")
        if behavior in GOOD and close in GOOD_CLOSE:
            counts[behavior] += 1
        else:
            counts["failed"] += 1
            failures.append((case_id, behavior, close, result.get("reportfile", "-")))

    header = "| group | cases | OK | NON-STRICT | INFORMATIONAL | failed | missing |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    for group, counts in groups.items():
        total = sum(counts.values())
        rows.append("| %s | %d | %d | %d | %d | %d | %d |" % (
            group, total, counts["OK"], counts["NON-STRICT"], counts["INFORMATIONAL"],
            counts["failed"], counts["missing"]))
    passed = len(expected) - len(failures)
    print("\n".join(rows))
    print("\nautobahn: %d of %d cases pass" % (passed, len(expected)))
    for case_id, behavior, close, report in failures:
        print("  FAILED %s: behavior %s, close %s, report %s" % (case_id, behavior, close, report))

    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("# Compliance\n\n")
            out.write("The Autobahn test suite (AutobahnTestSuite 25.10.1, fuzzingclient) against "
                      "`ringws serve`, run by `%s` on %s.\n\n" % (args.command, datetime.date.today()))
            out.write("A case passes when its behavior is OK, NON-STRICT or INFORMATIONAL and its "
                      "close behavior OK or INFORMATIONAL; a selected case missing from the report "
                      "counts as failed.\n\n")
            out.write("\n".join(rows) + "\n\n")
            out.write("**%d of %d cases pass.**\n" % (passed, len(expected)))
            if failures:
                out.write("\nFailing cases:\n\n")
                for case_id, behavior, close, _ in failures:
                    out.write("- %s: behavior %s, close %s\n" % (case_id, behavior, close))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
