#!/usr/bin/env bash
# What only a GPU can check, in one run of a few minutes (run from the repository root):
#   1. tests/test_gpu.py: every helper that takes a model, on the GPU against the same call on the CPU;
#      and the other GPU cases of the test suite;
#   2. the benchmark's GPU table (tests/benchmarks/benchmark.py --devices cuda --readme), written
#      into README.md between the benchmark-gpu markers.
# Logs and a copy of the updated README.md go to $OUT (default: /tmp/gpu-check).
set -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
"$python" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
status=0
"$python" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py \
    tests/test_gradients.py::test_gpu_matches_cpu tests/test_images.py::test_gpu_round_trip 2>&1 | tee "$out/tests.log" || status=1
"$python" tests/benchmarks/benchmark.py --devices cuda --readme --out "$out/benchmark-gpu.md" 2>&1 | tee "$out/benchmark.log" || status=1
cp README.md "$out/README.md"
exit $status
