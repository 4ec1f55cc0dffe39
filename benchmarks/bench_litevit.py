"""LiteViT: each fused block/op vs its eager modules (and torch.compile of them on GPU), then the encoder.

Per op, with the real model's shapes at 1024^2 (stage 1: 256^2 x 32, stage 2: 128^2 x 64, stage 3: 64^2 x
128, neck 64^2 x 256), B = 1 and 8, fp16/bf16/fp32 on GPU: forward, and forward+backward (gradients of the
input and every parameter). Baselines: "eager" = the model's own NCHW modules; "compiled" = torch.compile
of the same eager function (GPU only). Ours: the fused channels-last path (``model/litevit_fused.py``),
Triton kernels on GPU. The note gives the achieved GB/s (minimal bytes: inputs read once, output written
once) or TFLOP/s (attention, MLP GEMMs) of each timed row; compare with PERFORMANCE.md's ceilings (H200:
4247 GB/s copy, 686 TFLOP/s bf16 dense).
End to end: ``LiteViT`` forward (eval) and forward+backward, eager vs ``fused=True`` vs compiled eager.

``--quick`` on GPU: fp16 at B = 8 only (about 12 torch.compile warm-ups instead of about 70).
On CPU (no GPU): tiny shapes (sizes / 16, B = 1, fp32) and the fused path runs its ops' torch references
(the Triton interpreter is a test tool): the rows only show that the suite runs and what the fused path's
dispatch costs; they say nothing about the GPU.
Matching: relative L2 error of every output (and gradient) <= 1e-3 (fp32), 1e-2 (fp16), 3e-2 (bf16).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch

from benchmarks.harness import Implementation, Row, compare
from litesam_kernels import use_backend
from litesam_kernels.model import litevit_fused as fz
from litesam_kernels.model.config import LiteViTConfig
from litesam_kernels.model.litevit import AttentionBlock, LiteViT, PoolMixerBlock
from litesam_kernels.ops.conv_block import dwconv_act, fold_batchnorm
from litesam_kernels.ops.layer_norm import layer_norm2d

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


@dataclass
class Case:
    op: str
    module: torch.nn.Module
    shape: tuple  # (B, H, W, C)
    eager: Callable  # NCHW in -> NCHW out, the model's modules
    fused: Callable  # NHWC in -> NHWC out
    bytes_fn: Callable[[torch.Tensor], int] = None
    flops_fn: Callable[[torch.Tensor], float] = None


def _mib(x):  # read input once + write output once
    return 2 * x.numel() * x.element_size()


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
    ln256 = type(ab.norm1)(256)

    def pool_mixer_eager(b):
        return lambda x: x + b.mixer(b.norm1(x))

    def pool_mixer_fused(b):
        def fn(x):
            scale_, shift = fz.bn_scale_shift(b.norm1, x)
            return fz.pool_mixer(x, scale_, shift, b.mixer.pool_sizes)
        return fn

    def dw_fused(pos):
        def fn(x):
            scale_, shift = fz.bn_scale_shift(pos.bn, x)
            w, bias = fold_batchnorm(pos.conv.weight, scale_, shift)
            return dwconv_act(x, w, bias, "gelu", residual=True)
        return fn

    def attn_fused(x):
        t = layer_norm2d(x, ab.norm1.weight, ab.norm1.bias, ab.norm1.eps)
        a = ab.attn
        return fz.pooled_kv_attention(t, a.q.weight, a.q.bias, a.kv.weight, a.kv.bias, a.proj.weight, a.proj.bias,
                                      a.num_heads, a.kv_pool_sizes, residual=x)

    def attn_flops(x):
        b, h, w, c = x.shape
        lq, lk = h * w, sum(-(-h // s) * -(-w // s) for s in (2, 4))
        return 4.0 * b * lq * lk * c + 2.0 * b * c * c * (2 * lq + 2 * lk)

    def mlp_flops(hid):
        return lambda x: 4.0 * x.numel() * hid

    def mlp_fused(block, bn):
        def fn(x):
            if bn:
                return fz.conv_mlp(  # as in fz.pool_mixer_block
                    x, *fz.fold_batchnorm_into_linear(fz._linear_weight(block.mlp.fc1), block.mlp.fc1.bias,
                                                      *fz.bn_scale_shift(block.norm2, x)),
                    fz._linear_weight(block.mlp.fc2), block.mlp.fc2.bias, residual=x)
            t = layer_norm2d(x, block.norm2.weight, block.norm2.bias, block.norm2.eps)
            return fz.conv_mlp(t, fz._linear_weight(block.mlp.fc1), block.mlp.fc1.bias,
                               fz._linear_weight(block.mlp.fc2), block.mlp.fc2.bias, residual=x)
        return fn

    return [
        Case("pool_mixer (BN+MSPool+res)", pm1, (batch, s1, s1, 32), pool_mixer_eager(pm1), pool_mixer_fused(pm1), _mib),
        Case("pool_mixer (BN+MSPool+res)", pm2, (batch, s2, s2, 64), pool_mixer_eager(pm2), pool_mixer_fused(pm2), _mib),
        Case("conv_mlp (BN+MLP+res)", pm1, (batch, s1, s1, 32), lambda x: x + pm1.mlp(pm1.norm2(x)),
             mlp_fused(pm1, True), _mib, mlp_flops(128)),
        Case("conv_mlp (LN+MLP+res)", ab, (batch, s3, s3, 128), lambda x: x + ab.mlp(ab.norm2(x)),
             mlp_fused(ab, False), _mib, mlp_flops(640)),
        Case("dwconv3x3+BN+GELU+res", ab, (batch, s3, s3, 128), lambda x: x + ab.pos(x), dw_fused(ab.pos), _mib),
        Case("dwconv7x7+BN+GELU+res", ab7.pos, (batch, s1, s1, 32), lambda x: x + ab7.pos(x), dw_fused(ab7.pos), _mib),
        Case("layer_norm2d", ln256, (batch, s3, s3, 256), ln256,
             lambda x: layer_norm2d(x, ln256.weight, ln256.bias, ln256.eps), _mib),
        Case("pooled_kv_attention (LN+attn+res)", ab, (batch, s3, s3, 128), lambda x: x + ab.attn(ab.norm1(x)),
             attn_fused, _mib, attn_flops),
        Case("pool_mixer_block", pm1, (batch, s1, s1, 32), pm1, lambda x: fz.pool_mixer_block(pm1, x), _mib),
        Case("attention_block", ab, (batch, s3, s3, 128), ab, lambda x: fz.attention_block(ab, x), _mib,
             attn_flops),
    ]


def _note(rows: List[Row], x: torch.Tensor, case: Case, backward: bool) -> List[Row]:
    for row in rows:
        if not row.median_ms:
            continue
        parts = []
        if case.bytes_fn is not None and not backward:
            parts.append(f"{case.bytes_fn(x) / row.median_ms / 1e6:.0f} GB/s (min bytes)")
        if case.flops_fn is not None:
            parts.append(f"{case.flops_fn(x) * (3 if backward else 1) / row.median_ms / 1e9:.2f} TFLOP/s")
        row.note = ", ".join(parts + ([row.note] if row.note else []))
    return rows


def _implementations(device, eager_fn, fused_fn, compile_baseline=True) -> List[Implementation]:
    """GPU: compiled eager (forward only) and the fused path on Triton. CPU: the fused path on its ops'
    torch references."""
    backend = "triton" if device.type == "cuda" else "reference"

    def fused():
        with use_backend(backend):
            return fused_fn()

    impls = []
    if device.type == "cuda":
        if not compile_baseline:
            impls.append(Implementation("compiled-eager", eager_fn,
                                        "not measured for forward+backward (torch.autograd.grad breaks the graph)"))
        else:
            torch._dynamo.reset()  # one lambda code object serves every case: stay clear of the recompile limit
            try:
                compiled = torch.compile(eager_fn)
                compiled()  # compile outside the timing
                impls.append(Implementation("compiled-eager", compiled))
            except Exception as exc:  # report, do not abort the suite
                impls.append(Implementation("compiled-eager", eager_fn, f"torch.compile failed: {exc}"[:200]))
    impls.append(Implementation(f"fused-{backend}" if backend == "triton" else "fused-reference-ops", fused))
    return impls


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
    rows = compare(case.op, shape, dtype, device,
                   Implementation("eager", lambda: case.eager(x_nchw).permute(0, 2, 3, 1)),
                   _implementations(device, lambda: case.eager(x_nchw).permute(0, 2, 3, 1), lambda: case.fused(x_nhwc)),
                   matches=lambda got, exp: _rel_close(got, exp, tol), note="forward")
    rows = _note(rows, x_nhwc, case, False)
    params = [p for p in module.parameters()]
    xr_nchw = x_nchw.clone().requires_grad_()
    xr_nhwc = x_nhwc.clone().requires_grad_()
    grad = torch.randn(b, h, w, c, generator=gen).to(device=device, dtype=dtype)

    def eager_bwd():
        out = case.eager(xr_nchw).permute(0, 2, 3, 1)
        gx, *gp = _grads(out, [xr_nchw] + params, grad)
        return [gx.permute(0, 2, 3, 1)] + gp

    def fused_bwd():
        return list(_grads(case.fused(xr_nhwc), [xr_nhwc] + params, grad))

    bwd = compare(case.op, shape, dtype, device, Implementation("eager", eager_bwd),
                  _implementations(device, eager_bwd, fused_bwd, compile_baseline=False), matches=lambda g, e: _rel_close(g, e, 3 * tol),
                  note="forward+backward")
    return rows + _note(bwd, x_nhwc, case, True)


def _model_rows(device, dtype, batch, size, config, backward=True) -> List[Row]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    eager = _randomise_bn(LiteViT(config)).to(device=device, dtype=dtype).eval()
    fused = copy.deepcopy(eager)
    fused.fused = True
    images = torch.randn(batch, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    tol = REL_TOL[dtype]
    shape = f"B={batch} {size}^2"
    with torch.no_grad():
        rows = compare("LiteViT forward", shape, dtype, device, Implementation("eager", lambda: eager(images)),
                       _implementations(device, lambda: eager(images), lambda: fused(images)),
                       matches=lambda g, e: _rel_close(g, e, 3 * tol), note="eval")
    for row in rows:
        if row.median_ms:
            row.note = f"{row.median_ms / batch:.3f} ms/image"
    if not backward:
        return rows

    def step(model):
        def fn():
            out = model(images)
            return list(torch.autograd.grad(out.float().square().mean(), list(model.parameters())))
        return fn

    rows += compare("LiteViT forward+backward", shape, dtype, device, Implementation("eager", step(eager)),
                    _implementations(device, step(eager), step(fused), compile_baseline=False),
                    matches=lambda g, e: _rel_close(g, e, 10 * tol), note="eval-mode BN, grads of all parameters")
    return rows


def run(device: torch.device, quick: bool = False) -> List[Row]:
    rows: List[Row] = []
    if device.type == "cuda":
        dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)
        batches = (8,) if quick else (1, 8)  # quick: the target batch of PERFORMANCE.md, fp16 only
        scale, size, config = 1, 1024, LiteViTConfig()
    else:
        dtypes, batches, scale, size = (torch.float32,), (1,), 16, 128
        config = LiteViTConfig()
    for dtype in dtypes[:1] if quick else dtypes:
        for batch in batches:
            torch.manual_seed(0)
            selected = cases(scale, batch)
            if device.type != "cuda":  # CPU: the whole blocks only, so the suite stays well under a minute
                selected = [c for c in selected if c.op.endswith("_block")]
            for case in selected:
                rows += _op_rows(device, dtype, case)
            rows += _model_rows(device, dtype, batch, size, config, backward=device.type == "cuda")
    return rows
