#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned environment and build litesam_kernels into it.
# Idempotent: a second run only rebuilds what changed. Source it or run it; it never deletes .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LITESAM_VENV:-$ROOT/.venv}"

find_python312() {
  for candidate in python3.12 "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/$(pyenv versions --bare 2>/dev/null | grep '^3\.12' | tail -1)/bin/python3")"; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo python3  # another Python 3 still works; 3.12 is what the GPU machines run
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python312)"
  echo "[setup] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.litesam_requirements"
if ! cmp -s "$ROOT/requirements/dev.txt" "$STAMP" 2>/dev/null; then
  echo "[setup] installing requirements/dev.txt (about 3 GB the first time)"
  python -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/dev.txt" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  python -c "import torch, triton, torchvision" # fail here, loudly, if the install did not work
  cp "$ROOT/requirements/dev.txt" "$STAMP"
fi
SAM2_STAMP="$VENV/.litesam_requirements_sam2"
if ! cmp -s "$ROOT/requirements/sam2.txt" "$SAM2_STAMP" 2>/dev/null; then
  echo "[setup] installing requirements/sam2.txt (sam2 without its CUDA extension)"
  SAM2_BUILD_CUDA=0 python -m pip install -q --disable-pip-version-check --no-build-isolation -r "$ROOT/requirements/sam2.txt" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  python -c "import sam2.build_sam"
  cp "$ROOT/requirements/sam2.txt" "$SAM2_STAMP"
fi

# torch would guess CUDA_HOME=/usr/local from /usr/local/bin/nvcc (no headers there).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
# Without a GPU torch cannot pick an arch; sm_90a (H100/H200) is what CI compiles and checks.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && ! python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TORCH_CUDA_ARCH_LIST="9.0a"
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
cd "$ROOT"
# Rebuild only when the editable install is missing or a source is newer than the built extension.
SO="$(ls litesam_kernels/_C*.so 2>/dev/null | head -1 || true)"
if [ -z "$SO" ] || ! python -m pip show -q litesam_kernels >/dev/null 2>&1 \
   || [ -n "$(find csrc python setup.py pyproject.toml -newer "$SO" -type f 2>/dev/null | head -1)" ]; then
  echo "[setup] building litesam_kernels (CUDA_HOME=${CUDA_HOME:-none}, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto})"
  python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
fi
python -c "import litesam_kernels as lk; ext = lk.backend_info()['extension']; print('[setup] extension:', 'loaded, CUDA' if ext['cuda'] else ('loaded, CPU only' if ext['loaded'] else 'NOT loaded: ' + str(ext['error'])))"
