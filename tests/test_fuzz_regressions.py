"""Regular tests of what the fuzz tests (tests/test_fuzz_*.py) found, one per finding, each the smallest
failing case hypothesis shrank to, fixed."""
import importlib

import pytest
import torch
from segment_anything.utils import amg

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops.mask_postprocess import sam_upscale
from tests.helpers import runnable_backends

mp = importlib.import_module("litesam_kernels.ops.mask_postprocess")

POSTPROCESS = _backend.implementations("postprocess_masks")
KERNEL_BACKENDS = [p for p in runnable_backends(POSTPROCESS) if p.values[0] in ("cpu", "triton")]


@pytest.mark.parametrize("original_size,image_size", [((2, 6), 8), ((64, 64), 16), ((2, 6), 64), ((60, 68), 128),
                                                      ((2, 126), 256)])
def test_postprocess_masks_equals_sam_where_torch_resizes_with_its_small_output_kernel(original_size, image_size):
    """Regression (fuzz): torch's CPU bilinear resize takes its vectorized kernel when out_h + out_w <= 128 (else
    the separable one the fused kernels reproduce), whose float32 arithmetic differs in the last bit, so values
    that land exactly on a threshold flip. A constant logit equal to the low threshold (mask_threshold - offset =
    -1): SAM's resize gives -0.99999994 at one pixel of a 2x6 output (union 1, stability 0), the kernels -1
    everywhere (an empty union, NaN). On CPU the default choice runs the reference at those sizes."""
    low_res = torch.full((1, 1, 1), -1.0)
    logits = sam_upscale(low_res, (1, 1), original_size, image_size)
    want = amg.calculate_stability_score(logits, 0.0, 1.0)
    got = lk.ops.postprocess_masks(low_res, (1, 1), original_size, 0.0, 1.0, image_size=image_size)
    torch.testing.assert_close(got.stability_scores, want, rtol=0, atol=0, equal_nan=True)
    assert mp._torch_resizes_with_small_output_kernel(original_size, image_size)


@pytest.mark.skipif(_backend.choose(POSTPROCESS, torch.device("cpu")) == "reference", reason="no kernel on CPU")
def test_small_output_resizes_run_the_reference_on_cpu_only_where_torch_switches_kernel(monkeypatch):
    """The boundary: out_h + out_w = 128 or image_size = 64 run the reference; 129 and 65 the default kernel."""
    ran = []
    reference = mp._postprocess_masks_reference
    monkeypatch.setattr(mp, "_postprocess_masks_reference", lambda *a: ran.append((a[2], a[6])) or reference(*a))
    sizes = [((64, 64), 128), ((2, 126), 128), ((2, 6), 64), ((64, 65), 128), ((2, 127), 65)]
    for original_size, image_size in sizes:
        torch.ops.litesam.postprocess_masks(torch.zeros(1, 4, 4), [2, 2], list(original_size), 0.0, 1.0, False,
                                            image_size)
    assert ran == [([64, 64], 128), ([2, 126], 128), ([2, 6], 64)]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_postprocess_masks_equals_sam_at_sam_sizes_on_a_threshold_tie(backend):
    """The same tie at SAM's sizes (256 -> 1024, outputs with H + W > 128) is exact: the bound of the bug."""
    low_res = torch.full((1, 256, 256), -1.0)
    logits = sam_upscale(low_res, (1024, 683), (120, 80), 1024)
    want = amg.calculate_stability_score(logits, 0.0, 1.0)
    with lk.use_backend(backend):
        got = lk.ops.postprocess_masks(low_res, (1024, 683), (120, 80), 0.0, 1.0)
    torch.testing.assert_close(got.stability_scores, want, rtol=0, atol=0, equal_nan=True)
