"""One table of bad inputs that every op and public entry point runs through.

Each :class:`Entry` is an entry point (a ``litesam_kernels.ops`` function, a ``torch.ops.litesam`` op, a
generator's constructor or ``generate``, the CLI) with a valid call and rows of bad arguments. Each row
replaces one argument and expects ``TypeError`` (wrong Python type or dtype) or ``ValueError`` (shape,
length, device, value range) with the argument's name in the message: never another exception, a crash,
a hang or a silent answer. The valid call runs too, so a row cannot pass because the call was broken
anyway. A new op gets the same checks by adding one entry; the row builders (``tensor_rows``,
``real_rows``, ...) give the standard cases of each kind of argument.

``torch.ops.litesam.*`` entries: an argument whose *Python type* the op's schema does not take (a numpy
array or a list for a Tensor, a str for a float) never reaches the op: torch's dispatcher rejects it with
a ``RuntimeError`` that names the argument (``Expected a value of type 'Tensor' for argument 'boxes'``).
That is torch's behaviour for every custom op (``torch.ops.torchvision.nms`` alike) and the only case
where those entries expect it (``DISPATCHER``); the Python functions raise ``TypeError`` for it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import cli
from litesam_kernels.ops.bitmask import pack_masks

T, V = TypeError, ValueError
DISPATCHER = "dispatcher"  # torch.ops only: the dispatcher's RuntimeError for a Python type the schema rejects


@dataclass(frozen=True)
class Bad:
    label: str
    arg: str
    value: Any  # the bad value, or a function of the valid arguments that returns it
    error: Any  # TypeError, ValueError or DISPATCHER
    names: Tuple[str, ...] = ()  # the message names one of these (default: the argument)

    def replaced(self, kwargs: dict) -> dict:
        value = self.value(kwargs) if callable(self.value) and not isinstance(self.value, type) else self.value
        return {**kwargs, self.arg: value}


@dataclass(frozen=True)
class Entry:
    name: str
    call: Callable[..., Any]
    valid: Callable[[], Dict[str, Any]]
    bad: Tuple[Bad, ...]


def derived(fn):
    """A row value computed from the valid arguments (fn(kwargs))."""
    return fn


# ---------------------------------------------------------------------------------------------- row builders
def tensor_rows(arg: str, *, op: bool = False, optional: bool = False, dtype=None, rank=None, shape=None,
                device_of: Optional[str] = None) -> Tuple[Bad, ...]:
    """Non-tensors (numpy, list, None, a float), a wrong dtype / rank / shape, another device.

    dtype: a dtype the argument rejects (TypeError); rank / shape: functions of the valid tensor giving one
    of another rank / trailing shape (ValueError); device_of: the argument whose device it must share (the
    meta device stands in for another device)."""
    non_tensor = DISPATCHER if op else T
    rows = [Bad("numpy", arg, derived(lambda kw: kw[arg].detach().cpu().numpy()), non_tensor),
            Bad("list", arg, derived(lambda kw: kw[arg].tolist()), non_tensor),
            Bad("float", arg, 1.5, non_tensor)]
    if not optional:
        rows.append(Bad("None", arg, None, T))
    if dtype is not None:
        rows.append(Bad("dtype", arg, derived(lambda kw: kw[arg].to(dtype)), T))
    if rank is not None:
        rows.append(Bad("rank", arg, derived(lambda kw: rank(kw[arg])), V))
    if shape is not None:
        rows.append(Bad("shape", arg, derived(lambda kw: shape(kw[arg])), V))
    if device_of is not None:
        rows.append(Bad("device", arg, derived(lambda kw: kw[arg].to("meta")), V, (arg, device_of)))
    return tuple(replace(r, label=f"{arg}:{r.label}") for r in rows)


def real_rows(arg: str, *, op: bool = False, low: Optional[float] = None, high: Optional[float] = None,
              finite: bool = False) -> Tuple[Bad, ...]:
    """NaN, out-of-range values (and ±inf where the range is bounded or finite is required), non-reals."""
    rows = [Bad("nan", arg, math.nan, V), Bad("str", arg, "0.5", DISPATCHER if op else T)]
    if not op:  # the dispatcher takes bools and 1-element tensors as floats; the functions do not
        rows += [Bad("bool", arg, True, T), Bad("tensor", arg, torch.tensor([0.5, 0.5]), T)]
    if low is not None:
        rows += [Bad("below", arg, low - 0.25, V), Bad("-inf", arg, -math.inf, V)]
    if high is not None:
        rows += [Bad("above", arg, high + 0.25, V), Bad("inf", arg, math.inf, V)]
    if finite and high is None:
        rows.append(Bad("inf", arg, math.inf, V))
    return tuple(replace(r, label=f"{arg}:{r.label}") for r in rows)


def int_rows(arg: str, *, op: bool = False, low: int = 1, limited: bool = True) -> Tuple[Bad, ...]:
    """Below the minimum, negative, non-ints, past int64 (the dispatcher's own overflow error at the op level)
    and, for a size with a limit, 2**40 (rejected before anything that large is allocated)."""
    rows = [Bad("below", arg, low - 1, V), Bad("negative", arg, -5, V), Bad("float", arg, 2.5, DISPATCHER if op else T),
            Bad("str", arg, "3", DISPATCHER if op else T), Bad("past int64", arg, 2**70, DISPATCHER if op else V)]
    if not op:
        rows.append(Bad("bool", arg, True, T))
    if limited:
        rows.append(Bad("huge", arg, 2**40, V))
    return tuple(replace(r, label=f"{arg}:{r.label}") for r in rows)


def choice_rows(arg: str, *, op: bool = False) -> Tuple[Bad, ...]:
    """An unknown choice; an int (TypeError, or the ValueError that lists the choices: both name the argument)."""
    return (Bad(f"{arg}:unknown", arg, "no-such-choice", V), Bad(f"{arg}:int", arg, 1, DISPATCHER if op else (T, V)))


def width_rows(arg: str = "width", *, op: bool = False) -> Tuple[Bad, ...]:
    """For packed masks: a width their word count does not fit, negative, non-int, missing."""
    return (Bad(f"{arg}:wrong", arg, derived(lambda kw: kw[arg] + 32), V),
            Bad(f"{arg}:negative", arg, -1, V),
            Bad(f"{arg}:float", arg, 40.0, DISPATCHER if op else T))


# ---------------------------------------------------------------------------------------------- valid inputs
def boxes_and_scores(n=6):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + 10], 1), torch.rand(n, generator=g)


def bool_masks(n=4, h=10, w=40):
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(1)) > 0.5


def nhwc(c=8, dtype=torch.float32):
    return torch.randn(2, 5, 6, c, generator=torch.Generator().manual_seed(2), dtype=dtype)


def add_rank(t):
    return t.unsqueeze(0)


def drop_rank(t):
    return t.reshape(-1) if t.dim() > 1 else t.reshape(1, -1)


def shorter(t):
    return t[: max(t.shape[0] - 1, 0)]


def fewer_channels(t):
    return t[..., :-1]


# ---------------------------------------------------------------------------------------------- entries
def box_nms_entries():
    entries = []
    for op in (False, True):
        call = torch.ops.litesam.nms if op else lk.ops.nms
        rows = (tensor_rows("boxes", op=op, dtype=torch.int64, rank=drop_rank, shape=fewer_channels)
                + tensor_rows("scores", op=op, dtype=torch.float64, rank=add_rank, shape=shorter, device_of="boxes")
                + real_rows("iou_threshold", op=op, low=0.0, high=1.0))
        entries.append(Entry(f"{'op.' if op else ''}nms", lambda call=call, **kw: call(**kw),
                             lambda: dict(zip(("boxes", "scores"), boxes_and_scores()), iou_threshold=0.5), rows))
        call = torch.ops.litesam.batched_nms if op else lk.ops.batched_nms
        rows = rows + tensor_rows("idxs", op=op, dtype=torch.float32, rank=add_rank, shape=shorter, device_of="boxes")
        entries.append(Entry(f"{'op.' if op else ''}batched_nms", lambda call=call, **kw: call(**kw),
                             lambda: dict(zip(("boxes", "scores"), boxes_and_scores()), idxs=torch.tensor([0, 1] * 3),
                                          iou_threshold=0.5), rows))
    return entries


def mask_nms_entries():
    def masks_rows(arg, op=False, device_of=None):
        return tensor_rows(arg, op=op, dtype=torch.uint8, rank=lambda t: t[0], device_of=device_of)

    def scores_rows(op=False):
        return tensor_rows("scores", op=op, dtype=torch.int64, rank=add_rank, shape=shorter,
                           device_of="packed" if op else "masks")

    def idxs_rows(op=False):
        return tensor_rows("idxs", op=op, optional=True, dtype=torch.float32, rank=add_rank, shape=shorter,
                           device_of="packed" if op else "masks")

    def boxes_rows(op=False):
        return tensor_rows("boxes", op=op, optional=True, dtype=torch.float32, rank=drop_rank, shape=fewer_channels,
                           device_of="packed" if op else "masks")

    packed = lambda: pack_masks(bool_masks())  # noqa: E731
    boxes = lambda: lk.ops.masks_to_boxes(bool_masks())  # noqa: E731
    scores = lambda: torch.rand(4, generator=torch.Generator().manual_seed(3))  # noqa: E731
    entries = [
        Entry("mask_iou", lambda **kw: lk.ops.mask_iou(**kw),
              lambda: dict(masks_a=bool_masks(), masks_b=bool_masks(3), width=None),
              masks_rows("masks_a") + masks_rows("masks_b", device_of="masks_a")
              + (Bad("width:mismatch", "width", 33, V), Bad("width:float", "width", 40.0, T),
                 Bad("masks_b:height", "masks_b", bool_masks(3, 9), V, ("masks_a", "masks_b")),
                 Bad("width:missing for packed", "masks_a", derived(lambda kw: pack_masks(kw["masks_a"])), V,
                     ("width",)))),
        Entry("op.mask_iou", lambda **kw: torch.ops.litesam.mask_iou(**kw),
              lambda: dict(packed_a=packed(), packed_b=pack_masks(bool_masks(3)), width=40),
              tuple(replace(r, names=(r.names or (r.arg,)) + (r.arg.replace("packed", "masks"),)) for r in
                    tensor_rows("packed_a", op=True, dtype=torch.int64, rank=lambda t: t[0], shape=lambda t: t[..., :1])
                    + tensor_rows("packed_b", op=True, dtype=torch.bool, rank=lambda t: t[0], device_of="packed_a"))
              + width_rows(op=True)
              + (Bad("packed_b:height", "packed_b", derived(lambda kw: kw["packed_b"][:, :9]), V, ("masks_a", "masks_b")),)),
        Entry("mask_nms", lambda **kw: lk.ops.mask_nms(**kw),
              lambda: dict(masks=bool_masks(), scores=scores(), iou_threshold=0.5, idxs=torch.tensor([0, 0, 1, 1]),
                           boxes=boxes(), width=None),
              masks_rows("masks") + scores_rows() + idxs_rows() + boxes_rows()
              + real_rows("iou_threshold", low=0.0, high=1.0) + (Bad("width:mismatch", "width", 39, V),
                                                                  Bad("masks:one fewer", "masks", derived(lambda kw: shorter(kw["masks"])), V, ("masks", "scores")))),
        Entry("op.mask_nms", lambda **kw: torch.ops.litesam.mask_nms(**kw),
              lambda: dict(packed=packed(), scores=scores(), iou_threshold=0.5, idxs=torch.tensor([0, 0, 1, 1]),
                           boxes=boxes(), width=40),
              tensor_rows("packed", op=True, dtype=torch.bool, rank=lambda t: t[0]) + scores_rows(True)
              + idxs_rows(True) + boxes_rows(True) + real_rows("iou_threshold", op=True, low=0.0, high=1.0)
              + width_rows(op=True)),
        Entry("matrix_nms", lambda **kw: lk.ops.matrix_nms(**kw),
              lambda: dict(masks=bool_masks(), scores=scores(), idxs=torch.tensor([0, 1, 0, 1]), kernel="gaussian",
                           sigma=2.0, width=None),
              masks_rows("masks") + scores_rows() + idxs_rows() + choice_rows("kernel")
              + real_rows("sigma", low=0.0) + (Bad("masks:one fewer", "masks", derived(lambda kw: shorter(kw["masks"])), V, ("masks", "scores")),)),
        Entry("op.matrix_nms", lambda **kw: torch.ops.litesam.matrix_nms(**kw),
              lambda: dict(packed=packed(), scores=scores(), idxs=torch.tensor([0, 1, 0, 1]), kernel="linear", sigma=2.0,
                           width=40),
              tensor_rows("packed", op=True, dtype=torch.bool, rank=lambda t: t[0]) + scores_rows(True)
              + idxs_rows(True) + choice_rows("kernel", op=True) + real_rows("sigma", op=True, low=0.0)
              + width_rows(op=True)),
    ]
    return entries


def postprocess_entries():
    logits = lambda: torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))  # noqa: E731
    entries = []
    for op in (False, True):
        prefix, ops = ("op.", torch.ops.litesam) if op else ("", lk.ops)
        entries.append(Entry(
            f"{prefix}stability_score", lambda ops=ops, **kw: ops.stability_score(**kw),
            lambda: dict(mask_logits=logits(), mask_threshold=0.0, offset=1.0),
            tensor_rows("mask_logits", op=op, dtype=torch.int32, rank=lambda t: t[0, 0])
            + real_rows("mask_threshold", op=op) + real_rows("offset", op=op)))
        entries.append(Entry(
            f"{prefix}masks_to_boxes", lambda ops=ops, **kw: ops.masks_to_boxes(**kw),
            lambda: dict(masks=pack_masks(bool_masks()), width=40),
            tensor_rows("masks", op=op, dtype=torch.float32, rank=lambda t: t[0, 0]) + width_rows(op=op)
            + (Bad("width:missing", "width", None, V), Bad("width:for bool", "masks", derived(lambda kw: bool_masks()),
                                                          V, ("width",)))))
        sizes = ("input_size", "original_size")
        size_rows = tuple(r for s in sizes for r in (
            Bad(f"{s}:three", s, [8, 8, 8], V if op else T), Bad(f"{s}:zero", s, [0, 8], V),
            Bad(f"{s}:negative", s, [-4, 8], V), Bad(f"{s}:floats", s, [8.0, 8.0], DISPATCHER if op else T)))
        entries.append(Entry(
            f"{prefix}postprocess_masks", lambda ops=ops, **kw: ops.postprocess_masks(**kw),
            lambda: dict(low_res_logits=logits(), input_size=[16, 12], original_size=[20, 15], mask_threshold=0.0,
                         stability_offset=1.0, packed=False, image_size=16),
            tensor_rows("low_res_logits", op=op, dtype=torch.float64, rank=lambda t: t[0],
                        shape=lambda t: t[:, :0]) + size_rows
            + (Bad("input_size:larger than image_size", "input_size", [17, 12], V),)
            + real_rows("mask_threshold", op=op) + real_rows("stability_offset", op=op)
            + int_rows("image_size", op=op)))
    return entries


def rle_entries():
    rle = {"size": [2, 3], "counts": [1, 2, 3]}
    return [
        Entry("mask_to_rle", lambda **kw: lk.ops.mask_to_rle(**kw), lambda: dict(masks=bool_masks(), width=None),
              tensor_rows("masks", dtype=torch.uint8, rank=lambda t: t[0], shape=lambda t: t[None])
              + (Bad("width:for bool", "width", 40, V), Bad("width:missing for packed", "masks",
                                                           derived(lambda kw: pack_masks(kw["masks"])), V, ("width",)),
                 Bad("masks:int64 packed", "masks", derived(lambda kw: pack_masks(kw["masks"]).long()), T),
                 Bad("masks:float", "masks", derived(lambda kw: kw["masks"].float()), T),
                 Bad("width:float", "width", 40.0, (T, V)))),
        Entry("op.mask_to_rle_counts", lambda **kw: torch.ops.litesam.mask_to_rle_counts(**kw),
              lambda: dict(masks=pack_masks(bool_masks()), width=40),
              tensor_rows("masks", op=True, dtype=torch.float32, rank=lambda t: t[0], shape=lambda t: t[None])
              + width_rows(op=True) + (Bad("width:missing", "width", None, V),)),
        Entry("rle_to_mask", lambda **kw: lk.ops.rle_to_mask(**kw), lambda: dict(rle=dict(rle)),
              (Bad("rle:list", "rle", [1, 2, 3], T, ("rle",)), Bad("rle:None", "rle", None, T, ("rle",)),
               Bad("rle:no counts", "rle", {"size": [2, 3]}, V, ("counts",)),
               Bad("rle:no size", "rle", {"counts": [6]}, V, ("size",)),
               Bad("rle:short counts", "rle", {"size": [2, 3], "counts": [1, 2]}, V, ("counts",)),
               Bad("rle:negative counts", "rle", {"size": [2, 3], "counts": [7, -1]}, V, ("counts",)),
               Bad("rle:size of 3", "rle", {"size": [2, 3, 1], "counts": [6]}, V, ("size",)),
               Bad("rle:negative size", "rle", {"size": [-2, -3], "counts": [6]}, V, ("size",)),
               Bad("rle:float counts", "rle", {"size": [2, 3], "counts": [1.5, 4.5]}, (T, V), ("counts",)),
               Bad("rle:compressed counts", "rle", {"size": [2, 3], "counts": "06"}, T, ("counts",)))),
        Entry("area_from_rle", lambda **kw: lk.ops.area_from_rle(**kw), lambda: dict(rle=dict(rle)),
              (Bad("rle:list", "rle", [1, 2, 3], T, ("rle",)), Bad("rle:None", "rle", None, T, ("rle",)),
               Bad("rle:no counts", "rle", {"size": [2, 3]}, V, ("counts",)),
               Bad("rle:compressed counts", "rle", {"size": [2, 3], "counts": "06"}, T, ("counts",)))),
        Entry("coco_encode_rle", lambda **kw: lk.ops.coco_encode_rle(**kw), lambda: dict(uncompressed_rle=dict(rle)),
              (Bad("rle:list", "uncompressed_rle", [1, 2, 3], T, ("rle",)),
               Bad("rle:no size", "uncompressed_rle", {"counts": [6]}, V, ("size",)),
               Bad("rle:short counts", "uncompressed_rle", {"size": [2, 3], "counts": [1, 2]}, V, ("counts",)))),
    ]


def small_region_entries():
    entries = []
    for op in (False, True):
        prefix, ops = ("op.", torch.ops.litesam) if op else ("", lk.ops)
        masks_rows = (tensor_rows("masks", op=op, dtype=torch.uint8, rank=lambda t: t[0, 0])
                      + (Bad("masks:int32", "masks", derived(lambda kw: kw["masks"].int()), T),
                         Bad("masks:float", "masks", derived(lambda kw: kw["masks"].float()), T),
                         Bad("masks:scalar", "masks", torch.tensor(True), V),
                         Bad("masks:int64", "masks", derived(lambda kw: kw["masks"].long()), T)))
        for name in ("connected_components", "connected_component_areas"):
            entries.append(Entry(f"{prefix}{name}", lambda ops=ops, name=name, **kw: getattr(ops, name)(**kw),
                                 lambda: dict(masks=bool_masks()), masks_rows))
        mode = (Bad("holes:str", "holes", "yes", DISPATCHER),) if op else choice_rows("mode")
        entries.append(Entry(
            f"{prefix}remove_small_regions", lambda ops=ops, **kw: ops.remove_small_regions(**kw),
            lambda op=op: dict(masks=bool_masks(), area_thresh=5.0, **({"holes": True} if op else {"mode": "holes"})),
            masks_rows + real_rows("area_thresh", op=op, low=0.0) + mode))
    logits = lambda: torch.randn(3, 10, 12, generator=torch.Generator().manual_seed(8))  # noqa: E731
    entries.append(Entry(
        "fill_small_regions", lambda **kw: lk.ops.fill_small_regions(**kw),
        lambda: dict(logits=logits(), max_hole_area=4.0, max_sprinkle_area=4.0, threshold=0.0),
        tensor_rows("logits", dtype=torch.int32, rank=lambda t: t[0, 0])
        + real_rows("max_hole_area", low=0.0) + real_rows("max_sprinkle_area", low=0.0) + real_rows("threshold")))
    return entries


def ppn_entries():
    def valid(op):
        g = torch.Generator().manual_seed(5)
        kw = dict(heatmap_logits=torch.randn(2, 1, 6, 7, generator=g), box_regression=torch.rand(2, 4, 6, 7, generator=g),
                  k=5, score_threshold=0.1, stride=16.0, image_sizes=torch.tensor([[96, 112], [80, 64]]))
        return kw

    entries = []
    for op in (False, True):
        prefix, ops = ("op.", torch.ops.litesam) if op else ("", lk.ops)
        rows = (tensor_rows("heatmap_logits", op=op, dtype=torch.int64, rank=lambda t: t[0],
                            shape=lambda t: t.expand(-1, 2, -1, -1))
                + tensor_rows("box_regression", op=op, dtype=torch.int32, rank=lambda t: t[0], shape=lambda t: t[:, :3],
                              device_of="heatmap_logits")
                + tensor_rows("image_sizes", op=op, optional=True, dtype=torch.float32, rank=lambda t: t[0],
                              shape=lambda t: t[:1], device_of="heatmap_logits")
                + int_rows("k", op=op) + real_rows("score_threshold", op=op, low=0.0, high=1.0)
                + real_rows("stride", op=op, low=0.0) + (Bad("stride:zero", "stride", 0.0, V),))
        entries.append(Entry(f"{prefix}ppn_decode", lambda ops=ops, **kw: ops.ppn_decode(**kw),
                             lambda: valid(op), rows))
    return entries


def dense_entries():
    """LiteViT ops: the Python functions and their torch.ops (same argument names), forward only."""
    g = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    vec = lambda c=8: torch.rand(c, generator=g()) + 0.5  # noqa: E731

    def nhwc_rows(arg, op):
        return tensor_rows(arg, op=op, dtype=torch.int32, rank=lambda t: t[0])

    def vector_rows(arg, op, of="x"):
        return tensor_rows(arg, op=op, dtype=torch.int64, rank=add_rank, shape=shorter, device_of=of)

    def attention(d=16):
        q = torch.randn(2, 7, 2, d, generator=g())
        return dict(q=q, k=torch.randn(2, 5, 2, d, generator=g()), v=torch.randn(2, 5, 2, d, generator=g()))

    def qkv_rows(op):
        return (tensor_rows("q", op=op, dtype=torch.int32, rank=lambda t: t[0], shape=lambda t: t[..., :15])
                + tensor_rows("k", op=op, dtype=torch.float64, rank=lambda t: t[0], shape=lambda t: t[:, :, :1],
                              device_of="q")
                + tensor_rows("v", op=op, dtype=torch.float16, shape=lambda t: t[:, :4], device_of="q"))

    entries = []
    for op in (False, True):
        prefix, ops = ("op.", torch.ops.litesam) if op else ("", lk.ops)
        sizes_type = DISPATCHER if op else V
        entries += [
            Entry(f"{prefix}layer_norm2d", lambda ops=ops, **kw: ops.layer_norm2d(**kw),
                  lambda: dict(x=nhwc(), weight=vec(), bias=vec(), eps=1e-6),
                  nhwc_rows("x", op) + vector_rows("weight", op) + vector_rows("bias", op)
                  + real_rows("eps", op=op, low=1e-12)
                  + (Bad("x:too many channels", "x", torch.zeros(1, 1, 1, 4097), V),)),
            Entry(f"{prefix}pool_mixer", lambda ops=ops, **kw: ops.pool_mixer(**kw),
                  lambda: dict(x=nhwc(), scale=vec(), shift=vec(), pool_sizes=[3, 5, 7]),
                  nhwc_rows("x", op) + vector_rows("scale", op) + vector_rows("shift", op)
                  + (Bad("pool_sizes:even", "pool_sizes", [4], V), Bad("pool_sizes:empty", "pool_sizes", [], V),
                     Bad("pool_sizes:too big", "pool_sizes", [17], V), Bad("pool_sizes:four", "pool_sizes", [1, 3, 5, 7], V),
                     Bad("pool_sizes:floats", "pool_sizes", [3.0], sizes_type))),
            Entry(f"{prefix}dwconv_act", lambda ops=ops, **kw: ops.dwconv_act(**kw),
                  lambda: dict(x=nhwc(), weight=torch.randn(8, 3, 3, generator=g()), bias=vec(), activation="gelu",
                               residual=False),
                  nhwc_rows("x", op) + tensor_rows("weight", op=op, dtype=torch.int32, rank=lambda t: t[0],
                                                   shape=lambda t: t[:, :2, :2], device_of="x")
                  + vector_rows("bias", op) + choice_rows("activation", op=op)
                  + (Bad("residual:str", "residual", "yes", DISPATCHER if op else T),)),
            Entry(f"{prefix}conv_mlp", lambda ops=ops, **kw: ops.conv_mlp(**kw),
                  lambda: dict(x=nhwc(), w1=torch.randn(16, 8, generator=g()), b1=vec(16), w2=torch.randn(8, 16, generator=g()),
                               b2=vec(), residual=nhwc(), norm_weight=vec(), norm_bias=vec(), norm_eps=1e-6),
                  tensor_rows("x", op=op, dtype=torch.int32, rank=lambda t: t.sum()) + tensor_rows("w1", op=op, dtype=torch.int32, rank=lambda t: t[0],
                                                   shape=lambda t: t[:, :3], device_of="x")
                  + tensor_rows("w2", op=op, shape=lambda t: t[:3], device_of="x") + vector_rows("b1", op, "w1")
                  + vector_rows("b2", op) + tensor_rows("residual", op=op, optional=True, shape=lambda t: t[0],
                                                        dtype=torch.float64)
                  + (Bad("residual:shape", "residual", torch.zeros(2, 5, 6, 7), V),
                     Bad("norm_bias:alone", "norm_bias", None, V, ("norm_weight",)))
                  + real_rows("norm_eps", op=op, low=1e-12)),
            Entry(f"{prefix}kv_pool2d", lambda ops=ops, **kw: ops.kv_pool2d(**kw),
                  lambda: dict(x=nhwc(), pool_sizes=[2, 4]),
                  nhwc_rows("x", op) + (Bad("pool_sizes:zero", "pool_sizes", [0], V),
                                        Bad("pool_sizes:too big", "pool_sizes", [9], V),
                                        Bad("pool_sizes:empty", "pool_sizes", [], V),
                                        Bad("pool_sizes:floats", "pool_sizes", [2.0], sizes_type),
                                        Bad("x:no rows", "x", torch.zeros(1, 0, 3, 8), V))),
            Entry(f"{prefix}pool_mixer_block", lambda ops=ops, **kw: ops.pool_mixer_block(**kw),
                  lambda: dict(x=nhwc(), scale=vec(), shift=vec(), w1=torch.randn(16, 8, generator=g()), b1=vec(16),
                               w2=torch.randn(8, 16, generator=g()), b2=vec(), pool_sizes=[3, 5]),
                  nhwc_rows("x", op) + vector_rows("scale", op) + vector_rows("shift", op)
                  + tensor_rows("w1", op=op, dtype=torch.int32, rank=lambda t: t[0], shape=lambda t: t[:, :3],
                                device_of="x")
                  + tensor_rows("w2", op=op, shape=lambda t: t[:3], device_of="x") + vector_rows("b1", op, "w1")
                  + vector_rows("b2", op)
                  + (Bad("pool_sizes:even", "pool_sizes", [4], V), Bad("pool_sizes:empty", "pool_sizes", [], V),
                     Bad("pool_sizes:floats", "pool_sizes", [3.0], sizes_type))),
        ]
        per_head = ["multi_head_attention"] + (["multi_head_attention_inference"] if op else [])
        entries += [
            Entry(f"{prefix}{name}", lambda ops=ops, name=name, **kw: getattr(ops, name)(**kw),
                  lambda: {**attention(), "scale": 0.25}, qkv_rows(op) + real_rows("scale", op=op, low=1e-30)
                  + (Bad("q:head dim", "q", torch.zeros(2, 7, 2, 24), V), Bad("k:no keys", "k", torch.zeros(2, 0, 2, 16), V,
                                                                                ("k", "v"))))
            for name in per_head]
        projected = ["multi_head_attention_projected"] + (["multi_head_attention_projected_inference"] if op else [])
        entries += [
            Entry(f"{prefix}{name}", lambda ops=ops, name=name, **kw: getattr(ops, name)(**kw),
                  lambda: {**attention(), "scale": 0.25, "wproj": torch.randn(12, 32, generator=g()), "bproj": vec(12),
                           "residual": torch.randn(2, 7, 12, generator=g())},
                  qkv_rows(op) + tensor_rows("wproj", op=op, dtype=torch.int32, rank=add_rank, shape=lambda t: t[:, :5],
                                             device_of="q")
                  + vector_rows("bproj", op, "wproj") + tensor_rows("residual", op=op, optional=True, shape=lambda t: t[:1],
                                                                   dtype=torch.float64))
            for name in projected]
    entries.append(Entry(
        "pooled_kv_attention", lambda **kw: lk.ops.pooled_kv_attention(**kw),
        lambda: dict(x_norm=nhwc(32), wq=torch.randn(32, 32), bq=vec(32), wkv=torch.randn(64, 32), bkv=vec(64),
                     wproj=torch.randn(32, 32), bproj=vec(32), num_heads=2, kv_pool_sizes=(2, 4), residual=None),
        tensor_rows("x_norm", dtype=torch.int32, rank=lambda t: t[0])
        + tensor_rows("wq", rank=add_rank, shape=lambda t: t[:, :5], device_of="x_norm")
        + tensor_rows("wkv", shape=lambda t: t[:5], device_of="x_norm")
        + (Bad("num_heads:zero", "num_heads", 0, V), Bad("num_heads:not a divisor", "num_heads", 3, V),
           Bad("num_heads:float", "num_heads", 2.0, T), Bad("num_heads:str", "num_heads", "2", T),
           Bad("bkv:shape", "bkv", derived(lambda kw: kw["bkv"][:-1]), V),
           Bad("residual:shape", "residual", torch.zeros(2, 5, 6, 31), V),
           Bad("kv_pool_sizes:zero", "kv_pool_sizes", (0,), V))))
    entries.append(Entry("pack_masks", lambda **kw: lk.ops.bitmask.pack_masks(**kw), lambda: dict(masks=bool_masks()),
                         tensor_rows("masks", dtype=torch.uint8, rank=lambda t: t[0, 0])
                         + (Bad("masks:int32", "masks", derived(lambda kw: kw["masks"].int()), T),
                            Bad("masks:float", "masks", derived(lambda kw: kw["masks"].float()), T),
                            Bad("masks:scalar", "masks", torch.tensor(True), V),
                            Bad("masks:int64", "masks", derived(lambda kw: kw["masks"].long()), T))))
    entries.append(Entry("unpack_masks", lambda **kw: lk.ops.bitmask.unpack_masks(**kw),
                         lambda: dict(packed=pack_masks(bool_masks()), width=40),
                         tensor_rows("packed", dtype=torch.int64, rank=lambda t: t[0, 0])
                         + width_rows() + (Bad("width:None", "width", None, T), Bad("width:fraction", "width", 40.5, T))))
    return entries


def backward_op_entries():
    """The registered backward ops are torch.ops too: a wrong-shaped gradient must not reach a kernel."""
    x = lambda: nhwc()  # noqa: E731
    vec = lambda c=8: torch.rand(c) + 0.5  # noqa: E731
    grad_rows = (Bad("grad:shape", "grad", torch.zeros(2, 5, 6, 7), V), Bad("grad:dtype", "grad", torch.zeros(2, 5, 6, 8,
                                                                                                          dtype=torch.float64), T),
                 Bad("grad:numpy", "grad", np.zeros((2, 5, 6, 8), np.float32), DISPATCHER),
                 Bad("grad:device", "grad", torch.zeros(2, 5, 6, 8, device="meta"), V, ("grad", "x")))
    return [
        Entry("op.layer_norm2d_backward", lambda **kw: torch.ops.litesam.layer_norm2d_backward(**kw),
              lambda: dict(grad=torch.ones(2, 5, 6, 8), x=x(), weight=vec(), bias=vec(), eps=1e-6),
              grad_rows + (Bad("weight:shape", "weight", vec(7), V),)),
        Entry("op.pool_mixer_backward", lambda **kw: torch.ops.litesam.pool_mixer_backward(**kw),
              lambda: dict(grad=torch.ones(2, 5, 6, 8), x=x(), scale=vec(), shift=vec(), pool_sizes=[3, 5]),
              grad_rows + (Bad("pool_sizes:even", "pool_sizes", [4], V),)),
        Entry("op.dwconv_act_backward", lambda **kw: torch.ops.litesam.dwconv_act_backward(**kw),
              lambda: dict(grad=torch.ones(2, 5, 6, 8), x=x(), weight=torch.randn(8, 3, 3), bias=vec(),
                           activation="gelu", residual=True),
              grad_rows + (Bad("activation:unknown", "activation", "relu", V),)),
        Entry("op.conv_mlp_backward", lambda **kw: conv_mlp_backward(**kw),
              lambda: dict(grad=torch.ones(2, 5, 6, 8), x=x()), grad_rows),
        Entry("op.kv_pool2d_backward", lambda **kw: torch.ops.litesam.kv_pool2d_backward(**kw),
              lambda: dict(grad=torch.ones(2, 13, 8), x=x(), pool_sizes=[2, 4]),  # 3 x 3 + 2 x 2 tokens
              (Bad("grad:shape", "grad", torch.zeros(2, 12, 8), V),
               Bad("grad:dtype", "grad", torch.zeros(2, 13, 8, dtype=torch.float64), T),
               Bad("grad:numpy", "grad", np.zeros((2, 13, 8), np.float32), DISPATCHER),
               Bad("pool_sizes:zero", "pool_sizes", [0], V))),
        Entry("op.multi_head_attention_backward", lambda **kw: attention_backward(**kw),
              lambda: dict(grad=torch.ones(2, 7, 2, 16)),
              (Bad("grad:shape", "grad", torch.zeros(2, 7, 2, 15), V),
               Bad("grad:dtype", "grad", torch.zeros(2, 7, 2, 16, dtype=torch.float64), T),
               Bad("grad:numpy", "grad", np.zeros((2, 7, 2, 16), np.float32), DISPATCHER),
               Bad("grad:device", "grad", torch.zeros(2, 7, 2, 16, device="meta"), V, ("grad", "q")))),
    ]


def conv_mlp_backward(grad, x):
    """The conv_mlp backward op with the saved tensors of a real forward (its schema has many of them)."""
    w1, b1, w2, b2 = torch.randn(16, 8), torch.rand(16), torch.randn(8, 16), torch.rand(8)
    schema = torch.ops.litesam.conv_mlp_backward.default._schema
    names = [a.name for a in schema.arguments]
    values = dict(grad=grad, x=x, w1=w1, b1=b1, w2=w2, b2=b2, residual=None, has_residual=False, norm_weight=None,
                  norm_bias=None, norm_eps=1e-6)
    return torch.ops.litesam.conv_mlp_backward(*(values[n] for n in names))


def attention_backward(grad):
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, n, 2, 16, generator=g) for n in (7, 5, 5))
    out, lse = torch.ops.litesam.multi_head_attention(q, k, v, 0.25)
    return torch.ops.litesam.multi_head_attention_backward(grad, q, k, v, out, lse, 0.25)


# ---------------------------------------------------------------------------------------------- generators
IMAGE = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)


def image_rows(arg: str, *, tensors_allowed: bool) -> Tuple[Bad, ...]:
    names = (arg, "image", "images[0]")
    rows = (Bad("list", arg, derived(lambda kw: IMAGE.tolist()), T, names),
            Bad("None", arg, None, T, names),
            Bad("float", arg, IMAGE.astype(np.float32), T, names),
            Bad("gray", arg, IMAGE[..., 0], V, names),
            Bad("rgba", arg, np.concatenate([IMAGE, IMAGE[..., :1]], 2), V, names),
            Bad("empty", arg, IMAGE[:0], V, names),
            Bad("chw", arg, np.ascontiguousarray(IMAGE.transpose(2, 0, 1)), V, names))
    if not tensors_allowed:
        rows += (Bad("tensor", arg, torch.from_numpy(IMAGE), T, names),)
    return rows


def generator_rows(*, sam: bool) -> Tuple[Bad, ...]:
    """Constructor arguments of the generators (names as SAM's; SegEvery's are marked)."""
    rows = []
    for name in ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset"):
        rows += [Bad(f"{name}:nan", name, math.nan, V), Bad(f"{name}:str", name, "0.5", T)]
    rows += [Bad("box_nms_thresh:nan", "box_nms_thresh", math.nan, V),
             Bad("box_nms_thresh:above", "box_nms_thresh", 1.5, V),
             Bad("box_nms_thresh:below", "box_nms_thresh", -0.1, V),
             Bad("output_mode:unknown", "output_mode", "png", V)]
    if sam:
        rows += [Bad("points_per_side:zero", "points_per_side", 0, V),
                 Bad("points_per_side:float", "points_per_side", 4.5, T, ("points_per_side",)),
                 Bad("points_per_batch:zero", "points_per_batch", 0, V),
                 Bad("crop_n_layers:negative", "crop_n_layers", -1, V),
                 Bad("crop_nms_thresh:nan", "crop_nms_thresh", math.nan, V),
                 Bad("crop_overlap_ratio:above", "crop_overlap_ratio", 1.5, V),
                 Bad("crop_n_points_downscale_factor:zero", "crop_n_points_downscale_factor", 0, V),
                 Bad("min_mask_region_area:negative", "min_mask_region_area", -1, V),
                 Bad("point_grids:shape", "point_grids", [np.zeros((4, 3))], V),
                 Bad("masks_per_chunk:zero", "masks_per_chunk", 0, V)]
    else:
        rows += [Bad("points_per_image:zero", "points_per_image", 0, V),
                 Bad("ppn_score_threshold:above", "ppn_score_threshold", 1.5, V),
                 Bad("ppn_score_threshold:nan", "ppn_score_threshold", math.nan, V),
                 Bad("prompt:unknown", "prompt", "mask", V), Bad("nms:unknown", "nms", "soft", V),
                 Bad("mask_nms_thresh:above", "mask_nms_thresh", 2.0, V),
                 Bad("batch_size:zero", "batch_size", 0, V), Bad("backend:unknown", "backend", "gpu", V)]
    return tuple(rows)


@pytest.fixture(scope="module")
def tiny_sam_model():
    from tests.tiny_sam import tiny_sam

    return tiny_sam()


@pytest.fixture(scope="module")
def tiny_litesam():
    from litesam_kernels.model import build_litesam

    torch.manual_seed(0)
    return build_litesam("tiny").eval()


IMAGES_ROWS = (Bad("images:array", "images", IMAGE, T, ("images",)), Bad("images:None", "images", None, T),
               Bad("images:bad item", "images", [IMAGE, IMAGE[..., 0]], V, ("images[1]",)))
SAM2_ROWS = generator_rows(sam=True) + (Bad("mask_threshold:nan", "mask_threshold", math.nan, V),
                                        Bad("mask_threshold:str", "mask_threshold", "0", T))
GENERATOR_ROWS = {
    "FastSamAutomaticMaskGenerator": generator_rows(sam=True),
    "FastSamAutomaticMaskGenerator.generate": image_rows("image", tensors_allowed=False),
    "FastSamAutomaticMaskGenerator.generate_batch": IMAGES_ROWS,
    "FastSAM2AutomaticMaskGenerator": SAM2_ROWS,
    "FastSAM2AutomaticMaskGenerator.generate": image_rows("image", tensors_allowed=False),
    "SegmentEverything": generator_rows(sam=False),
    "segment_everything": image_rows("images", tensors_allowed=True)
    + (Bad("images:float tensor", "images", torch.zeros(40, 56, 3), T),),
}


@pytest.fixture(scope="module")
def tiny_sam2_model():
    from tests._sam2_oracle import tiny_sam2

    return tiny_sam2(image_size=256)


def generator_entries(sam_model, litesam_model, sam2_model):
    from litesam_kernels.amg import FastSamAutomaticMaskGenerator
    from litesam_kernels.sam2_amg import FastSAM2AutomaticMaskGenerator
    from litesam_kernels.segment_everything import SegmentEverything, segment_everything

    sam_kw = dict(points_per_side=4, points_per_batch=16, output_mode="binary_mask")
    lite_kw = dict(points_per_image=8, prompts_per_batch=8)
    calls = {
        "FastSamAutomaticMaskGenerator": (lambda **kw: FastSamAutomaticMaskGenerator(sam_model, **kw),
                                          lambda: dict(sam_kw)),
        "FastSamAutomaticMaskGenerator.generate": (
            lambda image: FastSamAutomaticMaskGenerator(sam_model, **sam_kw).generate(image), lambda: dict(image=IMAGE)),
        "FastSamAutomaticMaskGenerator.generate_batch": (
            lambda images: FastSamAutomaticMaskGenerator(sam_model, **sam_kw).generate_batch(images),
            lambda: dict(images=[IMAGE])),
        "FastSAM2AutomaticMaskGenerator": (lambda **kw: FastSAM2AutomaticMaskGenerator(sam2_model, **kw),
                                           lambda: dict(sam_kw)),
        "FastSAM2AutomaticMaskGenerator.generate": (
            lambda image: FastSAM2AutomaticMaskGenerator(sam2_model, **sam_kw).generate(image),
            lambda: dict(image=IMAGE)),
        "SegmentEverything": (lambda **kw: SegmentEverything(litesam_model, **kw), lambda: dict(lite_kw)),
        "segment_everything": (lambda images: segment_everything(litesam_model, images, **lite_kw),
                               lambda: dict(images=[IMAGE])),
    }
    return [Entry(name, call, valid, GENERATOR_ROWS[name]) for name, (call, valid) in calls.items()]


# ---------------------------------------------------------------------------------------------- the CLI
CLI_ROWS = (
    ("--points-per-side", "0"), ("--points-per-side", "-3"), ("--points-per-side", "1.5"),
    ("--pred-iou-thresh", "nan"), ("--pred-iou-thresh", "inf"), ("--stability-score-offset", "x"),
    ("--box-nms-thresh", "1.5"), ("--box-nms-thresh", "-0.1"), ("--crop-n-layers", "-1"),
    ("--min-mask-region-area", "-1"), ("--batch-size", "0"), ("--max-side", "0"), ("--num-workers", "-1"),
    ("--dtype", "fp8"), ("--model", "sam3"), ("--format", "yaml"), ("--ray-gpus-per-actor", "x"),
    ("--prefetch-factor", "0"), ("--ray-actors", "0"),
)


# ---------------------------------------------------------------------------------------------- the tests
def _expected_message(row: Bad) -> Tuple[str, ...]:
    return row.names or (row.arg,)


def _check_raises(entry: Entry, row: Bad) -> None:
    kwargs = row.replaced(entry.valid())
    if row.error == DISPATCHER:
        with pytest.raises(RuntimeError) as info:
            entry.call(**kwargs)
        message = str(info.value)
        assert any(f"for argument '{n}'" in message for n in _expected_message(row)), message
        return
    with pytest.raises((TypeError, ValueError)) as info:
        entry.call(**kwargs)
    message = str(info.value)
    expected = row.error if isinstance(row.error, tuple) else (row.error,)
    assert isinstance(info.value, expected), \
        f"{type(info.value).__name__} instead of {'/'.join(e.__name__ for e in expected)}: {message}"
    assert any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message) for n in _expected_message(row)), \
        f"the message does not name {_expected_message(row)}: {message}"


def _params(entries):
    params = []
    for entry in entries:
        params.append(pytest.param(entry, None, id=f"{entry.name}-valid"))
        for row in entry.bad:
            params.append(pytest.param(entry, row, id=f"{entry.name}-{row.label}"))
    return params


def _op_entries():
    return (box_nms_entries() + mask_nms_entries() + postprocess_entries() + rle_entries()
            + small_region_entries() + ppn_entries() + dense_entries() + backward_op_entries())


OP_ENTRIES = _op_entries()


@pytest.mark.parametrize("entry,row", _params(OP_ENTRIES))
def test_op_entry_points(entry, row):
    if row is None:
        entry.call(**entry.valid())  # the valid call works: every row's error comes from its one bad argument
        return
    _check_raises(entry, row)


def test_every_op_and_custom_op_has_an_entry_with_ten_rows():
    names = {e.name: e for e in OP_ENTRIES}
    public = [n for n in lk.ops.__all__ if n not in ("PPNPrompts", "PostprocessedMasks", "fold_batchnorm",
                                                      "fold_batchnorm_into_linear")]
    custom = [n for n in dir(torch.ops.litesam) if not n.startswith("_") and callable(getattr(torch.ops.litesam, n))
              and not n.startswith("__")]
    custom = [n for n in custom if isinstance(getattr(torch.ops.litesam, n), torch._ops.OpOverloadPacket)]
    missing = [n for n in public if n not in names] + [f"op.{n}" for n in custom if f"op.{n}" not in names]
    assert not missing, f"entry points without a bad-input entry: {missing}"
    thin = [n for n, e in names.items() if len(e.bad) < 10 and not n.startswith(("op.", "area", "coco"))
            and "backward" not in n]
    assert not thin, f"entries with fewer than 10 bad-input rows: {thin}"


@pytest.fixture(scope="module")
def generator_table(tiny_sam_model, tiny_litesam, tiny_sam2_model):
    return {e.name: e for e in generator_entries(tiny_sam_model, tiny_litesam, tiny_sam2_model)}


def _generator_params():
    """The rows by label (the entries need the models, built once per module by the fixtures)."""
    labels = {name: [r.label for r in rows] for name, rows in GENERATOR_ROWS.items()}
    params = []
    for name, row_labels in labels.items():
        params.append(pytest.param(name, None, id=f"{name}-valid"))
        params += [pytest.param(name, label, id=f"{name}-{label}") for label in row_labels]
    return params


@pytest.mark.parametrize("name,label", _generator_params())
def test_generator_entry_points(generator_table, name, label):
    entry = generator_table[name]
    if label is None:
        entry.call(**entry.valid())
        return
    _check_raises(entry, next(r for r in entry.bad if r.label == label))


@pytest.mark.parametrize("option,value", CLI_ROWS, ids=[f"{o}={v}" for o, v in CLI_ROWS])
def test_cli_rejects_bad_option_values(tmp_path, capsys, option, value):
    """Exit status 2 and a usage error that names the option: no traceback, no model built."""
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(IMAGE).save(image)
    status = cli.main([str(image), "--out", str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert option in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- call_op
class TestCallOp:
    """litesam_kernels._checks.call_op: the one check the wrappers put before their torch.ops call."""

    def test_python_types_the_schema_rejects_raise_type_error_naming_the_argument(self):
        from litesam_kernels._checks import call_op

        boxes, scores = boxes_and_scores()
        with pytest.raises(TypeError, match="boxes must be a torch.Tensor, got ndarray"):
            call_op(torch.ops.litesam.nms, boxes.numpy(), scores, 0.5)
        with pytest.raises(TypeError, match="iou_threshold must be a real number, got str"):
            call_op(torch.ops.litesam.nms, boxes, scores, "0.5")
        heat, regression = torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, 4)
        with pytest.raises(TypeError, match=r"image_sizes must be a torch.Tensor or None, got list"):
            call_op(torch.ops.litesam.ppn_decode, heat, regression, [[64, 64]], 3, 0.1, 16.0)
        with pytest.raises(TypeError, match="k must be an int, got float"):
            call_op(torch.ops.litesam.ppn_decode, heat, regression, None, 3.0, 0.1, 16.0)
        with pytest.raises(ValueError, match="k must fit in int64"):
            call_op(torch.ops.litesam.ppn_decode, heat, regression, None, 2**63, 0.1, 16.0)
        with pytest.raises(TypeError, match="input_size must be a list of ints, got list"):
            call_op(torch.ops.litesam.postprocess_masks, torch.zeros(1, 4, 4), [4.0, 4.0], [4, 4], 0.0, 1.0, False, 4)
        with pytest.raises(TypeError, match="kernel must be a str, got int"):
            call_op(torch.ops.litesam.matrix_nms, pack_masks(bool_masks()), torch.rand(4), None, 1, 2.0, 40)

    def test_what_the_dispatcher_takes_passes_through(self):
        from litesam_kernels._checks import call_op

        boxes, scores = boxes_and_scores()
        want = torch.ops.litesam.nms(boxes, scores, 0.5)
        for threshold in (0.5, np.float32(0.5), torch.tensor(0.5)):  # numpy and 1-element tensor scalars
            assert torch.equal(call_op(torch.ops.litesam.nms, boxes, scores, threshold), want)
        masks = bool_masks()
        assert torch.equal(call_op(torch.ops.litesam.masks_to_boxes, masks, None), lk.ops.masks_to_boxes(masks))
        got = call_op(torch.ops.litesam.postprocess_masks, torch.zeros(1, 4, 4), (4, np.int64(4)), torch.Size([5, 5]),
                      0.0, 1.0, np.bool_(False), 4)
        assert got[0].shape == (1, 5, 5)

    def test_traced_by_torch_compile(self):
        from litesam_kernels._checks import call_op

        torch._dynamo.reset()
        boxes, scores = boxes_and_scores()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            compiled = torch.compile(lambda b, s: call_op(torch.ops.litesam.nms, b, s, 0.5), fullgraph=True,
                                     backend="eager")
            assert torch.equal(compiled(boxes, scores), torch.ops.litesam.nms(boxes, scores, 0.5))
