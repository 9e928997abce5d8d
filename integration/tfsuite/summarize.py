"""Summary of run_new_families.sh: per suite and configuration, tests / failures / unexpected failures.

usage: summarize.py WORK "CONFIGS" "SUITES" EXPECTED...
A test name counts once however many subtests fail. A patched failure is unexpected unless the test also fails
unpatched (base) or, at pre and merge, is one of EXPECTED (parametrized variants included).
"""
import os
import sys
import xml.etree.ElementTree as ET


def failures(path):
    """(number of test cases, {failing test name: last 'E ' line})"""
    out, n = {}, 0
    for case in ET.parse(path).getroot().iter("testcase"):
        n += 1
        for child in case:
            if child.tag in ("failure", "error"):
                lines = [l for l in (child.text or "").splitlines() if l.startswith("E ")]
                out.setdefault(case.get("name"), (lines[-1][1:].strip() if lines else child.get("message", ""))[:140])
    return n, out


def expected_name(name, expected):
    """``name`` or its parametrized base (``test_x_0_random`` -> ``test_x``) is in ``expected``."""
    parts = name.split("[")[0].split("_")
    for i, part in enumerate(parts):
        if part.isdigit():
            parts = parts[:i]
            break
    return name.split("[")[0] in expected or "_".join(parts) in expected


work, configs, suites, expected = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), set(sys.argv[4:])
totals = {c: [0, 0, 0] for c in configs}  # unexpected, allowed, tests
bad_lines = []
for suite in suites:
    base_path = os.path.join(work, f"{suite}.base.xml")
    if not os.path.exists(base_path):
        print(f"{suite}: no unpatched run (see {work}/{suite}.base.log)")
        continue
    n_base, base_fail = failures(base_path)
    row = [f"{suite}: {n_base} tests, {len(base_fail)} failing unpatched (excluded)"]
    for c in configs:
        if c == "base":
            continue
        path = os.path.join(work, f"{suite}.{c}.xml")
        if not os.path.exists(path):
            row.append(f"{c}: no result")
            totals[c][0] += 1
            continue
        n, fail = failures(path)
        new = {t: m for t, m in fail.items() if t not in base_fail}
        allowed = {t for t in new if c in ("pre", "merge") and expected_name(t, expected)}
        unexpected = {t: m for t, m in new.items() if t not in allowed}
        totals[c][0] += len(unexpected); totals[c][1] += len(allowed); totals[c][2] += n
        row.append(f"{c}: {len(unexpected)} unexpected, {len(allowed)} expected")
        bad_lines += [f"  {suite}[{c}]::{t}: {m}" for t, m in sorted(unexpected.items())]
    print("; ".join(row))
for line in bad_lines[:60]:
    print(line)
failed = False
for c in configs:
    if c != "base":
        u, a, n = totals[c]
        failed |= u > 0
        print(f"transformers new-family suites [{c}]: {u} unexpected failures, {a} expected shape differences, {n} tests")
sys.exit(1 if failed else 0)
