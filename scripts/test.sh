#!/usr/bin/env bash
# Set up .venv (scripts/setup_env.sh) and run the test suite. Extra arguments go to pytest.
# Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1) and `gpu` tests are skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if ! python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1  # must be set before anything imports triton
fi
python -m pytest -q -p no:cacheprovider tests "$@"
