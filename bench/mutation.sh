#!/usr/bin/env bash
# Mutation score of the compiler passes, the op definitions and the kernel templates (issue 15):
# mutmut mutates cnngraph/passes, cnngraph/ops and cnngraph/codegen/templates ([tool.mutmut] in
# pyproject.toml) and runs, for each mutant, the tests of the fast selection that reach the
# mutated function. Hours on 2 cores, so not in CI. Results accumulate in mutants/ (a rerun only
# tests mutants of changed functions) and the report goes to bench/results/mutation-<date>.md.
#
#   bash bench/mutation.sh                         # everything
#   bash bench/mutation.sh "cnngraph.passes.*"     # one area (mutmut's mutant-name globs)
#   MUTMUT_CHILDREN=1 bash bench/mutation.sh       # fewer parallel test processes
set -euo pipefail
cd "$(dirname "$0")/.."
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@" || true   # exits non-zero when mutants survive
python bench/mutation_report.py --output "bench/results/mutation-$(date +%F).md"
