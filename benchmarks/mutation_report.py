"""Counts per module from mutmut's results (run in the repository root after ``mutmut run``).

    python -m benchmarks.mutation_report           # markdown table + the survivors with their diffs

A survivor listed in ``benchmarks/mutation_equivalent.txt`` (``mutant_name  reason``, one a line, ``#``
comments) counts as equivalent: a mutation that changes no behaviour any caller can observe. The rate that the
goal (< 15 %) is about is the survivors that are not equivalent over all mutants tested.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.txt"
MODULES = ["factory.rewards", "factory.prompts", "factory.train.stages", "factory.train.rollout", "svlm_runtime.package",
           "svlm_runtime.preprocess", "export.compare"]


def equivalents() -> dict[str, str]:
    out = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def results() -> dict[str, str]:
    """mutant name -> status, from ``mutmut results --all true``."""
    text = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            out[name] = status
    return out


def module_of(name: str) -> str:
    return next((m for m in MODULES if name.startswith(m + ".")), name.split(".x")[0])


def main() -> int:
    status, equiv = results(), equivalents()
    per: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, st in sorted(status.items()):
        mod = module_of(name)
        per[mod]["mutants"] += 1
        if st == "survived":
            if name in equiv:
                per[mod]["equivalent"] += 1
            else:
                per[mod]["survived"] += 1
                survivors[mod].append(name)
        else:
            per[mod][st] += 1
    print("| module | mutants | killed | timeout | survived | equivalent | no tests | not run | other "
          "| surviving, not equivalent |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = Counter()
    for mod in MODULES + sorted(set(per) - set(MODULES)):
        c = per.get(mod)
        if not c:
            continue
        other = c["mutants"] - sum(c[k] for k in ("killed", "timeout", "survived", "equivalent", "no tests",
                                                  "not checked"))
        total.update(c)
        total["other"] += other
        rate = c["survived"] / c["mutants"] if c["mutants"] else 0.0
        print(f"| {mod} | {c['mutants']} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['equivalent']} | "
              f"{c['no tests']} | {c['not checked']} | {other} | {rate:.1%} |")
    if total["mutants"]:
        print(f"| all | {total['mutants']} | {total['killed']} | {total['timeout']} | {total['survived']} | "
              f"{total['equivalent']} | {total['no tests']} | {total['not checked']} | {total['other']} | "
              f"{total['survived'] / total['mutants']:.1%} |")
    for mod, names in survivors.items():
        print(f"\nSurvivors in {mod} (not listed as equivalent):")
        for name in names:
            print(f"- `{name}`")
    untested = sorted(n for n, st in status.items() if st == "no tests")
    if untested:
        print("\nNo selected test calls the function of: " + ", ".join(f"`{n}`" for n in untested))
    return 0


if __name__ == "__main__":
    sys.exit(main())
