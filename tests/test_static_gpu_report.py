"""The static GPU report (benchmarks/static_gpu_report.py, benchmarks/sass.py): parsing of cuobjdump's
listings, sm_90 occupancy, the CI gate's logic, and the whole path on small synthetic kernels compiled here
(a Triton kernel with a forced spill, fp32-ieee / tf32 / bf16 dot kernels, CUDA kernels that spill or keep a
run-time-indexed array). Compiling needs TRITON_INTERPRET=0, so those tests run a subprocess."""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import sass
from benchmarks.static_gpu_report import (KernelReport, _short_cuda_name, judge, parse_ptxas_spills,
                                          parse_ttir_dots)

ROOT = Path(__file__).resolve().parents[1]
HAS_CUOBJDUMP = sass.tool("cuobjdump") is not None
needs_cuobjdump = pytest.mark.skipif(not HAS_CUOBJDUMP, reason="cuobjdump not found (triton wheel)")

RES_USAGE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,7]
identifier = /src/csrc/cuda/a_kernel.cu

Resource usage:
 Common:
  GLOBAL:0
 Function _Z3fooPf:
  REG:99 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:544 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90a
code version = [1,8]
identifier = /src/csrc/cuda/a_kernel.cu

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function _Z3fooPf:
  REG:40 STACK:16 SHARED:11784 LOCAL:8 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z3barPf:
  REG:28 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:568 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
\tcode for sm_90
\t.target\tsm_90a

