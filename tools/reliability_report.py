"""Turn the test run's JUnit XML into the per-category reliability table.

    python -m tools.reliability_report reports/junit.xml [--out reports/reliability.md]
        [--readme README.md]

Counts passed / failed / skipped test cases per category (recorded by
conftest.py as a JUnit property) and compares them with the targets.
With ``--readme`` the table replaces the block between
``<!-- reliability:start -->`` and ``<!-- reliability:end -->``.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import xml.etree.ElementTree as ET

TARGETS = {
    "reference": 45,
    "loss_oracle": 24,
    "variants": 40,
    "gradcheck": 15,
    "padding_invariance": 20,
    "numerics": 20,
    "dtype": 18,
    "bad_input": 25,
    "retrace": 6,
    "property": 10,
    "determinism": 6,
    "roundtrip": 3,
    "perf_budget": 4,
    "training_smoke": 3,
    "gpu": 0,
    "data": 0,
    "docs": 0,
}


def count(junit_path: str) -> dict[str, collections.Counter]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        category = "uncategorised"
        for prop in case.iter("property"):
            if prop.get("name") == "category":
                category = prop.get("value")
        if case.find("skipped") is not None:
            outcome = "skipped"
        elif case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        else:
            outcome = "passed"
        counts[category][outcome] += 1
    return counts


def table(counts) -> str:
    lines = [
        "| category | passed | failed | skipped | target | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    totals = collections.Counter()
    for category in list(TARGETS) + sorted(set(counts) - set(TARGETS)):
        c = counts.get(category, collections.Counter())
        totals.update(c)
        target = TARGETS.get(category, 0)
        if category == "gpu":
            ok = c["failed"] == 0
            status = "ok" if ok else "FAIL"
            if ok and c["skipped"]:
                status = "ok (skipped without a GPU)"
        else:
            ok = c["failed"] == 0 and c["passed"] >= target
            status = "ok" if ok else "FAIL"
        lines.append(
            f"| {category} | {c['passed']} | {c['failed']} | {c['skipped']} | "
            f"{target or '-'} | {status} |"
        )
    lines.append(f"| **all** | {totals['passed']} | {totals['failed']} | {totals['skipped']} | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit")
    parser.add_argument("--out", default=None)
    parser.add_argument("--readme", default=None)
    args = parser.parse_args(argv)
    text = table(count(args.junit))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.readme:
        with open(args.readme) as f:
            readme = f.read()
        pattern = re.compile(r"(<!-- reliability:start -->\n).*?(<!-- reliability:end -->)", re.S)
        if not pattern.search(readme):
            print(f"no reliability markers in {args.readme}", file=sys.stderr)
            return 1
        with open(args.readme, "w") as f:
            f.write(pattern.sub(lambda m: m.group(1) + text + m.group(2), readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
