"""Host time of the fused LiteViT path, kernel time excluded: per op call and per encoder forward.

At batch 1 on a GPU the host sets the pace unless the Python/torch work around each kernel is small, so this
suite measures exactly that work, on the CPU, with the GPU's kernel time taken out:

- Method: every Triton kernel object of ``litesam_kernels.triton`` is swapped for a stub whose launch
  (``kernel[grid](...)``) records the launch and returns at once. The launchers still run (output
  allocation, grid and block-size arithmetic, launch-configuration choice), so what is timed is everything
  the host does per call: custom-op dispatch, input validation, backend choice, BatchNorm folding, weight
  casts and layouts, output allocation, launch arguments. The Triton runtime's own per-launch cost (argument
  binding, cache lookup, ``cuLaunchKernel``) is not included: it is the same number of launches on every
  path (the check below), and CUDA graphs remove it too.
- Torch ops on the path run for real: the stem/downsampling convolutions and the attention projections
  (cuDNN/cuBLAS launches on a GPU). Their CPU kernels are made negligible with a tiny input (the default
  LiteViT config, its real depth and widths, on a 32^2 image: 2^2 tokens in stage 3) and one thread.
- Checked before timing: with the stubs recording, each path must launch the same kernels with the same
  grids, constexprs, scalars and tensor shapes/dtypes as today's path (a path doing less GPU work would
  look cheaper for the wrong reason); and with real (reference) kernels the outputs must agree.
- Clock: the calling thread's CPU time per call (``time.thread_time_ns``), collected while the harness's
  ``compare`` runs its timing loop (its checks and rows are reused; only the statistic's source changes).
  Host work is CPU work on that one thread (torch runs with one thread here), and CPU time does not count the
  time the thread waits for a core: on a shared 2-core machine wall time measures the scheduler instead.
- Rows: "custom ops (today)" is the fused path with folds per call on the custom ops (``prepared=False``,
  what every forward did before the prepared encoder); "prepared" the cached folds and direct launchers;
  "compiled" ``torch.compile(encoder, fullgraph=True)`` (folds in the graph, custom ops opaque);
  "prepared+compiled" ``encoder.compile_fused("default")`` (on a GPU ``"reduce-overhead"`` replays a CUDA
  graph instead: host time about zero). ``speedup`` is today's host time over the row's: >= 3 is the
  issue's target. Times are in the ``median_ms`` columns and in microseconds in the note.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import math
import os
import pkgutil
import statistics
import time
from typing import Callable, Dict, List

import torch

from benchmarks.harness import Implementation, Row, compare
from litesam_kernels import use_backend

IMAGE_SIZE = 32  # the default config's full depth on a tiny image: host work, not kernel work


# ------------------------------------------------------------------------------------ kernel stubs
class _StubKernel:
    """Stands in for a ``@triton.jit`` kernel: ``stub[grid](*args, **kwargs)`` records and returns."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self._log = name, log

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        self._log.append((self.name, grid, args, kwargs))


@contextlib.contextmanager
def stubbed_kernels():
    """Every Triton kernel of ``litesam_kernels.triton`` replaced by a stub; yields the launch log (a list)."""
    from triton.runtime.jit import KernelInterface

    import litesam_kernels.triton as kernels

    log: list = []
    swapped = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name.startswith("_") or info.name == "aot":
            continue
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for attr, value in list(vars(module).items()):
            if isinstance(value, KernelInterface):
                swapped.append((module, attr, value))
                setattr(module, attr, _StubKernel(f"{info.name}.{attr}", log))
    try:
        yield log
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)


@contextlib.contextmanager
def _host_only():
    """The custom ops take their Triton branch on CPU tensors (as on a GPU), every kernel a stub."""
    previous_env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # no kernel runs: every kernel is a stub
    try:
        with stubbed_kernels() as log, use_backend("triton"), torch.no_grad(), _one_thread():
            yield log
    finally:
        if previous_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous_env


def _signature(value):
    """What a launch argument means to the GPU: tensors by shape/stride/dtype, scalars by value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, float):
        return ("float", round(value, 6))
    if callable(value):
        return ("callable",)
    return value


def _launch_signatures(log) -> list:
    return [(name, _signature(grid), tuple(_signature(a) for a in args),
             tuple(sorted((k, _signature(v)) for k, v in kwargs.items()))) for name, grid, args, kwargs in log]


class _Launches:
    """The launches of one call, compared (by ``_same_launches``) only when the harness checks the output,
    so the timed calls pay for a list copy, not for the signatures."""

    def __init__(self, log: list) -> None:
        self.records = list(log)

    def signatures(self) -> list:
        return _launch_signatures(self.records)


def _logged(log: list, fn: Callable[[], object]) -> Callable[[], _Launches]:
    def run():
        log.clear()
        fn()
        return _Launches(log)
    return run


class _ThreadTimed:
    """``fn`` that keeps the calling thread's CPU time of every call (the harness times it by wall clock)."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn, self.samples_ns = fn, []

    def __call__(self):
        start = time.thread_time_ns()
        result = self.fn()
        self.samples_ns.append(time.thread_time_ns() - start)
        return result