\t\tFunction : _Z3fooPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;          /* 0x0000000402047981 */
        /*0020*/               @P0 LDG.E.U8 R6, desc[UR4][R2.64+0x10] ;      /* 0x0000100402060981 */
        /*0030*/              @!PT LDG.E.64.CONSTANT R8, desc[UR4][R2.64] ;  /* 0x0000000402087981 */
        /*0040*/                   LDG.E R9, desc[UR4][R2.64] ;              /* 0x0000000402097981 */
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;
        /*0060*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0070*/                   POPC R3, R2 ;
        /*0080*/                   ATOMS.ADD RZ, [R3], R2 ;
        /*0090*/                   REDG.E.ADD.STRONG.GPU desc[UR4][R2.64], R5 ;
        /*00a0*/                   STL [R1], R4 ;
        /*00b0*/                   LDL.LU R4, [R1] ;
        /*00c0*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*00d0*/                   CALL.REL.NOINC `($_Z3fooPf$__internal_udiv) ;
        /*00e0*/                   EXIT ;
\t\tFunction : _Z3barPf
        /*0000*/                   EXIT ;
"""

ELF = """
.nv.info._Z3fooPf
\t<0x1>
\tAttribute:\tEIATTR_MAXREG_COUNT
\tFormat:\tEIFMT_HVAL
\tValue:\t0x80
\t<0x2>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x80 0x1 0x1
.nv.info._Z3barPf
\tAttribute:\tEIATTR_REQNTID
\tFormat:\tEIFMT_SVAL
\tValue:\t0x20 0x2 0x1
.nv.info._Z3bazPf
\tAttribute:\tEIATTR_REGCOUNT
\tFormat:\tEIFMT_SVAL
\tValue:\t0x1 0x20
"""


# ------------------------------------------------------------------------------------------ parsing
def test_resource_usage_takes_sm90a_and_the_source_file():
    usage = sass.parse_resource_usage(RES_USAGE)
    assert set(usage) == {"_Z3fooPf", "_Z3barPf"}
    assert usage["_Z3fooPf"] == sass.Resources(40, 16, 11784, 8, "/src/csrc/cuda/a_kernel.cu")
    assert sass.parse_resource_usage(RES_USAGE, arch="sm_80")["_Z3fooPf"].registers == 99


def test_pick_arch_prefers_sm90a_then_sm90():
    assert sass.pick_arch(["sm_80", "sm_90", "sm_90a"]) == "sm_90a"
    assert sass.pick_arch(["sm_80", "sm_90"]) == "sm_90"
    assert sass.pick_arch(["sm_86"]) == "sm_86"
    assert sass.pick_arch([]) is None


def test_sass_opcodes_and_classes():
    opcodes = sass.parse_sass(SASS)
    assert set(opcodes) == {"_Z3fooPf", "_Z3barPf"}
    foo = opcodes["_Z3fooPf"]
    assert foo["LDG.E.U8"] == 1 and foo["LDG.E.64.CONSTANT"] == 1  # predicated lines count too
    classes = sass.instruction_classes(foo)
    assert classes["total"] == 15
    widths = (classes["ldg"], classes["ldg_128"], classes["ldg_64"], classes["ldg_32"], classes["ldg_narrow"])
    assert widths == (4, 1, 1, 1, 1)
    assert (classes["gmma"], classes["mma"], classes["popc"]) == (1, 1, 1)
    assert (classes["atomic_shared"], classes["atomic_global"], classes["atomic_generic"]) == (1, 1, 0)
    assert (classes["local_load"], classes["local_store"], classes["stg_128"], classes["call"]) == (1, 1, 1, 1)
    assert sass.tensor_core_opcodes(foo) == ["HGMMA.64x64x16.F32.BF16", "HMMA.16816.F32.BF16"]
    bar = sass.instruction_classes(opcodes["_Z3barPf"])
    assert bar["total"] == 1 and bar["mma"] == bar["gmma"] == bar["ldg"] == 0


def test_block_size_from_launch_bounds_or_reqntid():
    assert sass.parse_max_threads(ELF) == {"_Z3fooPf": 128, "_Z3barPf": 64}


def test_ttir_dots_precision_and_operand_type():
    ttir = """
    %4 = tt.dot %a, %b, %cst : tensor<64x64xf32> * tensor<64x64xf32> -> tensor<64x64xf32> loc(#loc1)
    %5 = tt.dot %a, %b, %cst, inputPrecision = tf32 : tensor<128x32xbf16> * tensor<32x64xbf16> -> tensor<128x64xf32>
    %6 = tt.load %p : tensor<64x!tt.ptr<f32>>
    """
    assert parse_ttir_dots(ttir) == [{"precision": "ieee", "operand": "f32"}, {"precision": "tf32", "operand": "bf16"}]
    assert parse_ttir_dots("%6 = tt.load %p") == []


def test_ptxas_spill_bytes():
    log = ("ptxas info    : Function properties for k\n    504 bytes stack frame, 924 bytes spill stores, "
           "1080 bytes spill loads\nptxas info    : Used 255 registers")
    assert parse_ptxas_spills(log) == (924, 1080)
    assert parse_ptxas_spills("") == (None, None)


def test_short_cuda_names():
    assert _short_cuda_name("void litesam::(anonymous namespace)::nms_mask_kernel<float>(long, long, float const*)") \
        == "nms_mask_kernel<float>"
    assert _short_cuda_name("litesam::(anonymous namespace)::labels_kernel(litesam::(anonymous namespace)::G, int*)") \
        == "labels_kernel"
    assert _short_cuda_name("spill(float*, float const*, int)") == "spill"


# ------------------------------------------------------------------------------------------ occupancy
@pytest.mark.parametrize("registers, shared, threads, blocks, warps, limiter", [
    (32, 0, 256, 8, 64, "warps"),            # full: 64 warps
    (255, 0, 128, 2, 8, "registers"),        # 256 regs/thread after rounding: 8 warps of registers
    (40, 0, 256, 6, 48, "registers"),        # 40*32 = 1280 regs per warp -> 51 warps -> 6 blocks of 8
    (16, 100 * 1024, 128, 2, 8, "shared"),   # 101 KB per block with the runtime's 1 KB
    (16, 0, 32, 32, 32, "blocks"),           # 32 blocks per SM at most
    (16, 0, 1024, 2, 64, "warps"),
    (16, 228 * 1024, 128, 0, 0, "cannot launch"),  # above the 227 KB opt-in limit
    (16, 0, 2048, 0, 0, "cannot launch"),
])
def test_sm90_occupancy(registers, shared, threads, blocks, warps, limiter):
    occ = sass.occupancy(registers, shared, threads)
    assert (occ["blocks_per_sm"], occ["warps_per_sm"], occ["limiter"]) == (blocks, warps, limiter)


# ------------------------------------------------------------------------------------------ the gate
def _report(**kwargs) -> KernelReport:
    instructions = {k: 0 for k in sass.instruction_classes(Counter())}
    instructions.update(kwargs.pop("instructions", {}))
    base = dict(source="triton", module="m", kernel="k", registers=64, shared_bytes=0, threads_per_block=128,
                blocks_per_sm=8, warps_per_sm=32, occupancy_limiter="registers", instructions=instructions)
    base.update(kwargs)
    return KernelReport(**base)


def test_gate_passes_a_clean_kernel():
    r = judge(_report())
    assert r.failures == [] and r.warnings == []


@pytest.mark.parametrize("kwargs", [dict(stack_bytes=16), dict(local_bytes=8), dict(instructions={"local_load": 3}),
                                    dict(spill_store_bytes=4, spill_load_bytes=4)])
def test_gate_fails_on_local_memory(kwargs):
    r = judge(_report(**kwargs))
    assert len(r.failures) == 1 and r.failures[0].startswith("local memory")


def test_gate_fails_on_a_dot_without_tensor_cores():
    for operand, precision in (("f16", "tf32"), ("bf16", "tf32"), ("f32", "tf32"), ("f32", "tf32x3")):
        r = judge(_report(dots=[{"precision": precision, "operand": operand}]))
        assert r.failures == [f"tl.dot without tensor-core instructions ({operand} {precision})"]


def test_exact_fp32_dot_is_a_warning_unless_strict():
    exact = [{"precision": "ieee", "operand": "f32"}, {"precision": "ieee", "operand": "f64"}]
    r = judge(_report(dots=exact))
    assert r.failures == [] and "FMA units by request" in r.warnings[0]
    assert "FMA units by request" in judge(_report(dots=exact), strict_fp32=True).failures[0]
    mixed = exact + [{"precision": "tf32", "operand": "f32"}]  # one dot could use tensor cores: a failure
    assert judge(_report(dots=mixed)).failures


def test_dot_on_mma_sync_only_is_a_warning():
    r = judge(_report(dots=[{"precision": "tf32", "operand": "bf16"}], instructions={"mma": 4}))
    assert r.failures == [] and "HMMA" in r.warnings[0]
    assert judge(_report(dots=[{"precision": "tf32", "operand": "bf16"}], instructions={"gmma": 4})).warnings == []


def test_gate_fails_when_a_block_cannot_launch_and_warns_on_guesses():
    assert judge(_report(blocks_per_sm=0, warps_per_sm=0, occupancy_limiter="cannot launch")).failures
    r = judge(_report(source="cuda", threads_known=False, warps_per_sm=4, occupancy_limiter="shared"))
    assert r.failures == [] and len(r.warnings) == 2


# ------------------------------------------------------------------------------------------ compiled kernels
SYNTHETIC_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def spill_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + r[:, None] * BLOCK + r[None, :])
    z = tl.load(x_ptr + BLOCK * BLOCK + r[:, None] * BLOCK + r[None, :])
    y = tl.sum(tl.exp(x) * tl.log(z + 2.0), axis=1) + tl.sum(tl.sqrt(x * z + 1.0), axis=0)
    tl.store(y_ptr + r, y)


@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, PREC: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :])
    b = tl.load(b_ptr + r[:, None] * BLOCK + r[None, :])
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, b, input_precision=PREC))


@triton.jit
def uncovered_kernel(x_ptr):
    tl.store(x_ptr, 1.0)


def _dot(dtype, precision, block):
    sig = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "c_ptr": "*fp32", "PREC": "constexpr", "BLOCK": "constexpr"}
    return (dot_kernel, sig, {"PREC": precision, "BLOCK": block}, {"num_warps": 4})


AOT_KERNELS = [
    (spill_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 128},
     {"num_warps": 4, "maxnreg": 32}),                      # 0: forced spill: 2 x 128 values per thread
    (spill_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 64}, {"num_warps": 4}),
    _dot("fp32", "ieee", 32),                               # 2: exact fp32: FMA, no tensor cores
    _dot("fp32", "tf32", 64),                               # 3: wgmma
    _dot("bf16", "tf32", 32),                               # 4: too small for wgmma: mma.sync
    (dot_kernel, {"a_ptr": "*fp16", "c_ptr": "*fp32", "PREC": "constexpr", "BLOCK": "constexpr"},
     {"PREC": "tf32", "BLOCK": 32}, {"num_warps": 4}),      # 5: a broken signature: a compile failure
]
'''

DRIVER = '''
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import triton
from litesam_kernels.triton import aot
from benchmarks import static_gpu_report as report

synthetic = importlib.import_module("synthetic_kernels")


def synthetic_entries(name):  # what aot.module_entries gives for a real kernel module
    entries = [aot.AotEntry(name, i, k, dict(s), dict(c), dict(o))
               for i, (k, s, c, o) in enumerate(synthetic.AOT_KERNELS)]
    jitted = {n for n, v in vars(synthetic).items() if isinstance(v, triton.runtime.JITFunction)}
    return entries, sorted(jitted - {e.name for e in entries})


aot.kernel_modules = lambda wanted=(): ["synthetic"]
aot.module_entries = synthetic_entries
reports, failures = report.triton_reports(progress=lambda line: None)
data = report.build_report(reports, failures, extension=None, arch=90, strict_fp32=False, seconds=0.0)
print("JSON" + json.dumps(data))
'''


def _run_python(code: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(cwd / "triton_cache"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_cuobjdump
def test_synthetic_triton_kernels_through_the_report(tmp_path):
    (tmp_path / "synthetic_kernels.py").write_text(SYNTHETIC_KERNELS)
    done = _run_python(DRIVER, str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout.split("JSON", 1)[1])
    by_variant = {i: k for i, k in enumerate(data["kernels"])}
    assert len(data["kernels"]) == 5  # entry 5 failed to compile

    spilled, clean = by_variant[0], by_variant[1]
    assert spilled["registers"] <= 32 and spilled["stack_bytes"] > 0 and spilled["spill_store_bytes"] > 0
    assert spilled["instructions"]["local_store"] > 0 and spilled["failures"][0].startswith("local memory")
    assert clean["stack_bytes"] == 0 and clean["failures"] == [] and clean["spill_store_bytes"] == 0

    ieee, tf32, bf16 = by_variant[2], by_variant[3], by_variant[4]
    assert ieee["dots"] == [{"precision": "ieee", "operand": "f32"}] and ieee["tensor_core_opcodes"] == []
    assert ieee["failures"] == [] and "by request" in ieee["warnings"][0]
    assert any(o.startswith("HGMMA") for o in tf32["tensor_core_opcodes"])
    assert tf32["failures"] == tf32["warnings"] == []
    assert any(o.startswith("HMMA") for o in bf16["tensor_core_opcodes"]) and "HMMA" in bf16["warnings"][0]
    assert tf32["threads_per_block"] == 128 and tf32["warps_per_sm"] > 0 and tf32["shared_bytes"] > 0

    failures = "\n".join(data["failures"])
    assert "uncovered_kernel: a @triton.jit kernel with no AOT_KERNELS entry" in failures
    assert "synthetic.dot_kernel" in failures and "local memory" in failures  # the compile failure, the spill
    assert data["summary"]["failures"] == 3 and data["summary"]["dot_kernels_with_tensor_cores"] == 2


CUDA_SOURCE = r'''
// 64 values live at once under a 32-register cap (__launch_bounds__(1024, 2)): ptxas must spill.
__global__ void __launch_bounds__(1024, 2) spill(float* out, const float* in, int n) {
  float a[64];
#pragma unroll
  for (int j = 0; j < 64; ++j) a[j] = in[j * n + threadIdx.x];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i)
#pragma unroll
    for (int j = 0; j < 64; ++j) s = fmaf(a[i], a[63 - j] * (float)(i ^ j), s);
  out[threadIdx.x] = s;
}
// A register array written and read at run-time indices lives in local memory.
__global__ void local_array(float* out, const float* in, int k) {
  float a[32];
  for (int i = 0; i < 32; ++i) a[i] = in[i * 32 + threadIdx.x];
  a[k & 31] += 1.0f;
  out[threadIdx.x] = a[(k + threadIdx.x) & 31];
}
__global__ void __launch_bounds__(128) vector_copy(float4* out, const float4* in) {
  out[blockIdx.x * 128 + threadIdx.x] = in[blockIdx.x * 128 + threadIdx.x];
}
'''


def _nvcc():
    found = shutil.which("nvcc")
    home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    return found or (str(home) if home.exists() else None)


@needs_cuobjdump
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_synthetic_cuda_kernels_through_the_report(tmp_path):
    from benchmarks.static_gpu_report import read_cuda_binary

    (tmp_path / "k.cu").write_text(CUDA_SOURCE)
    subprocess.run([_nvcc(), "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-o", str(tmp_path / "k.cubin"),
                    str(tmp_path / "k.cu")], check=True, capture_output=True, timeout=300)
    reports = {r.kernel: judge(r) for r in read_cuda_binary(str(tmp_path / "k.cubin"))}
    assert set(reports) == {"spill", "local_array", "vector_copy"}
    spill, local, copy = reports["spill"], reports["local_array"], reports["vector_copy"]
    assert spill.registers <= 32 and spill.stack_bytes > 0 and spill.threads_per_block == 1024
    assert spill.failures and spill.failures[0].startswith("local memory")
    assert local.stack_bytes > 0 and local.failures and not local.threads_known
    assert copy.failures == [] and copy.threads_known and copy.threads_per_block == 128
    assert copy.instructions["ldg_128"] == 1 and copy.instructions["stg_128"] == 1
    assert copy.warps_per_sm == 64


# ------------------------------------------------------------------------------------------ the command
def _cli(*args: str, cwd: Path, interpret: str = "0") -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET=interpret, TRITON_CACHE_DIR=str(cwd / "triton_cache"))
    return subprocess.run([sys.executable, "-m", "benchmarks.static_gpu_report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _extension_has_cuda() -> bool:
    from benchmarks.static_gpu_report import find_extension

    path = find_extension()
    if path is None or not HAS_CUOBJDUMP:
        return False
    return bool(sass.parse_resource_usage(sass.cuobjdump("-res-usage", str(path))))


@needs_cuobjdump
def test_command_writes_json_and_markdown_and_its_exit_status_is_the_gate(tmp_path):
    args = ["--out", str(tmp_path), "--modules", "rle", "--jobs", "1"]
    if not _extension_has_cuda():
        args += ["--only", "triton"]
    done = _cli(*args, cwd=tmp_path)
    data = json.loads((tmp_path / "static_gpu_report.json").read_text())
    assert done.returncode == (1 if data["failures"] else 0), done.stderr[-2000:]
    assert data["summary"]["triton"] == sum(k["module"] == "rle" for k in data["kernels"]) > 0
    assert data["summary"]["failures"] == len(data["failures"])
    markdown = (tmp_path / "static_gpu_report.md").read_text()
    assert "# Static GPU report" in markdown and "_rle_boundaries_kernel" in markdown
    if "--only" not in args:
        assert data["summary"]["cuda"] > 0 and "## CUDA kernels" in markdown


def test_command_refuses_to_compile_under_the_interpreter(tmp_path):
    done = _cli("--only", "triton", "--out", str(tmp_path), cwd=tmp_path, interpret="1")
    assert done.returncode == 2 and "TRITON_INTERPRET=0" in done.stderr
    assert not (tmp_path / "static_gpu_report.json").exists()


def test_the_kept_report_is_complete():
    """benchmarks/results/static/ holds the latest full report (CI rewrites it on every run)."""
    kept = ROOT / "benchmarks" / "results" / "static" / "static_gpu_report.json"
    data = json.loads(kept.read_text())
    assert data["summary"]["cuda"] > 0 and data["summary"]["triton"] > 0
    assert {k["source"] for k in data["kernels"]} == {"cuda", "triton"}
    assert data["arch"] == "sm_90a"
