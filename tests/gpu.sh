#!/usr/bin/env bash
# What only a GPU can check, run from anywhere in the repository:
#
#   bash tests/gpu.sh                       # all three stages
#   bash tests/gpu.sh tests chapters        # some of them
#
#   tests      tests/test_gpu.py (every helper that takes a model, on the GPU against the CPU) and
#              the other GPU cases of the test suite (about a minute)
#   chapters   every chapter's code on the GPU, in the offline world, with tests/benchmarks/chapters.py --plain
#              (no Jupyter needed; a few minutes)
#   random     the same with the real architectures built with random weights (optional: not in the
#              default stages; the checks that need trained weights fail, chapters 16 and 17)
#   benchmark  the benchmark's GPU table, written into README.md between the benchmark-gpu markers
#              (tests/benchmarks/benchmark.py --devices cuda --budget 10 --readme; a few minutes)
#
# Needs torch with CUDA, numpy, scipy, matplotlib, OpenCV, Pillow, tqdm and pytest. IPython and
# ipywidgets, which the chapters use, are installed from .whl/ when that folder exists (see
# tests/gpu-wheels.txt for how to fill it on a machine with a package index). Logs and a copy of
# the updated README.md go to $OUT (default /tmp/gpu-check). Exit status 1 if any stage failed.
set -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests chapters benchmark)
"$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
for stage in "${stages[@]}"; do
    echo "=== $stage"
    case "$stage" in
        tests)
            "$python" -m pytest -q -p no:cacheprovider -o addopts="" --durations=5 tests/test_gpu.py \
                tests/test_gradients.py::test_gpu_matches_cpu tests/test_images.py::test_gpu_round_trip \
                2>&1 | tee "$out/tests.log" || status=1 ;;
        chapters)
            "$python" tests/benchmarks/chapters.py --plain --offline > >(tee "$out/chapters.log") 2> "$out/chapters-errors.log" || status=1 ;;
        random)
            "$python" tests/benchmarks/chapters.py --plain > >(tee "$out/random.log") 2> "$out/random-errors.log" || status=1 ;;
        benchmark)
            "$python" tests/benchmarks/benchmark.py --devices cuda --budget 10 --readme --out "$out/benchmark-gpu.md" \
                2>&1 | tee "$out/benchmark.log" || status=1
            cp README.md "$out/README.md" ;;
        *)
            echo "unknown stage $stage (tests, chapters, random, benchmark)"; status=1 ;;
    esac
done
exit $status
