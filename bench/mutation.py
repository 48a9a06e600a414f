"""Mutation testing helpers for bench/mutation.sh, run from the repository root.

- `sample N`: N mutant names per area (passes, ops, templates) in a fixed random order: a measured
  estimate when the full run (over 10,000 mutants, days on 2 cores) does not fit.
- `recheck`: mutmut charges the calls a module makes while it is imported (the activation layer
  classes made by a function, the op registry's order) to the first test it runs, so a mutant of
  such a function meets that one test only; this reruns their survivors against the whole test
  selection and records the verdicts in mutmut's results.
- `quick N TESTS...`: tries the sample's unrun mutants against a few fast test files first;
  those they catch are recorded, the rest are left for mutmut.
- `retry`: marks every survivor as not run, so the next bench/mutation.sh tries them again against
  the tests written since.
- `report`: counts the mutants of each area and file by outcome, gives the score (detected: the
  tests failed, timed out or crashed; over those tested) and lists each survivor with its diff,
  marked equivalent where bench/mutation_equivalent.txt says why no test can tell it apart
  (`<mutant name>  <reason>` per line; mutmut numbers mutants by position within a function, so
  the list is reviewed when the mutated code changes).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

from mutmut.configuration import config
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.mutation.trampoline import mangled_name_from_mutant_name
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.txt")
AREAS = {"cnngraph/passes": "passes", "cnngraph/ops": "ops", "cnngraph/codegen/templates": "templates"}
DETECTED = ("killed", "timeout", "crashed")  # the tests failed, ran past their time, or died of a signal
UNDETECTED = ("survived", "no tests", "suspicious")


def status_of(exit_code: int | None) -> str:
    """mutmut's verdict, with any death by a signal (PoCL aborts on an out-of-bounds access) a crash."""
    return "crashed" if exit_code is not None and exit_code < 0 else status_by_exit_code[exit_code]


def area_of(path: str) -> str:
    return next(name for prefix, name in AREAS.items() if path.startswith(prefix))


def read_equivalents() -> dict[str, str]:
    if not EQUIVALENT_FILE.exists():
        return {}
    lines = (line.strip() for line in EQUIVALENT_FILE.read_text().splitlines())
    return dict(line.split(None, 1) for line in lines if line and not line.startswith("#"))


def detected_and_tested(counts: collections.Counter) -> tuple[int, int]:
    detected = sum(counts[s] for s in DETECTED)
    return detected, detected + sum(counts[s] for s in UNDETECTED)


def score(counts: collections.Counter) -> str:
    detected, tested = detected_and_tested(counts)
    return f"{100 * detected / tested:.1f}%" if tested else "-"


