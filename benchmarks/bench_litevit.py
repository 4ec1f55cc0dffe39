"""LiteViT: each fused block/op vs its eager modules and torch.compile of them, then the encoder end to end.

Per op, with the real model's shapes at 1024^2 (stage 1: 256^2 x 32, stage 2: 128^2 x 64, stage 3: 64^2 x 128,
neck 64^2 x 256), B = 1 and 8, fp16/bf16/fp32 on GPU:
- forward: "eager" (the model's own NCHW modules, the baseline), "compiled-eager" (torch.compile of them, GPU),
  "fused" (the fused path with its folds per call on the custom ops: what training and autograd run) and
  "prepared" (folds recorded once, the kernels called directly: what inference runs, ``litevit_prepared``);
- forward+backward (gradients of the input and every parameter): eager vs fused.
End to end, the ``LiteViT`` encoder (eval) at B = 1 and 8, 1024^2: eager, compiled-eager, fused, prepared, and
on a GPU prepared+compiled (``compile_fused("reduce-overhead")``: CUDA graphs), plus forward+backward.

Every row carries its ``Floor``: the bytes that must move (activations in and out once, weights once) at the
copy bandwidth, or the FLOPs (matmuls, attention; counted by ``torch.utils.flop_counter`` for the encoder) at
the peak of the dtype the kernels' dots use (fp32 follows torch's TF32 switches as the kernels do), whichever
is longer. ``--quick`` on GPU: fp16 at B = 8 only (about 12 torch.compile warm-ups instead of about 70).
On CPU (no GPU): tiny shapes (sizes / 16, B = 1, fp32; fp32 and bf16 without ``--quick``), the whole blocks and
the encoder only; the fused and prepared paths run the ops' torch references (the Triton interpreter is a test
tool): the rows show that the suite runs, not GPU speed (``bench_host_overhead`` measures the host work).
Matching: relative L2 error of every output (and gradient) <= 1e-3 (fp32), 1e-2 (fp16), 3e-2 (bf16); the
encoder 3x that, its gradients 10x.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from benchmarks.harness import Floor, Implementation, Row, compare
from litesam_kernels import use_backend
from litesam_kernels.model import fused_ops
from litesam_kernels.model import litevit_fused as fz
from litesam_kernels.model.config import LiteViTConfig
from litesam_kernels.model.litevit import AttentionBlock, LayerNorm2d, LiteViT, PoolMixerBlock
from litesam_kernels.model.litevit_prepared import RecordingFolds, ReplayFolds
from litesam_kernels.triton._precision import dot_precision

REL_TOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _rel_close(got, expected, tol) -> bool:
    """Relative L2 error over all tensors together (a parameter whose true gradient is ~0, e.g. the
    BN shift before the pool mixer, would fail a per-tensor relative test on rounding noise)."""
    if isinstance(got, torch.Tensor):
        got, expected = [got], [expected]
    err = ref = 0.0
    for a, b in zip(got, expected):
        a, b = a.detach().double(), b.detach().double()
        if a.shape != b.shape or not torch.isfinite(a).all():
            return False
        err += float((a - b).norm()) ** 2
        ref += float(b.norm()) ** 2
    return err ** 0.5 <= tol * max(ref ** 0.5, 1e-12)


def _flops_dtype(dtype: torch.dtype, kind: str) -> str:
    """The peak that bounds the kernels' dots: fp32 dots run TF32 when torch's switch for ``kind`` allows."""
    if dtype == torch.float32:
        return "tf32" if dot_precision(dtype, kind) == "tf32" else "fp32"
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _weight_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(p.numel() for p in module.parameters()) * torch.tensor([], dtype=dtype).element_size()


@dataclass
class Case:
    op: str
    module: torch.nn.Module
    shape: tuple  # (B, H, W, C)
    eager: Callable  # NCHW in -> NCHW out: the model's modules
    fused: Callable  # (x NHWC, folds, ops) -> NHWC: the fused path's code, for any folds and op table
    flops: Callable[[torch.Tensor], float] = None  # of the math the kernels' dots do, forward
    dot_kind: str = "matmul"


def _randomise_bn(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module


def cases(scale: int, batch: int) -> List[Case]:
    """The model's blocks at (1024 / scale)^2 input."""
    s1, s2, s3 = 256 // scale, 128 // scale, 64 // scale
    pm1 = _randomise_bn(PoolMixerBlock(32, (3, 5, 7), 4.0))
    pm2 = _randomise_bn(PoolMixerBlock(64, (3, 5, 7), 4.0))
    ab = _randomise_bn(AttentionBlock(128, 4, (2, 4), 5.0))
    ab7 = _randomise_bn(copy.deepcopy(ab))
    ab7.pos = _randomise_bn(type(ab.pos)(32, 7))
    ln256 = LayerNorm2d(256)

    def pool_mixer(block):
        return lambda x, folds, ops: ops.pool_mixer(x, folds.batch_norm(block.norm1, x), block.mixer.pool_sizes)

    def bn_mlp(block):
        return lambda x, folds, ops: ops.conv_mlp(x, folds.conv_mlp(block.mlp, x, batch_norm=block.norm2),
                                                  residual=x)

    def ln_mlp(x, folds, ops):
        return ops.layer_norm_conv_mlp(x, folds.layer_norm(ab.norm2), folds.conv_mlp(ab.mlp))

    def dwconv(pos):
        return lambda x, folds, ops: ops.dwconv(x, folds.depthwise(pos), "gelu", residual=True)

    def attention(x, folds, ops):
        a = ab.attn
        t = ops.layer_norm(x, folds.layer_norm(ab.norm1))
        return ops.pooled_kv_attention(t, folds.linear(a.q), folds.linear(a.kv), folds.linear(a.proj), a.num_heads,
                                       a.kv_pool_sizes, residual=x)

    def attn_flops(x):
        b, h, w, c = x.shape
        lq, lk = h * w, sum(-(-h // s) * -(-w // s) for s in (2, 4))
        return 4.0 * b * lq * lk * c + 2.0 * b * c * c * (2 * lq + 2 * lk)

    def mlp_flops(hid):
        return lambda x: 4.0 * x.numel() * hid

    return [
        Case("pool_mixer (BN+MSPool+res)", pm1, (batch, s1, s1, 32), lambda x: x + pm1.mixer(pm1.norm1(x)),
             pool_mixer(pm1)),
        Case("pool_mixer (BN+MSPool+res)", pm2, (batch, s2, s2, 64), lambda x: x + pm2.mixer(pm2.norm1(x)),
             pool_mixer(pm2)),
        Case("conv_mlp (BN+MLP+res)", pm1, (batch, s1, s1, 32), lambda x: x + pm1.mlp(pm1.norm2(x)), bn_mlp(pm1),
             mlp_flops(128), "conv"),
        Case("conv_mlp (LN+MLP+res)", ab, (batch, s3, s3, 128), lambda x: x + ab.mlp(ab.norm2(x)), ln_mlp,
             mlp_flops(640), "conv"),
        Case("dwconv3x3+BN+GELU+res", ab, (batch, s3, s3, 128), lambda x: x + ab.pos(x), dwconv(ab.pos)),
        Case("dwconv7x7+BN+GELU+res", ab7.pos, (batch, s1, s1, 32), lambda x: x + ab7.pos(x), dwconv(ab7.pos)),
        Case("layer_norm2d", ln256, (batch, s3, s3, 256), ln256,
             lambda x, folds, ops: ops.layer_norm(x, folds.layer_norm(ln256))),
        Case("pooled_kv_attention (LN+attn+res)", ab, (batch, s3, s3, 128), lambda x: x + ab.attn(ab.norm1(x)),
             attention, attn_flops),
        Case("pool_mixer_block", pm1, (batch, s1, s1, 32), pm1,
             lambda x, folds, ops: fz.pool_mixer_block(pm1, x, folds, ops), mlp_flops(128), "conv"),
        Case("attention_block", ab, (batch, s3, s3, 128), ab,
             lambda x, folds, ops: fz.attention_block(ab, x, folds, ops),
             lambda x: attn_flops(x) + mlp_flops(640)(x)),
    ]


def _floor(case: Case, x: torch.Tensor, backward: bool) -> Floor:
    weights = _weight_bytes(case.module, x.dtype)
    moved = (4 if backward else 2) * _bytes(x) + (2 if backward else 1) * weights  # x, y (and dy, dx); weights
    flops = case.flops(x) * (3 if backward else 1) if case.flops else 0.0
    return Floor(bytes_moved=moved, flops=flops, flops_dtype=_flops_dtype(x.dtype, case.dot_kind))


def _direct_table(device: torch.device):
    return fused_ops.TritonOps if device.type == "cuda" else fused_ops.ReferenceOps


def _prepared(run: Callable, x: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
    """``run(x, folds, ops)`` on folds recorded once and replayed, the kernels called directly."""
    recording = RecordingFolds(x.dtype)
    with torch.no_grad():
        run(x, recording, _direct_table(device))
    return lambda: run(x, ReplayFolds(x.dtype, recording.entries), _direct_table(device))


def _compiled(device, fn, label="compiled-eager") -> Optional[Implementation]:
    if device.type != "cuda":
        return None
    torch._dynamo.reset()  # one lambda code object serves every case: stay clear of the recompile limit
    try:
        compiled = torch.compile(fn)
        compiled()  # compile outside the timing
        return Implementation(label, compiled)
    except Exception as exc:  # report, do not abort the suite
        return Implementation(label, fn, f"torch.compile failed: {exc}"[:200])


def _fused(device, fn) -> Callable[[], object]:
    backend = "triton" if device.type == "cuda" else None  # CPU: the ops' references (no interpreter timing)

    def run():
        with use_backend(backend):
            return fn()
    return run


def _note(rows: List[Row], extra: str = "") -> List[Row]:
    for row in rows:
        if row.median_ms and row.pct_of_floor is not None:
            row.note = f"{row.pct_of_floor:.0f}% of floor" + (f", {extra}" if extra else "") + \
                (f"; {row.note}" if row.note else "")
    return rows


def _grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad, materialize_grads=True)  # the block's unused params: zeros


def _op_rows(device, dtype, case: Case) -> List[Row]:
    module = case.module.to(device=device, dtype=dtype).eval()
    b, h, w, c = case.shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    x_nhwc = torch.randn(b, h, w, c, generator=gen).to(device=device, dtype=dtype)
    x_nchw = x_nhwc.permute(0, 3, 1, 2).contiguous()
    shape = f"B={b} {h}x{w}x{c}"
    tol = REL_TOL[dtype]

    def eager():
        return case.eager(x_nchw).permute(0, 2, 3, 1)

    with torch.no_grad():
        impls = [i for i in [_compiled(device, eager)] if i is not None]
        impls += [Implementation("fused", _fused(device, lambda: case.fused(x_nhwc, fz.Folds(dtype), fz.CustomOps))),
                  Implementation("prepared", _prepared(case.fused, x_nhwc, device))]
        rows = _note(compare(case.op, shape, dtype, device, Implementation("eager", eager), impls,
                             matches=lambda got, exp: _rel_close(got, exp, tol), note="forward",
                             floor=_floor(case, x_nhwc, False)))
    params = list(module.parameters())
    xr_nchw = x_nchw.clone().requires_grad_()
    xr_nhwc = x_nhwc.clone().requires_grad_()
    grad = torch.randn(b, h, w, c, generator=gen).to(device=device, dtype=dtype)

    def eager_bwd():
        out = case.eager(xr_nchw).permute(0, 2, 3, 1)
        gx, *gp = _grads(out, [xr_nchw] + params, grad)
        return [gx.permute(0, 2, 3, 1)] + gp

    def fused_bwd():
        return list(_grads(case.fused(xr_nhwc, fz.Folds(dtype), fz.CustomOps), [xr_nhwc] + params, grad))

    bwd = compare(case.op, shape, dtype, device, Implementation("eager", eager_bwd),
                  [Implementation("fused", _fused(device, fused_bwd))],
                  matches=lambda g, e: _rel_close(g, e, 3 * tol), note="forward+backward",
                  floor=_floor(case, x_nhwc, True))
    return rows + _note(bwd)


def _encoder_floor(model: LiteViT, images: torch.Tensor, out: torch.Tensor, backward: bool) -> Floor:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    flops = counter.get_total_flops() * (3 if backward else 1)
    moved = (2 if backward else 1) * (_bytes(images, out) + _weight_bytes(model, images.dtype))
    return Floor(bytes_moved=moved, flops=flops, flops_dtype=_flops_dtype(images.dtype, "matmul"))


def _model_rows(device, dtype, batch, size, config, backward=True) -> List[Row]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    eager = _randomise_bn(LiteViT(config)).to(device=device, dtype=dtype).eval()
    fused = copy.deepcopy(eager)
    fused.fused, fused.prepared = True, False
    prepared = copy.deepcopy(fused)
    prepared.prepared = True
    images = torch.randn(batch, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    tol = REL_TOL[dtype]
    shape = f"B={batch} {size}^2"
    with torch.no_grad():
        want = eager(images)
        impls = [i for i in [_compiled(device, lambda: eager(images))] if i is not None]
        impls += [Implementation("fused", _fused(device, lambda: fused(images))),
                  Implementation("prepared", _fused(device, lambda: prepared(images)))]
        if device.type == "cuda":
            graphed = copy.deepcopy(prepared).compile_fused("reduce-overhead")
            impls.append(Implementation("prepared+compiled (reduce-overhead)", _fused(device, lambda: graphed(images))))
        rows = compare("LiteViT forward", shape, dtype, device, Implementation("eager", lambda: eager(images)), impls,
                       matches=lambda g, e: _rel_close(g, e, 3 * tol), note="eval",
                       floor=_encoder_floor(eager, images, want, False))
    for row in rows:
        if row.median_ms:
            row.note = f"{row.median_ms / batch:.3f} ms/image, {row.pct_of_floor:.0f}% of floor"
    if not backward:
        return rows

    def step(model):
        def fn():
            out = model(images)
            return list(torch.autograd.grad(out.float().square().mean(), list(model.parameters())))
        return fn

    rows += _note(compare("LiteViT forward+backward", shape, dtype, device, Implementation("eager", step(eager)),
                          [Implementation("fused", _fused(device, step(fused)))],
                          matches=lambda g, e: _rel_close(g, e, 10 * tol), note="eval-mode BN, grads of all parameters",
                          floor=_encoder_floor(eager, images, want, True)))
    return rows


def run(device: torch.device, quick: bool = False) -> List[Row]:
    rows: List[Row] = []
    if device.type == "cuda":
        dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)
        batches = (8,) if quick else (1, 8)  # quick: the target batch of PERFORMANCE.md, fp16 only
        scale, size = 1, 1024
    else:
        dtypes, batches, scale, size = (torch.float32, torch.bfloat16), (1,), 16, 128
    for dtype in dtypes[:1] if quick else dtypes:
        for batch in batches:
            torch.manual_seed(0)
            selected = cases(scale, batch)
            if device.type != "cuda":  # CPU: the whole blocks only, so the suite stays well under a minute
                selected = [c for c in selected if c.op.endswith("_block")]
            for case in selected:
                rows += _op_rows(device, dtype, case)
            rows += _model_rows(device, dtype, batch, size, LiteViTConfig(), backward=device.type == "cuda")
    return rows
