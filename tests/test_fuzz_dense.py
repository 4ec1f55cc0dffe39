"""Fuzzing the LiteViT ops, forward and backward, on every backend against their torch references.

Inputs are drawn with odd and tiny sizes (H, W, C, Lq, Lk down to 1), every float dtype, channels-last
views of NCHW buffers, strided and transposed layouts, values from 1e-3 to 30 in magnitude, constant
rows (zero variance), large offsets (1e3 + noise: the LayerNorm cancellation case), saturated softmax
logits and identical keys. The op (forward, then the gradients of every floating input through its
registered backward) must equal the reference composition differentiated by autograd, within the metric
``max |got - want| <= TOL * max |want|`` (``tests/dense_checks.py``).

TOL per dtype, measured over the thorough profile (400-800 examples per op) with margin: the largest
ratio seen is written beside each entry. float32/float64: accumulation order only; float16/bfloat16:
about one rounding of the output (2^-11, 2^-8 relative) plus the 16-bit tanh GELU of the Triton kernels.
"""
import contextlib
import os

import pytest
import torch
from hypothesis import strategies as st

import litesam_kernels as lk
from litesam_kernels.ops.attention import (_attention_projected_reference, _attention_reference,
                                           _kv_pool_reference)
from litesam_kernels.ops.conv_block import _dwconv_reference
from litesam_kernels.ops.conv_mlp import _conv_mlp_reference
from litesam_kernels.ops.layer_norm import _layer_norm_reference
from litesam_kernels.ops.pool_mixer import _pool_mixer_reference
from tests._fuzz_profiles import FLOAT_DTYPES, fuzz, fuzz_targets, generator, interpreted, relayout, seeds

SLACK = 8
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}
X_LAYOUTS = ("contiguous", "nchw", "strided", "transposed")
VALUES = ("normal", "tiny", "large", "constant", "offset")


def _values(kind: str, shape, g) -> torch.Tensor:
    base = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == "tiny":
        return base * 1e-3
    if kind == "large":
        return base * 30
    if kind == "constant":  # every channel of a pixel equal: zero variance
        return base[..., :1].expand(shape).clone()
    if kind == "offset":
        return 1e3 + base
    return base


