"""Fuzzing AutoPPN decoding (``ppn_decode``) on every backend against the reference.

Heatmaps are drawn with plateaus (logits from a handful of values: many equal neighbours, tie order by
cell index), -0.0 beside +0.0, NaN, ±inf, thresholds 0 and 1 and in between, ``k`` below, at and above the
number of cells, image sizes that cut the grid (cells outside are not neighbours), fractional strides,
every float dtype and channels-last / strided layouts. Every backend must return exactly the reference's
five outputs.
"""
import pytest
import torch
from hypothesis import strategies as st

import litesam_kernels as lk
from litesam_kernels.ops.ppn_decode import _ppn_decode_reference
from tests._fuzz_profiles import FLOAT_DTYPES, fuzz, fuzz_targets, generator, interpreted, relayout, seeds


@st.composite
def ppn_cases(draw, max_side: int):
    b, h, w = draw(st.integers(0, 3)), draw(st.integers(0, max_side)), draw(st.integers(0, max_side))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    g = generator(draw(seeds))
    values = draw(st.sampled_from(("continuous", "plateaus", "signed_zeros")))
    if values == "continuous":
        heat = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64) * 3
    elif values == "plateaus":
        heat = torch.randint(-2, 3, (b, 1, h, w), generator=g).double()
    else:
        heat = torch.where(torch.rand(b, 1, h, w, generator=g) < 0.5, 0.0, -0.0).double()
    if draw(st.booleans()) and heat.numel():
        flat = heat.view(-1)
        specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
        flat[torch.randint(0, flat.numel(), (3,), generator=g)] = specials
    boxes = torch.rand(b, 4, h, w, generator=g, dtype=torch.float64) * draw(st.sampled_from((0.5, 4.0, 1e3)))
    stride = draw(st.sampled_from((16.0, 1.0, 7.5)))
    sizes = None
    if draw(st.booleans()):
        sizes = torch.stack([torch.randint(0, int(h * stride) + 2, (b,), generator=g),
                             torch.randint(0, int(w * stride) + 2, (b,), generator=g)], 1)
        sizes = sizes.to(draw(st.sampled_from((torch.int64, torch.int32))))
    k = draw(st.integers(1, max(h * w + 3, 1)) | st.sampled_from((1, 2, 256)))
    threshold = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0)) | st.floats(0, 1))
    layout = draw(st.sampled_from(("contiguous", "channels_last", "strided")))
    return (relayout(heat.to(dtype), layout), relayout(boxes.to(dtype), layout), sizes, k, threshold, stride)


@pytest.mark.parametrize("backend,device", fuzz_targets("ppn_decode"))
def test_ppn_decode_matches_reference(backend, device):
    def check(case):
        heat, boxes, sizes, k, threshold, stride = case
        want = _ppn_decode_reference(heat, boxes, sizes, k, threshold, stride)
        with lk.use_backend(backend):
            got = lk.ops.ppn_decode(heat.to(device), boxes.to(device), k=k, score_threshold=threshold, stride=stride,
                                    image_sizes=None if sizes is None else sizes.to(device))
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=0, equal_nan=True)
        assert (got.num_valid.cpu() <= k).all()

    small = interpreted(backend, device)
    fuzz(check, ppn_cases(9 if small else 24), max_examples=8 if small else 40)
