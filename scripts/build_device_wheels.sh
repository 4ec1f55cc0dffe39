#!/usr/bin/env bash
# Wheels of the pure-Python packages the tests need that the GPU machine's image lacks (segment-anything,
# sam2 and their dependencies, pycocotools), at the versions installed in this environment, into .whl/
# (git-ignored). The device machine cannot reach a registry: carry the folder (device run: carry [".whl"])
# and benchmarks/gpu_check.sh installs it with pip --no-index --no-deps --target.
#
# Usage: bash scripts/build_device_wheels.sh [--dry-run] [DIR]   (run inside the project's .venv)
# Binary wheels are downloaded for CPython 3.12 on manylinux x86-64 (the device's python3); packages that
# publish only a source archive (sam2, antlr4-python3-runtime, iopath) are built here into wheels, sam2
# without its CUDA extension (SAM2_BUILD_CUDA=0; the project does not use sam2._C).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0 DIR="$ROOT/.whl"
for arg in "$@"; do
  case "$arg" in --dry-run) DRY_RUN=1 ;; -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;; *) DIR="$arg" ;; esac
done
PYTHON="${PYTHON:-python}"
# The packages, as pip names them; missing from the device image per .library/device/KINDS.md.
PACKAGES="segment-anything sam2 hydra-core omegaconf antlr4-python3-runtime iopath pycocotools"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

pins="$("$PYTHON" - $PACKAGES <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"{name} is not installed here: install the project's environment first (scripts/setup_env.sh)")
PY
)"
echo "wheels for the device into $DIR:"
echo "$pins" | sed 's/^/  /'
[ "$DRY_RUN" = 1 ] && exit 0

mkdir -p "$DIR"
for pin in $pins; do
  name="${pin%%==*}"
  stem="$(echo "$name" | tr '-' '_')"
  if ls "$DIR" 2>/dev/null | grep -qi "^${stem}-"; then echo "have $pin"; continue; fi
  # shellcheck disable=SC2086
  if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
       -d "$DIR" "$pin" 2>/dev/null; then
    echo "downloaded $pin"
  else
    SAM2_BUILD_CUDA=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$pin"
    echo "built $pin"
  fi
done
echo "$(ls "$DIR"/*.whl | wc -l) wheel(s), $(du -sh "$DIR" | cut -f1) (the device's working tree limit is 64 MiB)"
