"""Regular tests of what the fuzz tests (tests/test_fuzz_*.py) found, one per finding, each the smallest
failing case hypothesis shrank to. Findings in files other helpers are still changing are strict xfails
with the bug and the proposed fix."""
import pytest
import torch
from segment_anything.utils import amg

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops.mask_postprocess import sam_upscale
from tests.helpers import runnable_backends

POSTPROCESS = _backend.implementations("postprocess_masks")
KERNEL_BACKENDS = [p for p in runnable_backends(POSTPROCESS) if p.values[0] in ("cpu", "triton")]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.xfail(strict=True, reason=(
    "torch's CPU bilinear resize takes its vectorized channels-first kernel when out_h + out_w <= 128 (else the "
    "separable one the fused kernels reproduce), whose float32 arithmetic differs in the last bit: values that "
    "land exactly on a threshold flip. ops/mask_postprocess.py: on CPU, run the reference when either resize "
    "has out_h + out_w <= 128 (original_size, or 2 * image_size), and say so in the docstring"))
def test_postprocess_masks_equals_sam_where_torch_resizes_with_its_small_output_kernel(backend):
    # fuzz: a constant logit equal to the low threshold (mask_threshold - offset = -1); SAM's resize gives
    # -0.99999994 at one pixel (union 1, stability 0), the kernels -1 everywhere (empty union, NaN).
    low_res = torch.full((1, 1, 1), -1.0)
    logits = sam_upscale(low_res, (1, 1), (2, 6), 8)
    want = amg.calculate_stability_score(logits, 0.0, 1.0)
    with lk.use_backend(backend):
        got = lk.ops.postprocess_masks(low_res, (1, 1), (2, 6), 0.0, 1.0, image_size=8)
    torch.testing.assert_close(got.stability_scores, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_postprocess_masks_equals_sam_at_sam_sizes_on_a_threshold_tie(backend):
    """The same tie at SAM's sizes (256 -> 1024, outputs with H + W > 128) is exact: the bound of the bug."""
    low_res = torch.full((1, 256, 256), -1.0)
    logits = sam_upscale(low_res, (1024, 683), (120, 80), 1024)
    want = amg.calculate_stability_score(logits, 0.0, 1.0)
    with lk.use_backend(backend):
        got = lk.ops.postprocess_masks(low_res, (1024, 683), (120, 80), 0.0, 1.0)
    torch.testing.assert_close(got.stability_scores, want, rtol=0, atol=0, equal_nan=True)