@st.composite
def nhwc(draw, max_side: int, channels):
    """(x, dtype, generator): a (B, H, W, C) input in some layout, values of some kind."""
    b, h, w = draw(st.integers(1, 2)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    c = draw(channels)
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    g = generator(draw(seeds))
    x = _values(draw(st.sampled_from(VALUES)), (b, h, w, c), g)
    return relayout(x.to(dtype), draw(st.sampled_from(X_LAYOUTS))), dtype, g


def _params(shape, g, low=0.5, dtype=torch.float32):
    return (torch.rand(*shape, generator=g, dtype=torch.float64) + low).to(dtype)


def _outputs_and_grads(fn, tensors, device, backend, grad, cast=None):
    """fn(*tensors) on ``device`` under ``backend`` (None: as called) and the gradients of its floating inputs."""
    inputs = [t.detach().to(device, cast or t.dtype).requires_grad_(t.is_floating_point())
              if isinstance(t, torch.Tensor) else t for t in tensors]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    with lk.use_backend(backend) if backend else contextlib.nullcontext():
        out = fn(*inputs)
        grads = torch.autograd.grad(out, leaves, grad.to(device, cast or grad.dtype), allow_unused=True)
    return out, grads, leaves


def _check(backend, device, op, reference, tensors, dtype):
    """op(*tensors) on ``backend``, forward and the gradients of every floating input, against ``truth`` (the
    reference on float64 copies of the inputs): the op's error may be at most ``SLACK`` times the reference's
    own error in ``dtype`` (same inputs, same rounding points), or ``FLOOR[dtype]`` of the truth's size."""
    grad = torch.randn(_output_shape(reference, tensors), generator=generator(0), dtype=torch.float64).to(dtype)
    got, got_grads, _ = _outputs_and_grads(op, tensors, device, backend, grad)
    want, want_grads, _ = _outputs_and_grads(reference, tensors, "cpu", None, grad)
    truth, truth_grads, truth_leaves = _outputs_and_grads(reference, tensors, "cpu", None, grad, torch.float64)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert all(g is not None for g, w in zip(got_grads, want_grads) if w is not None)
    # A gradient that sums many terms can cancel to ~0 (a 1x1 image's pooled value is its own): its error is
    # measured against one term's size, |grad output| * |largest input|, when that is larger.
    term = float(grad.abs().max()) * max(float(t.detach().abs().max()) for t in truth_leaves if t.numel())
    ratios = []
    for index, (g, w, t) in enumerate(zip((got, *got_grads), (want, *want_grads), (truth, *truth_grads))):
        if w is None or t is None or not t.numel():
            continue
        assert g.dtype == w.dtype
        scale = float(t.abs().max()) if index == 0 else max(float(t.abs().max()), term)
        error, reference_error = _error(g.cpu(), t), _error(w, t)
        ratios.append((error / max(scale, 1e-300), reference_error / max(scale, 1e-300)))
        what = "output" if index == 0 else f"gradient {index}"
        assert error <= max(SLACK * reference_error, FLOOR[dtype] * scale), (
            f"{what}: error {error:.3g} vs the reference's {reference_error:.3g} (x{SLACK}) and "
            f"{FLOOR[dtype]:g} x {scale:.3g}")
    _record(backend, dtype, ratios)


def _output_shape(reference, tensors):
    with torch.no_grad():
        return reference(*tensors).shape


def _error(got, truth) -> float:
    return float((got.double() - truth.double()).abs().max())


def _record(backend, dtype, ratios) -> None:
    """With FUZZ_ERRORS=path, append each example's (op error, reference error) / size per output: how
    FLOOR and SLACK were measured."""
    path = os.environ.get("FUZZ_ERRORS")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(path, "a") as log:
            log.write(" ".join([test, backend, str(dtype)] + [f"{a:.3g}/{b:.3g}" for a, b in ratios]) + "\n")


def _examples(backend, device, cpu=25, triton=6):
    return triton if interpreted(backend, device) else cpu


def _check_per_channel(backend, device, op, reference, case):
    """An op of (x, per-channel weight in [0.5, 1.5), per-channel bias in [-0.5, 0.5))."""
    x, dtype, g = case
    c = x.shape[-1]
    _check(backend, device, op, reference, [x, _params((c,), g), _params((c,), g, -0.5)], dtype)


# ---------------------------------------------------------------------------------------------- per op
@pytest.mark.parametrize("backend,device", fuzz_targets("layer_norm2d"))
def test_layer_norm2d(backend, device):
    def check(case, eps):
        _check_per_channel(backend, device, lambda x, w, b: lk.ops.layer_norm2d(x, w, b, eps),
                           lambda x, w, b: _layer_norm_reference(x, w, b, eps), case)

    fuzz(check, nhwc(7, st.integers(1, 70)), st.sampled_from((1e-6, 1e-3)), max_examples=_examples(backend, device))


@pytest.mark.parametrize("backend,device", fuzz_targets("pool_mixer"))
def test_pool_mixer(backend, device):
    def check(case, pool_sizes):
        _check_per_channel(backend, device, lambda x, s, t: lk.ops.pool_mixer(x, s, t, pool_sizes),
                           lambda x, s, t: _pool_mixer_reference(x, s, t, pool_sizes), case)

    sizes = st.lists(st.sampled_from((1, 3, 5, 7, 9, 15)), min_size=1, max_size=3)
    fuzz(check, nhwc(4 if interpreted(backend, device) else 6, st.integers(1, 40)), sizes,
         max_examples=_examples(backend, device, triton=3))


@pytest.mark.parametrize("backend,device", fuzz_targets("dwconv_act"))
def test_dwconv_act(backend, device):
    def check(case, k, activation, residual):
        x, dtype, g = case
        c = x.shape[-1]
        weight = (torch.randn(c, k, k, generator=g, dtype=torch.float64) / k).to(dtype)
        _check(backend, device, lambda x, w, b: lk.ops.dwconv_act(x, w, b, activation, residual),
               lambda x, w, b: _dwconv_reference(x, w, b, activation, residual), [x, weight, _params((c,), g, -0.5)],
               dtype)

    fuzz(check, nhwc(7, st.integers(1, 40)), st.sampled_from((1, 3, 5, 7, 9)), st.sampled_from(("gelu", "none")),
         st.booleans(), max_examples=_examples(backend, device, triton=4))


@pytest.mark.parametrize("backend,device", fuzz_targets("conv_mlp"))
def test_conv_mlp(backend, device):
    def check(case, hidden, residual, norm):
        x, dtype, g = case
        c = x.shape[-1]
        w1 = (torch.randn(hidden, c, generator=g, dtype=torch.float64) / c**0.5).to(dtype)
        w2 = (torch.randn(c, hidden, generator=g, dtype=torch.float64) / hidden**0.5).to(dtype)
        tensors = [x, w1, _params((hidden,), g, -0.5, dtype), w2, _params((c,), g, -0.5, dtype)]
        norms = [_params((c,), g, dtype=dtype), _params((c,), g, -0.5, dtype)] if norm else [None, None]

        def run(fn):
            return lambda x, w1, b1, w2, b2, nw, nb: fn(x, w1, b1, w2, b2, x if residual else None, nw, nb, 1e-6)

        _check(backend, device, run(lk.ops.conv_mlp), run(_conv_mlp_reference), tensors + norms, dtype)

    fuzz(check, nhwc(5, st.integers(1, 40)), st.integers(1, 70), st.booleans(), st.booleans(),
         max_examples=_examples(backend, device))


@pytest.mark.parametrize("backend,device", fuzz_targets("kv_pool2d"))
def test_kv_pool2d(backend, device):
    def check(case, sizes):
        x, dtype, _ = case
        _check(backend, device, lambda x: lk.ops.kv_pool2d(x, sizes), lambda x: _kv_pool_reference(x, sizes), [x], dtype)

    sizes = st.lists(st.integers(1, 8), min_size=1, max_size=3)
    fuzz(check, nhwc(9, st.integers(1, 40)), sizes, max_examples=_examples(backend, device))


@st.composite
def attention_inputs(draw, head_dims=(16, 32, 64, 128), max_len=40):
    b, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    d = draw(st.sampled_from(head_dims))
    lq, lk_ = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    g = generator(draw(seeds))
    kind = draw(st.sampled_from(("normal", "saturated", "equal_keys")))
    q = torch.randn(b, lq, heads, d, generator=g, dtype=torch.float64)
    kv = torch.randn(b, lk_, 2, heads, d, generator=g, dtype=torch.float64)  # a fused KV projection's output
    if kind == "saturated":
        q = q * 8
    if kind == "equal_keys":
        kv[:, :, 0] = kv[:, :1, 0]
    kv = kv.to(dtype)
    k, v = kv[:, :, 0], kv[:, :, 1]
    if draw(st.booleans()):
        k, v = k.contiguous(), v.contiguous()
    scale = draw(st.sampled_from((None, 0.05, 1.0)))
    return relayout(q.to(dtype), draw(st.sampled_from(("contiguous", "strided")))), k, v, scale, dtype, g


@pytest.mark.parametrize("backend,device", fuzz_targets("multi_head_attention"))
def test_multi_head_attention(backend, device):
    def check(case):
        q, k, v, scale, dtype, _ = case
        s = q.shape[-1] ** -0.5 if scale is None else scale
        _check(backend, device, lambda q, k, v: lk.ops.multi_head_attention(q, k, v, scale),
               lambda q, k, v: _attention_reference(q, k, v, s)[0], [q, k, v], dtype)

    fuzz(check, attention_inputs(), max_examples=_examples(backend, device))


@pytest.mark.parametrize("backend,device", fuzz_targets("multi_head_attention"))
def test_multi_head_attention_projected(backend, device):
    def check(case, c_out, residual):
        q, k, v, scale, dtype, g = case
        s = q.shape[-1] ** -0.5 if scale is None else scale
        b, lq, heads, d = q.shape
        wproj = (torch.randn(c_out, heads * d, generator=g, dtype=torch.float64) / (heads * d) ** 0.5).to(dtype)
        bproj = _params((c_out,), g, -0.5, dtype)
        res = torch.randn(b, lq, c_out, generator=g, dtype=torch.float64).to(dtype)

        def run(fn):
            return lambda q, k, v, w, bias, r: fn(q, k, v, w, bias, r if residual else None)

        _check(backend, device, run(lambda *a: lk.ops.multi_head_attention_projected(*a, scale=scale)),
               run(lambda *a: _attention_projected_reference(*a[:3], s, *a[3:])[0]), [q, k, v, wproj, bproj, res],
               dtype)

    fuzz(check, attention_inputs(head_dims=(16, 32, 64)), st.integers(1, 40), st.booleans(),
         max_examples=_examples(backend, device))


@pytest.mark.parametrize("backend,device", fuzz_targets("multi_head_attention"))
def test_pooled_kv_attention(backend, device):
    """The composition (projections, kv_pool2d, fused attention + projection or attention + GEMM) against
    the same composition with every op on its reference."""
    def check(case, heads, head_dim, sizes, residual):
        x, dtype, g = case
        c = heads * head_dim
        x = x[..., :1].expand(*x.shape[:3], c).contiguous() + torch.randn(*x.shape[:3], c, generator=g).to(x.dtype)
        weights = [(torch.randn(*shape, generator=g, dtype=torch.float64) / c**0.5).float()
                   for shape in ((c, c), (c,), (2 * c, c), (2 * c,), (c, c), (c,))]

        def run(backend_name):
            def call(x, *w):
                with lk.use_backend(backend_name):
                    return lk.ops.pooled_kv_attention(x, *w, num_heads=heads, kv_pool_sizes=sizes,
                                                      residual=x if residual else None)
            return call

        _check(backend, device, run(backend), run("reference"), [x, *weights], dtype)

    fuzz(check, nhwc(6, st.just(1)), st.integers(1, 2), st.sampled_from((16, 32, 64, 128)),
         st.lists(st.integers(1, 4), min_size=1, max_size=2), st.booleans(),
         max_examples=_examples(backend, device, cpu=10, triton=4))