def _host_compare(op, shape, dtype, device, baseline: Implementation, implementations: List[Implementation],
                  matches) -> List[Row]:
    """``harness.compare`` with each row's median/p20/p80 (and speedups) from the thread CPU times."""
    timed = {impl.name: _ThreadTimed(impl.fn) for impl in [baseline, *implementations]}
    rows = compare(op, shape, dtype, device, Implementation(baseline.name, timed[baseline.name]),
                   [Implementation(i.name, timed[i.name], i.skip_reason) for i in implementations], matches=matches)
    for row in rows:
        samples = sorted(timed[row.impl].samples_ns[2:])  # not the check call, not the warm-up call
        if row.median_ms is None or not samples:
            continue
        pick = lambda q: samples[min(len(samples) - 1, int(q * (len(samples) - 1) + 0.5))] / 1e6  # noqa: E731
        row.median_ms, row.p20_ms, row.p80_ms = statistics.median(samples) / 1e6, pick(0.2), pick(0.8)
    base = rows[0].median_ms
    for row in rows:
        row.baseline_median_ms = base
        if row.median_ms:
            row.speedup = base / row.median_ms
    return rows


@contextlib.contextmanager
def _one_thread():
    """One torch thread, and denormals flushed: the stubbed kernels leave their outputs uninitialised, and the
    real torch ops downstream would otherwise hit the CPU's (100x slower) denormal paths at random."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushing:
            torch.set_flush_denormal(False)


def _same_launches(got: _Launches, expected: _Launches) -> bool:
    return len(expected.records) > 0 and got.signatures() == expected.signatures()


def _note_us(rows: List[Row], launches: int, extra: str = "") -> List[Row]:
    for row in rows:
        if row.median_ms:
            row.note = f"host {row.median_ms * 1e3:.1f} us, {launches} kernel launches" + \
                (f"; {extra}" if extra else "")
    return rows


# ------------------------------------------------------------------------------------ per op call
def _op_cases(dtype) -> Dict[str, tuple]:
    """(custom-op call, direct-launcher call, torch eager equivalent) per LiteViT op, on tiny NHWC tensors."""
    from litesam_kernels import ops
    from litesam_kernels.model import fused_ops as fo
    from litesam_kernels.model.litevit import LayerNorm2d, PoolMixerBlock, PooledKVAttention
    from litesam_kernels.model.litevit_fused import Folds

    torch.manual_seed(0)
    folds = Folds(dtype, launcher_layouts=True)
    block = PoolMixerBlock(32, (3, 5, 7), 4.0).eval().to(dtype)
    attn = PooledKVAttention(128, 4, (2, 4)).eval().to(dtype)
    ln = LayerNorm2d(128).to(dtype)
    x32 = torch.randn(1, 8, 8, 32, dtype=dtype)
    x128 = torch.randn(1, 4, 4, 128, dtype=dtype)
    bn = folds.batch_norm(block.norm1, x32)
    mlp = folds.conv_mlp(block.mlp, x32, batch_norm=block.norm2)
    taps = torch.randn(128, 3, 3, dtype=dtype)
    dw = fo.DepthwiseWeights(taps.float(), torch.zeros(128), taps.float().reshape(128, 9).t().contiguous())
    lnw = folds.layer_norm(ln)
    q, kv, proj = folds.linear(attn.q), folds.linear(attn.kv), folds.linear(attn.proj)
    d = 32
    qh = torch.randn(1, 16, 4, d, dtype=dtype)
    kh = torch.randn(1, 5, 4, d, dtype=dtype)
    scale = 1.0 / math.sqrt(d)
    x32_nchw, x128_nchw = x32.permute(0, 3, 1, 2), x128.permute(0, 3, 1, 2)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    return {
        "pool_mixer": (lambda: ops.pool_mixer(x32, bn.scale, bn.shift, (3, 5, 7)),
                       lambda: fo.TritonOps.pool_mixer(x32, bn, (3, 5, 7)),
                       lambda: x32_nchw + block.mixer(block.norm1(x32_nchw))),
        "conv_mlp + BN fold (pool-mixer MLP)": (
            lambda: ops.conv_mlp(x32, *ops.fold_batchnorm_into_linear(fc1.weight[:, :, 0, 0], fc1.bias, bn.scale,
                                                                       bn.shift), fc2.weight[:, :, 0, 0], fc2.bias,
                                 residual=x32),
            lambda: fo.TritonOps.conv_mlp(x32, mlp, residual=x32),
            lambda: x32_nchw + block.mlp(block.norm2(x32_nchw))),
        "dwconv_act 3x3": (lambda: ops.dwconv_act(x128, taps, torch.zeros(128, dtype=dtype), "gelu", True),
                           lambda: fo.TritonOps.dwconv(x128, dw, "gelu", True),
                           lambda: x128_nchw + torch.nn.functional.gelu(
                               torch.nn.functional.conv2d(x128_nchw, taps[:, None], padding=1, groups=128))),
        "layer_norm2d": (lambda: ops.layer_norm2d(x128, ln.weight, ln.bias, ln.eps),
                         lambda: fo.TritonOps.layer_norm(x128, lnw),
                         lambda: torch.nn.functional.layer_norm(x128, (128,), ln.weight, ln.bias, ln.eps)),
        "multi_head_attention": (lambda: ops.multi_head_attention(qh, kh, kh),
                                 lambda: fo.TritonOps.attention(qh, kh, kh, scale),
                                 lambda: torch.nn.functional.scaled_dot_product_attention(
                                     qh.transpose(1, 2), kh.transpose(1, 2), kh.transpose(1, 2))),
        "pooled_kv_attention (projections + kv_pool2d + attention)": (
            lambda: ops.pooled_kv_attention(x128, attn.q.weight, attn.q.bias, attn.kv.weight, attn.kv.bias,
                                            attn.proj.weight, attn.proj.bias, 4, (2, 4), residual=x128),
            lambda: fo.TritonOps.pooled_kv_attention(x128, q, kv, proj, 4, (2, 4), residual=x128),
            lambda: x128_nchw + attn(x128_nchw)),
    }


def _op_rows(device, dtype) -> List[Row]:
    rows: List[Row] = []
    for op, (today, direct, torch_eager) in _op_cases(dtype).items():
        with _host_only() as log:
            launches = len(_logged(log, today)().records)
            found = _host_compare(f"{op} call (host)", "B=1 tiny", dtype, device,
                                  Implementation("custom op (today)", _logged(log, today)),
                                  [Implementation("direct launcher (prepared)", _logged(log, direct))],
                                  matches=_same_launches)
            rows += _note_us(found, launches)
        with torch.no_grad(), _one_thread():
            torch_rows = _host_compare(f"{op} call (host)", "B=1 tiny", dtype, device,
                                       Implementation("torch eager equivalent", torch_eager), [],
                                       matches=lambda g, e: True)
        rows += _note_us(torch_rows, 0, "real CPU kernels on the tiny tensors: a torch op's dispatch, for scale")
    return rows


# ------------------------------------------------------------------------------------ per forward
def _randomised_encoder(dtype):
    from litesam_kernels.model import LiteViT

    torch.manual_seed(0)
    model = LiteViT(fused=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(dtype)


def _check_outputs_agree(model, images) -> bool:
    """Real (reference) kernels: the prepared path computes what today's path computes."""
    with torch.no_grad():
        model.prepared = False
        today = model(images)
        model.prepared = True
        model.invalidate_prepared()
        prepared, again = model(images), model(images)
    return torch.equal(today, prepared) and torch.equal(prepared, again)