def wilson(detected: int, tested: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval of a proportion measured on a random sample (Wilson's, good near 100%)."""
    p, n = detected / tested, tested
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def estimate(by_area: dict[str, collections.Counter], populations: dict[str, int]) -> list[str]:
    """For a sample: each area's score with its 95% interval, and the score of all the mutants with
    the areas weighted by their number of mutants (the sample takes as many from each), its
    interval the weighted areas' bounds (conservative)."""
    lines, overall, everyone = [], [0.0, 0.0, 0.0], sum(populations.values())
    for name, counts in sorted(by_area.items()):
        detected, tested = detected_and_tested(counts)
        if not tested:
            continue
        p, (low, high), share = detected / tested, wilson(detected, tested), populations[name] / everyone
        overall = [overall[0] + share * p, overall[1] + share * low, overall[2] + share * high]
        lines.append(f"- {name} ({populations[name]} mutants): {100 * p:.1f}% of {tested} tested "
                     f"(95% interval {100 * low:.1f} to {100 * high:.1f}%)")
    lines.append(f"- all {everyone} mutants, the areas weighted by their size: {100 * overall[0]:.1f}% "
                 f"({100 * overall[1]:.1f} to {100 * overall[2]:.1f}%)")
    return lines


def source_files() -> dict[str, SourceFileMutationData]:
    """mutmut's results of each mutated file (exit code by mutant; None: not run), loaded."""
    config()  # reads [tool.mutmut] so walk_mutatable_files knows what was mutated
    files = {}
    for path in sorted(map(str, walk_mutatable_files())):
        files[path] = SourceFileMutationData(path=path)
        files[path].load()
    return files


def mutants_by_file() -> dict[str, dict[str, int | None]]:
    """Every generated mutant of each mutated file, with mutmut's exit code (None: not run)."""
    return {path: data.exit_code_by_key for path, data in source_files().items()}


def run_mutant(name: str, pytest_args: list[str], timeout_s: float) -> int:
    """pytest's exit status with mutant `name` active, as mutmut runs it (mutmut's 36 past the timeout)."""
    env = {**os.environ, "MUTANT_UNDER_TEST": name}
    try:
        return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd="mutants", env=env,
                              capture_output=True, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        return 36


def sample(per_area: int, seed: int = 0) -> list[str]:
    """`per_area` mutant names of each area, the same on every call."""
    names_by_area = collections.defaultdict(list)
    for path, exit_codes in mutants_by_file().items():
        names_by_area[area_of(path)] += sorted(exit_codes)
    chosen = []
    for area, names in sorted(names_by_area.items()):
        random.Random(f"{seed}:{area}").shuffle(names)  # a fixed order per area: a smaller sample is a prefix
        chosen += names[:per_area]
    return chosen


def import_time_functions() -> set[str]:
    """The mutated functions the package calls while being imported, in mutmut's naming."""
    probe = ("import importlib, json, pkgutil, cnngraph\n"
             "from mutmut.state import state\n"
             "for m in pkgutil.walk_packages(cnngraph.__path__, 'cnngraph.'):\n"
             "    try: importlib.import_module(m.name)\n"
             "    except ImportError: pass\n"
             "print(json.dumps(sorted(state()._stats)))")
    env = {**os.environ, "MUTANT_UNDER_TEST": "stats"}
    out = subprocess.run([sys.executable, "-c", probe], cwd="mutants", env=env, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def recheck(timeout_s: float) -> None:
    cfg = config()
    pytest_args = ["-x", "-q", *cfg.pytest_add_cli_args, *cfg.pytest_add_cli_args_test_selection]
    imported = import_time_functions()
    for data in source_files().values():
        suspects = [name for name, code in data.exit_code_by_key.items()
                    if status_of(code) in UNDETECTED
                    and f"{name.rsplit('.', 1)[0]}.{mangled_name_from_mutant_name(name.rsplit('.', 1)[1])}" in imported]
        for name in suspects:
            data.exit_code_by_key[name] = code = run_mutant(name, pytest_args, timeout_s)
            data.save()
            print(f"{name}: {status_of(code)}", flush=True)


def quick(per_area: int, tests: list[str], workers: int = 2, timeout_s: float = 600) -> None:
    """Tries each sampled mutant that has not run against `tests` alone (a few fast files of the
    selection): a mutant they catch is caught by the selection too, so it is recorded as mutmut
    records it; the rest stay for mutmut (which pays the whole selection's collection per mutant)."""
    pytest_args = ["-x", "-q", *config().pytest_add_cli_args, *tests]
    files = source_files()
    owner = {name: data for data in files.values() for name in data.exit_code_by_key}
    todo = [name for name in sample(per_area) if owner[name].exit_code_by_key[name] is None]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, code in zip(todo, pool.map(lambda name: run_mutant(name, pytest_args, timeout_s), todo)):
            if status_of(code) in DETECTED:
                owner[name].exit_code_by_key[name] = code
                owner[name].save()
            print(f"{name}: {status_of(code) if status_of(code) in DETECTED else 'left for mutmut'}", flush=True)


def retry() -> None:
    for data in source_files().values():
        for name, code in data.exit_code_by_key.items():
            if status_of(code) in UNDETECTED:
                data.exit_code_by_key[name] = None
        data.save()


def report(output: Path, per_area: int | None) -> None:
    """The report of every mutant that ran, or with `per_area` of the sample's only (a sample's
    estimate must not mix in mutants run for other reasons)."""
    equivalents = read_equivalents()
    chosen = set(sample(per_area)) if per_area else None

    by_file: dict[str, collections.Counter] = {}
    survivors: list[tuple[str, str, str]] = []  # (path, mutant, status)
    populations: collections.Counter = collections.Counter()
    for path, exit_codes in mutants_by_file().items():
        populations[area_of(path)] += len(exit_codes)
        counts = by_file.setdefault(path, collections.Counter())
        for mutant, exit_code in exit_codes.items():
            if chosen is not None and mutant not in chosen:
                continue
            status = status_of(exit_code)
            if mutant in equivalents and status not in DETECTED:  # run or not: no test can tell it apart
                status = "equivalent"
            counts[status] += 1
            if status in (*UNDETECTED, "equivalent"):
                survivors.append((path, mutant, status))

    by_area: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for path, counts in by_file.items():
        by_area[area_of(path)] += counts
    total = sum(by_area.values(), collections.Counter())

    columns = [*DETECTED, *UNDETECTED, "equivalent", "not checked"]
    lines = ["# Mutation score", "",
             "`bash bench/mutation.sh` (mutmut, configuration in pyproject.toml `[tool.mutmut]`). Score: "
             "mutants the tests detected (failed, timed out or crashed) over those tested; equivalent mutants "
             "(bench/mutation_equivalent.txt) are left out; 'not checked' ones were not run.", "",
             "| area | " + " | ".join(columns) + " | score |", "|---" * (len(columns) + 2) + "|"]
    for name, counts in [*sorted(by_area.items()), ("all", total)]:
        lines.append(f"| {name} | " + " | ".join(str(counts[c]) for c in columns) + f" | {score(counts)} |")
    if per_area:
        lines += ["", f"A seeded random sample of {per_area} mutants per area ran: the estimates are", "",
                  *estimate(by_area, populations)]
    lines += ["", "## Per file", "", "| file | " + " | ".join(columns) + " | score |",
              "|---" * (len(columns) + 2) + "|"]
    for path, counts in by_file.items():
        if sum(counts.values()):
            lines.append(f"| {path} | " + " | ".join(str(counts[c]) for c in columns) + f" | {score(counts)} |")
    lines += ["", "## Survivors", ""]
    for path, mutant, status in survivors:
        reason = f": {equivalents[mutant]}" if status == "equivalent" else ""
        lines += [f"### {mutant} ({status}{reason})", "", "```diff",
                  get_diff_for_mutant(mutant, path=path).strip(), "```", ""]
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps(
        {"areas": {k: dict(v) for k, v in by_area.items()}, "files": {k: dict(v) for k, v in by_file.items()},
         "survivors": [{"file": p, "mutant": m, "status": s} for p, m, s in survivors]}, indent=1) + "\n")
    print("\n".join(lines[:len(by_area) + 8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample_args = commands.add_parser("sample", help="print a seeded random sample of mutant names")
    sample_args.add_argument("per_area", type=int)
    sample_args.add_argument("--seed", type=int, default=0)
    recheck_args = commands.add_parser("recheck", help="rerun survivors of import-time functions on every test")
    recheck_args.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    quick_args = commands.add_parser("quick", help="try the sample's unrun mutants against a few test files first")
    quick_args.add_argument("per_area", type=int)
    quick_args.add_argument("tests", nargs="+")
    commands.add_parser("retry", help="mark every survivor as not run")
    report_args = commands.add_parser("report", help="write the markdown report (and a .json beside it)")
    report_args.add_argument("--output", type=Path, required=True)
    report_args.add_argument("--sample", type=int, help="report on this sample (MUTATION_SAMPLE) only")
    args = parser.parse_args()
    if args.command == "sample":
        print("\n".join(sample(args.per_area, args.seed)))
    elif args.command == "quick":
        quick(args.per_area, args.tests)
    elif args.command == "retry":
        retry()
    elif args.command == "recheck":
        recheck(args.timeout)
    else:
        report(args.output, args.sample)


if __name__ == "__main__":
    main()
