#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (H100/H200) and python3 with torch/triton/nvcc: fits in
# 9 minutes, in stages that each have a time limit and write their results as soon as they finish, so a run
# that is cut off still reports everything that ran.
#
#   env         GPU, driver, versions; wheels from .whl/ installed (scripts/build_device_wheels.sh makes them)
#   build       the extension built in place for this GPU (TORCH_CUDA_ARCH_LIST=9.0a on Hopper)
#   static      (in the background from here on) the static GPU report on the real build -> static/
#   gpu_tests   pytest -m gpu (also warms the Triton cache for the stages after it)
#   bench       python -m benchmarks --quick: every op's benchmark rows, with floors, and charts
#   memcheck, racecheck, initcheck, synccheck
#               compute-sanitizer on a subset of the gpu tests sized to the budget ($SANITIZER_TESTS)
#   full_suite  the whole test suite, with whatever time is left
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [--archive FILE] [--budget SECONDS] [--stages a,b,...]
#                                     [--ops nms,...] [--dry-run] [--selftest]
# OUT_DIR (default: benchmarks/results/local/gpu_check_<date>) gets one log per stage, summary.txt and
# summary.json (rewritten after every stage), the benchmark rows and charts, and the static report. With
# $OUT set (the device tool brings back at most 8 files from it), the results go to /tmp/gpu_check instead
# and are packed into $OUT/gpu_check.tar.gz after every stage, with summary.txt copied beside it;
# --archive FILE packs them anywhere. --dry-run prints the plan (stages, limits, commands) and runs nothing; --selftest runs the
# stage machinery on dummy commands (ok, failing, timed out, out of budget) and checks what it wrote.
# Limits: GPU_CHECK_BUDGET (total seconds, default 530), GPU_CHECK_LIMIT_<STAGE> (one stage's seconds),
# SANITIZER_TESTS (pytest arguments of the sanitizer subset).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PYTHON="${PYTHON:-python3}"

OUT_DIR="" ARCHIVE="" STAGES="" OPS="" DRY_RUN=0 SELFTEST=0
BUDGET="${GPU_CHECK_BUDGET:-530}"
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) ARCHIVE="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --ops) OPS="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --selftest) SELFTEST=1; shift ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR="$1"; shift ;;
  esac
done
if [ -z "$OUT_DIR" ]; then
  if [ -n "${OUT:-}" ]; then OUT_DIR="/tmp/gpu_check"; else OUT_DIR="$ROOT/benchmarks/results/local/gpu_check_$(date +%F)"; fi
fi
if [ -z "$ARCHIVE" ] && [ -n "${OUT:-}" ]; then ARCHIVE="$OUT/gpu_check.tar.gz"; fi

# The sanitizer subset: CUDA kernels first, then Triton ones, then the gpu-marked fuzz tests (with the 'sanitizer'
# hypothesis profile: a fifth of the ci examples, as the tools slow every launch 10-100x); each file only if it exists.
DEFAULT_SANITIZER_TESTS="tests/test_cuda_kernels.py tests/test_nms.py::TestNMSCuda tests/test_rle.py::TestMaskToRleGpu
  tests/test_mask_nms.py::TestMaskNmsGpu tests/test_ppn_decode.py::TestPPNDecodeGPU
  tests/test_fuzz_boxes.py tests/test_fuzz_masks.py tests/test_fuzz_ppn.py"
SANITIZER_TESTS="${SANITIZER_TESTS:-$(for t in $DEFAULT_SANITIZER_TESTS; do [ -e "${t%%::*}" ] && printf '%s ' "$t"; done)}"

# ------------------------------------------------------------------------------------------ the stages
# name | default limit in seconds | command (run by bash -c in the repository root, output to <name>.log)
PYTEST="$PYTHON -m pytest -q -p no:cacheprovider -rfE"
SANITIZE="HYPOTHESIS_PROFILE=sanitizer PYTORCH_NO_CUDA_MEMORY_CACHING=1 \"\$SANITIZER\" --error-exitcode 99 --print-limit 20 --target-processes all"
# The op benchmarks first (quick, and the ones never yet run on a GPU), then the pipelines, so that a
# stage cut off at its limit still has every op's rows (the suite writes them after every benchmark).
OP_BENCHMARKS="nms,mask_nms,mask_postprocess,rle,small_regions,ppn_decode"
STAGE_TABLE="$(cat <<EOF
env|15|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; $PYTHON -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability()); print("triton", triton.__version__)'; echo "wheels: \${WHEELS:-none}"; echo "compute-sanitizer: \${SANITIZER:-not found}"
build|130|LITESAM_BUILD_CUDA=1 $PYTHON setup.py build_ext --inplace && $PYTHON -c 'import litesam_kernels as lk; i = lk.backend_info()["extension"]; print(i); assert i["cuda"], "extension built without CUDA"'
static|120|TRITON_INTERPRET=0 $PYTHON -m benchmarks.static_gpu_report --out "\$RESULTS/static" --jobs 6
gpu_tests|110|$PYTEST -m gpu tests
bench|100|$PYTHON -m benchmarks --device cuda --quick --out "\$RESULTS/bench" --ops "\$BENCH_OPS"
memcheck|45|$SANITIZE --tool memcheck $PYTEST -x -m gpu -k 'not 64k and not 70000 and not more_than_65535' \$SANITIZER_TESTS
racecheck|35|$SANITIZE --tool racecheck $PYTEST -x -m gpu -k 'not 64k and not 70000 and not more_than_65535' \$SANITIZER_TESTS
initcheck|35|$SANITIZE --tool initcheck $PYTEST -x -m gpu -k 'not 64k and not 70000 and not more_than_65535' \$SANITIZER_TESTS
synccheck|30|$SANITIZE --tool synccheck $PYTEST -x -m gpu -k 'not 64k and not 70000 and not more_than_65535' \$SANITIZER_TESTS
full_suite|0|$PYTHON -m pytest -p no:cacheprovider -rfE -v tests
EOF
)"
BACKGROUND_STAGES="static"  # CPU-bound: runs beside the GPU stages, from the end of the build on
MIN_STAGE_SECONDS=10        # a stage with less time than this left is skipped
RESERVE_SECONDS=8           # kept back at the end for the summary and the archive

