#!/usr/bin/env bash
# The one GPU check, for a CUDA machine with no network: the GPU tests, compute-sanitizer's racecheck
# and memcheck on a reduced example at each precision (when the tool is there), then bench/gpu.py
# (cnngraph's CUDA backend against PyTorch cuDNN): untuned, starting no case after 150 s, so the
# whole check stays within about 6 minutes. Arguments go to bench/gpu.py after those (e.g. --out DIR,
# or --tune --budget 1200 for every case, autotuned too).
# Wheels in .whl/ (pydantic and its dependencies, when the machine lacks them) are installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cnngraph-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/cnngraph-site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_backends.py tests/test_reliability.py tests/test_files.py \
    tests/test_precision.py tests/test_launch_and_calls.py tests/test_extremes.py tests/test_profile.py \
    tests/test_activation_tails.py tests/test_geometry_grid.py tests/test_devices.py tests/test_half_precision.py
tests=$?
sanitized=0
if command -v compute-sanitizer > /dev/null; then
    for tool in racecheck memcheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 3 python3 bench/sanitize.py || sanitized=1
    done
fi
python3 bench/gpu.py --no-tune --budget 150 "$@"
bench=$?
echo "gpu tests exit $tests, compute-sanitizer exit $sanitized, benchmark exit $bench"
exit $(( tests || sanitized || bench ))
