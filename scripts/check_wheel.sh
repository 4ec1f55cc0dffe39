#!/usr/bin/env bash
# Build the wheel (python -m build --wheel --no-isolation), install it into an empty target folder of
# another environment (no source tree on the path) and run its compiled ops there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
python -m build --wheel --no-isolation --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -50 "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/litesam_kernels-*.whl)"
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
python -m pip install -q --disable-pip-version-check --no-deps --target "$WORK/site" "$WHEEL" 2>&1 | grep -v "is ignored" || true
cd "$WORK"
PYTHONPATH="$WORK/site" TRITON_INTERPRET=1 python - <<'PY'
import torch
import litesam_kernels as lk
assert lk.__file__.startswith(__import__("os").environ["PYTHONPATH"]), lk.__file__
info = lk.backend_info()["extension"]
assert info["loaded"], info
boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
with lk.use_backend("cpu"):
    keep = lk.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
print("wheel OK:", lk.__file__, info)
PY