if [ "$SELFTEST" = 1 ]; then  # about 10 s: every status the machinery can write
  BUDGET="${GPU_CHECK_BUDGET:-10}" MIN_STAGE_SECONDS=2 RESERVE_SECONDS=1
  STAGE_TABLE="ok|5|echo fine
fails|5|echo broken >&2; exit 3
slow|1|sleep 5
background|3|sleep 1; echo later
rest|0|sleep 30
late|5|echo never"
  BACKGROUND_STAGES="background"
fi

# ------------------------------------------------------------------------------------------ machinery
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( BUDGET - $(elapsed) - RESERVE_SECONDS )); }
is_background() { case " $BACKGROUND_STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
wanted() { [ -z "$STAGES" ] && return 0; case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
limit_of() {  # stage default -> seconds (GPU_CHECK_LIMIT_<STAGE> overrides; 0 = whatever remains)
  local var="GPU_CHECK_LIMIT_$(echo "$1" | tr '[:lower:]' '[:upper:]')"
  echo "${!var:-$2}"
}

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check plan: budget ${BUDGET}s (the device allows 9 min = 540 s), results in $OUT_DIR${ARCHIVE:+, packed into $ARCHIVE}"
  total=0
  while IFS='|' read -r name limit command; do
    wanted "$name" || continue
    limit=$(limit_of "$name" "$limit")
    if is_background "$name"; then where="background"; else where="foreground"; [ "$limit" != 0 ] && total=$(( total + limit )); fi
    printf 'stage %-11s limit %5s  %-10s %s\n' "$name" "$([ "$limit" = 0 ] && echo rest || echo "${limit}s")" "$where" "$command"
  done <<< "$STAGE_TABLE"
  echo "foreground limits: ${total}s of ${BUDGET}s; the last stage with limit 'rest' gets what is left"
  echo "sanitizer subset: ${SANITIZER_TESTS:-none found}"
  exit 0
fi

RESULTS="$OUT_DIR"
mkdir -p "$RESULTS"
[ -n "$ARCHIVE" ] && mkdir -p "$(dirname "$ARCHIVE")"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
echo "[]" > "$RESULTS/summary.json"
export RESULTS SANITIZER_TESTS
OVERALL=0 LAST_STATUS=""

record() {  # name status seconds limit detail: append to summary.txt and summary.json, re-pack the archive
  local name="$1" status="$2" seconds="$3" limit="$4" detail="$5"
  printf '%-11s %-8s %4ss / %4ss  %s\n' "$name" "$status" "$seconds" "$limit" "$detail" | tee -a "$SUMMARY"
  NAME="$name" STATUS="$status" SECONDS_="$seconds" LIMIT="$limit" DETAIL="$detail" "$PYTHON" - "$RESULTS/summary.json" <<'PY' 2>/dev/null || true
import json, os, sys
path = sys.argv[1]
rows = json.load(open(path))
rows.append({"stage": os.environ["NAME"], "status": os.environ["STATUS"], "seconds": int(os.environ["SECONDS_"]),
             "limit": int(os.environ["LIMIT"]), "detail": os.environ["DETAIL"]})
json.dump(rows, open(path, "w"), indent=1)
PY
  case "$status" in ok|skipped) ;; *) OVERALL=1 ;; esac
  LAST_STATUS="$status"
  pack
}

pack() {
  if [ -n "$ARCHIVE" ]; then
    tar czf "$ARCHIVE.tmp" -C "$RESULTS" . 2>/dev/null && mv "$ARCHIVE.tmp" "$ARCHIVE"
    [ "$(dirname "$ARCHIVE")" != "$RESULTS" ] && cp "$SUMMARY" "$(dirname "$ARCHIVE")/summary.txt" 2>/dev/null
  fi
  return 0
}

