#!/usr/bin/env bash
# Set up .venv (scripts/setup_env.sh) and run the benchmark suite on the GPU if there is one, else on
# the CPU at smaller sizes. Extra arguments go to `python -m benchmarks` (--ops, --quick, --out DIR).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m benchmarks "$@"
