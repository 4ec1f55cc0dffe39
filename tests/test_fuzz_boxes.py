"""Fuzzing box NMS (``nms``, ``batched_nms``) on every backend against the reference and torchvision.

The boxes are drawn as uniform scenes with optional duplicates, degenerate and inverted boxes, huge or
offset coordinates (up to 1e7, plus 1e6 offsets: float16 overflows to inf there, which the semantics
define), NaN/inf coordinates and scores, heavy score ties, and non-contiguous layouts. Every backend must
return exactly the reference's keep list; the reference must return torchvision's wherever torchvision's
order is defined (distinct scores: its CPU sort is unstable) and its arithmetic is ours (float32/float64
boxes; for ``batched_nms``, coordinates small enough for its offset trick to be exact).
"""
from dataclasses import dataclass

import pytest
import torch
from hypothesis import strategies as st

import litesam_kernels as lk
from litesam_kernels.ops.nms import _batched_nms_reference, _nms_reference
from tests._fuzz_profiles import FLOAT_DTYPES, fuzz, fuzz_targets, generator, interpreted, layouts, relayout, seeds

torchvision = pytest.importorskip("torchvision")

SPECIALS = ("duplicates", "degenerate", "inverted", "nested", "nan_coordinate", "inf_coordinate", "nan_score",
            "inf_score")
NON_FINITE = {"nan_coordinate", "inf_coordinate", "nan_score", "inf_score"}


@dataclass
class BoxCase:
    boxes: torch.Tensor
    scores: torch.Tensor
    idxs: torch.Tensor
    threshold: float
    distinct_scores: bool
    finite: bool
    max_coordinate: float

    def to(self, device):
        return BoxCase(self.boxes.to(device), self.scores.to(device), self.idxs.to(device), self.threshold,
                       self.distinct_scores, self.finite, self.max_coordinate)


@st.composite
def box_cases(draw, max_n: int):
    n = draw(st.integers(0, max_n))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    scale = draw(st.sampled_from((1.0, 100.0, 1e4, 1e7)))
    offset = draw(st.sampled_from((0.0, 0.0, 1e6)))
    scores_kind = draw(st.sampled_from(("distinct", "ties", "equal")))
    specials = draw(st.sets(st.sampled_from(SPECIALS), max_size=3))
    groups = draw(st.sampled_from((1, 2, 5)))
    idxs_dtype = draw(st.sampled_from((torch.int64, torch.int32, torch.int16, torch.uint8)))
    idx_spread = draw(st.sampled_from((1, 2**40))) if idxs_dtype == torch.int64 else 1
    threshold = draw(st.one_of(st.sampled_from((0.0, 0.5, 1.0)), st.floats(0.0, 1.0)))
    layout = draw(layouts)
    g = generator(draw(seeds))

    centres = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale
    sizes = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale / 4
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1) + offset
    pick = lambda: torch.randint(0, n, (max(n // 4, 1),), generator=g)  # noqa: E731
    if n:
        if "duplicates" in specials:
            boxes[pick()] = boxes[torch.randint(0, n, (1,), generator=g)]
        if "degenerate" in specials:
            rows = pick()
            boxes[rows, 2] = boxes[rows, 0]
        if "inverted" in specials:
            rows = pick()
            boxes[rows] = boxes[rows][:, [2, 3, 0, 1]]
        if "nested" in specials:
            rows = pick()
            boxes[rows] = boxes[rows[:1]] + torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64) * scale / 64
        if "nan_coordinate" in specials:
            boxes[pick(), torch.randint(0, 4, (1,), generator=g)] = float("nan")
        if "inf_coordinate" in specials:
            boxes[pick(), torch.randint(0, 4, (1,), generator=g)] = float("inf")
    if scores_kind == "distinct":
        scores = torch.randperm(n, generator=g).to(torch.float64) / max(n, 1)
    elif scores_kind == "ties":
        scores = torch.randint(0, 3, (n,), generator=g).to(torch.float64)
    else:
        scores = torch.ones(n, dtype=torch.float64)
    if n and "nan_score" in specials:
        scores[pick()] = float("nan")
    if n and "inf_score" in specials:
        scores[pick()] = float("-inf")
    idxs = torch.randint(0, groups, (n,), generator=g) * idx_spread
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    distinct = scores_kind == "distinct" and not specials & {"nan_score", "inf_score"}
    if dtype in (torch.float16, torch.bfloat16):
        distinct = distinct and torch.unique(scores).numel() == n  # rounding can tie distinct scores
    return BoxCase(relayout(boxes, layout), relayout(scores, layout), idxs.to(idxs_dtype), threshold, distinct,
                   not specials & NON_FINITE and bool(boxes.isfinite().all()),
                   float(boxes.abs().max()) if n else 0.0)


def _sizes(backend, device):
    return 70 if interpreted(backend, device) else 260


@pytest.mark.parametrize("backend,device", fuzz_targets("batched_nms"))
def test_nms_matches_reference(backend, device):
    def check(case):
        want = _nms_reference(case.boxes, case.scores, case.threshold)
        with lk.use_backend(backend):
            got = lk.ops.nms(*(t.to(device) for t in (case.boxes, case.scores)), case.threshold)
        assert got.dtype == torch.int64 and got.device.type == device
        assert torch.equal(got.cpu(), want)

    fuzz(check, box_cases(_sizes(backend, device)), max_examples=6 if interpreted(backend, device) else 40)


@pytest.mark.parametrize("backend,device", fuzz_targets("batched_nms"))
def test_batched_nms_matches_reference(backend, device):
    def check(case):
        want = _batched_nms_reference(case.boxes, case.scores, case.idxs, case.threshold)
        with lk.use_backend(backend):
            got = lk.ops.batched_nms(*(t.to(device) for t in (case.boxes, case.scores, case.idxs)), case.threshold)
        assert torch.equal(got.cpu(), want)

    fuzz(check, box_cases(_sizes(backend, device)), max_examples=6 if interpreted(backend, device) else 40)


def test_reference_matches_torchvision():
    def check(case):
        if not (case.distinct_scores and case.finite and case.boxes.dtype in (torch.float32, torch.float64)):
            return
        want = torchvision.ops.nms(case.boxes, case.scores, case.threshold)
        assert torch.equal(_nms_reference(case.boxes, case.scores, case.threshold), want)
        # torchvision's batched_nms offsets each group by (max coordinate + 1) * idx: exact only while
        # those sums are exact in the boxes' dtype.
        limit = 2.0 ** (52 if case.boxes.dtype == torch.float64 else 23)
        spread = float(case.idxs.max()) if case.idxs.numel() else 0.0
        if (case.max_coordinate + 1) * (spread + 2) < limit / 2**8:
            want = torchvision.ops.batched_nms(case.boxes, case.scores, case.idxs.long(), case.threshold)
            assert torch.equal(_batched_nms_reference(case.boxes, case.scores, case.idxs, case.threshold), want)

    fuzz(check, box_cases(260), max_examples=60)
