#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (H100/H200) and torch/triton/nvcc already installed:
#   1. build the extension in place for this GPU;   2. run the tests (the `gpu`-marked ones included);
#   3. compute-sanitizer (memcheck, racecheck) on the CUDA kernels, where available;
#   4. the benchmark suite.   Logs and result rows go to $OUT (or the folder given as $1).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [--ops nms,...]
# Wheels of missing pure-Python packages (e.g. segment-anything) can be put in .whl/ beside the repo.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/benchmarks/results/local}}"
shift || true
mkdir -p "$OUT_DIR"
cd "$ROOT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0
step() { echo; echo "== $* =="; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/litesam_site .whl/*.whl && export PYTHONPATH="/tmp/litesam_site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
CAP="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$([ "$CAP" = "9.0" ] && echo 9.0a || echo "$CAP")}"
export MAX_JOBS="${MAX_JOBS:-16}"

step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! LITESAM_BUILD_CUDA=1 python3 setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  tail -40 "$OUT_DIR/build.log"; echo "BUILD FAILED"; exit 1
fi
python3 -c "import litesam_kernels as lk; print(lk.backend_info())" | tee "$OUT_DIR/backend_info.txt"

step "tests"
python3 -m pytest -q -p no:cacheprovider tests -x -rs > "$OUT_DIR/pytest.log" 2>&1 || status=1
tail -15 "$OUT_DIR/pytest.log"

if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer --tool $tool (gpu tests)"
    compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
      python3 -m pytest -q -p no:cacheprovider tests -m gpu -x > "$OUT_DIR/sanitizer_$tool.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|passed|failed" "$OUT_DIR/sanitizer_$tool.log" | tail -3
  done
else
  echo "compute-sanitizer not found: skipped"
fi

step "benchmarks"
python3 -m benchmarks --device cuda --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/benchmarks.log" || status=1
exit $status