detail_of() {  # name log -> one line: what the stage found
  local name="$1" log="$2"
  case "$name" in
    *check) grep -h "ERROR SUMMARY" "$log" | sort | uniq -c | tr -s ' ' | paste -sd';' - | cut -c1-200
            grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$log" | tail -1 | cut -c1-160 ;;
    *tests|full_suite) grep -E "[0-9]+ (passed|failed|error)|no tests ran" "$log" | tail -1 | cut -c1-200
            [ "$name" = full_suite ] && echo "$(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed so far" ;;
    static) grep -E "gate failure" "$log" | tail -1 | cut -c1-200 ;;
    bench) grep -E "ERROR|rows written" "$log" | tail -2 | cut -c1-200 ;;
    *) tail -1 "$log" | cut -c1-200 ;;
  esac | paste -sd' ' -
}

run_stage() {  # name limit command: the stage in the foreground, within its limit and the budget
  local name="$1" limit="$2" command="$3" left start rc status
  left=$(remaining)
  if [ "$left" -lt "$MIN_STAGE_SECONDS" ]; then record "$name" skipped 0 0 "out of budget (${left}s left)"; return; fi
  if [ "$limit" = 0 ] || [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo; echo "== $name (limit ${limit}s) =="
  start=$(date +%s)
  timeout --kill-after=5 "$limit" bash -c "$command" > "$RESULTS/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=TIMEOUT ;; *) status="FAILED($rc)" ;; esac
  record "$name" "$status" $(( $(date +%s) - start )) "$limit" "$(detail_of "$name" "$RESULTS/$name.log")"
  tail -5 "$RESULTS/$name.log"
}

declare -A BG_PID BG_START BG_LIMIT
start_background() {  # name limit command
  local name="$1" limit="$2" command="$3" left
  left=$(remaining)
  if [ "$left" -lt "$MIN_STAGE_SECONDS" ]; then record "$name" skipped 0 0 "out of budget (${left}s left)"; return; fi
  if [ "$limit" = 0 ] || [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo; echo "== $name (background, limit ${limit}s) =="
  (timeout --kill-after=5 "$limit" bash -c "$command" > "$RESULTS/$name.log" 2>&1; echo "$? $(date +%s)" > "$RESULTS/.$name.rc") &
  BG_PID[$name]=$! BG_START[$name]=$(date +%s) BG_LIMIT[$name]=$limit
}

collect_background() {  # record background stages that finished (all of them, waiting, with "wait")
  local name rc end status
  for name in "${!BG_PID[@]}"; do
    if [ "${1:-}" = wait ]; then wait "${BG_PID[$name]}" 2>/dev/null; fi
    [ -e "$RESULTS/.$name.rc" ] || continue
    read -r rc end < "$RESULTS/.$name.rc"; rm -f "$RESULTS/.$name.rc"
    case $rc in 0) status=ok ;; 124|137) status=TIMEOUT ;; *) status="FAILED($rc)" ;; esac
    record "$name" "$status" $(( end - BG_START[$name] )) "${BG_LIMIT[$name]}" "$(detail_of "$name" "$RESULTS/$name.log")"
    unset "BG_PID[$name]"
  done
}

# ------------------------------------------------------------------------------------------ setup
WHEELS=""
if [ "$SELFTEST" = 0 ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/litesam_site .whl/*.whl \
    && export PYTHONPATH="/tmp/litesam_site${PYTHONPATH:+:$PYTHONPATH}" && WHEELS="$(ls .whl | paste -sd' ' -)"
fi
SANITIZER="$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null || true)"
BENCH_OPS="${OPS:-$("$PYTHON" -c "from benchmarks.__main__ import available_suites
first = '$OP_BENCHMARKS'.split(','); rest = [s for s in available_suites() if s not in first]
print(','.join([s for s in first if s in available_suites()] + rest))" 2>/dev/null || echo "$OP_BENCHMARKS")}"
export WHEELS SANITIZER BENCH_OPS
if [ "$SELFTEST" = 0 ]; then
  CAP="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo none)"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$([ "$CAP" = "9.0" ] && echo 9.0a || echo "$CAP")}"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
fi
echo "gpu_check: budget ${BUDGET}s, results in $RESULTS${ARCHIVE:+ (packed into $ARCHIVE)}"

# ------------------------------------------------------------------------------------------ run
while IFS='|' read -r name limit command; do
  wanted "$name" || continue
  collect_background
  limit=$(limit_of "$name" "$limit")
  if [ "$SELFTEST" = 0 ] && [[ "$name" == *check ]] && [ -z "$SANITIZER" ]; then
    record "$name" skipped 0 0 "compute-sanitizer not found"; continue
  fi
  if [ "$SELFTEST" = 0 ] && [[ "$name" == *check ]] && [ -z "$SANITIZER_TESTS" ]; then
    record "$name" skipped 0 0 "no sanitizer test files found"; continue
  fi
  if is_background "$name"; then start_background "$name" "$limit" "$command"; else run_stage "$name" "$limit" "$command"; fi
  if [ "$name" = build ] && [ "$LAST_STATUS" != ok ]; then
    echo "BUILD FAILED: the later stages need the extension"; collect_background wait; break
  fi
done <<< "$STAGE_TABLE"
collect_background wait

echo; echo "== summary ($(elapsed)s of ${BUDGET}s) =="
cat "$SUMMARY"
pack
exit $OVERALL