def _forward_rows(device, dtype, quick: bool) -> List[Row]:
    model = _randomised_encoder(dtype)
    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=dtype)
    if not _check_outputs_agree(model, images):
        raise AssertionError("the prepared encoder's output differs from today's fused path")
    today_model = copy.deepcopy(model)
    today_model.prepared = False
    eager_model = copy.deepcopy(model)
    eager_model.fused = False
    shape = f"B=1 {IMAGE_SIZE}^2, default config"
    rows: List[Row] = []
    with _host_only() as log:
        impls = [Implementation("prepared", _logged(log, lambda: model(images)))]
        if not quick:  # each compile takes about a minute on a 2-core CPU
            compiled = torch.compile(copy.deepcopy(today_model), fullgraph=True)
            prepared_compiled = copy.deepcopy(model).compile_fused("default")
            impls += [Implementation("compiled (torch.compile fullgraph)", _logged(log, lambda: compiled(images))),
                      Implementation("prepared+compiled (compile_fused)",
                                     _logged(log, lambda: prepared_compiled(images)))]
        today = _logged(log, lambda: today_model(images))
        launches = len(today().records)
        rows += _note_us(_host_compare("LiteViT forward (host)", shape, dtype, device,
                                       Implementation("custom ops (today)", today), impls, matches=_same_launches),
                         launches)
    with torch.no_grad(), _one_thread():
        eager = _host_compare("LiteViT forward (host)", shape, dtype, device,
                              Implementation("eager modules", lambda: eager_model(images)), [],
                              matches=lambda g, e: True)
    return rows + _note_us(eager, 0, "torch modules with real CPU kernels on the tiny image: for scale")


def run(device: torch.device, quick: bool = False) -> List[Row]:
    """CPU only: the point is host time without kernel time (on a GPU, see bench_litevit's prepared rows)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton is a dependency of the CUDA torch builds
        print(f"[host_overhead] skipped: triton is not importable ({exc})")
        return []
    cpu = torch.device("cpu")
    rows = _op_rows(cpu, torch.float32)
    for dtype in (torch.float32,) if quick else (torch.float32, torch.bfloat16):
        rows += _forward_rows(cpu, dtype, quick)
    return rows
