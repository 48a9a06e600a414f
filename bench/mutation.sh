#!/usr/bin/env bash
# Mutation score of the compiler passes, the op definitions and the kernel templates (issue 15):
# mutmut mutates cnngraph/passes, cnngraph/ops and cnngraph/codegen/templates ([tool.mutmut] in
# pyproject.toml) and runs, for each mutant, the tests of the fast selection that reach the
# mutated function. Not in CI: there are over 10,000 mutants, days on 2 cores. Results accumulate
# in mutants/ (a rerun tests only mutants not yet run or of changed functions); the report goes to
# bench/results/mutation-<date>.md (+ .json), survivors listed with their diffs.
#
#   bash bench/mutation.sh                       # every mutant
#   MUTATION_SAMPLE=200 bash bench/mutation.sh   # 200 random mutants per area (seeded): an estimate
#   bash bench/mutation.sh "cnngraph.passes.*"   # one area (mutmut's mutant-name globs)
#   MUTMUT_CHILDREN=1 bash bench/mutation.sh     # fewer parallel test processes (default 2)
#   python bench/mutation.py retry               # after adding tests: survivors are tried again
#   python bench/mutation.py quick 100 tests/test_passes.py   # the sample first against fast files
# mutmut keeps the tests it found reaching each function; after the code moves, delete
# mutants/mutmut-stats.json so it looks again.
set -euo pipefail
cd "$(dirname "$0")/.."
children=(--max-children "${MUTMUT_CHILDREN:-2}")
# mutmut exits non-zero when mutants survive, so its status is not a failure of this script
if [[ -n "${MUTATION_SAMPLE:-}" ]]; then
    mutmut run "${children[@]}" "cnngraph.passes.remove_dropout.*" || true   # generates the mutants
    mapfile -t names < <(python bench/mutation.py sample "$MUTATION_SAMPLE")
    mutmut run "${children[@]}" "${names[@]}" || true
else
    mutmut run "${children[@]}" "$@" || true
fi
python bench/mutation.py recheck   # survivors of functions run at import time, on every test
python bench/mutation.py report --output "bench/results/mutation-$(date +%F).md" ${MUTATION_SAMPLE:+--sample "$MUTATION_SAMPLE"}
