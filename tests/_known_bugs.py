"""Bad-input failures found in files other helpers are still changing, as ``{entry: {row label: reason}}``.

The bad-input table (tests/test_bad_input.py) marks these rows ``xfail(strict=True)``: when the proposed fix
lands the row passes, the strict xfail fails, and its line here is deleted. Each reason is "<bug>: <file>
(fix)"; the report of issue 14 gives the exact change.
"""
from dataclasses import replace

NON_TENSOR = ("numpy", "list", "float")


def _rows(args, labels, reason):
    return {f"{a}:{label}": reason for a in args for label in labels}


CALL_OP = ("wrapper hands its arguments straight to torch.ops, so a non-tensor gets the dispatcher's RuntimeError: "
           "{file} (wrap the call in litesam_kernels._checks.call_op)")
KNOWN = {
    "nms": _rows(("boxes", "scores"), NON_TENSOR, CALL_OP.format(file="ops/nms.py")),
    "batched_nms": _rows(("boxes", "scores", "idxs"), NON_TENSOR, CALL_OP.format(file="ops/nms.py")),
    "mask_nms": _rows(("scores", "idxs"), NON_TENSOR, CALL_OP.format(file="ops/mask_nms.py")),
    "matrix_nms": {**_rows(("scores", "idxs"), NON_TENSOR, CALL_OP.format(file="ops/mask_nms.py")),
                   "kernel:int": CALL_OP.format(file="ops/mask_nms.py")},
    "op.mask_iou": {"packed_b:device": "the op body checks each stack but not that both are on one device: "
                                       "ops/mask_nms.py (check_same_device in _mask_iou_op and its fake)"},
    "stability_score": _rows(("mask_logits",), NON_TENSOR, CALL_OP.format(file="ops/mask_postprocess.py")),
    "masks_to_boxes": {**_rows(("masks",), NON_TENSOR, CALL_OP.format(file="ops/mask_postprocess.py")),
                       "width:float": CALL_OP.format(file="ops/mask_postprocess.py")},
    "postprocess_masks": {
        **_rows(("low_res_logits",), NON_TENSOR, CALL_OP.format(file="ops/mask_postprocess.py")),
        "image_size:past int64": CALL_OP.format(file="ops/mask_postprocess.py"),
        "image_size:huge": "image_size has no upper limit: 2**40 reaches a 4 TB allocation: ops/mask_postprocess.py "
                           "(MAX_IMAGE_SIZE in _positive_int's caller and _check_postprocess)"},
    "op.stability_score": _rows(("mask_threshold", "offset"), ("nan",),
                                "the op body does not check its thresholds (NaN compares False everywhere: a "
                                "silent all-NaN answer): ops/mask_postprocess.py (check_real in _check_logits' caller)"),
    "op.postprocess_masks": {
        **_rows(("input_size", "original_size"), ("three", "zero", "negative"),
                "the op body does not check the sizes (three entries are silently cut to two, a zero or negative "
                "size reaches the kernel or torch's arange): ops/mask_postprocess.py (_size in _check_postprocess)"),
        **_rows(("mask_threshold", "stability_offset"), ("nan",),
                "the op body does not check its thresholds: ops/mask_postprocess.py (check_real in _check_postprocess)"),
        "image_size:huge": "image_size has no upper limit: ops/mask_postprocess.py (MAX_IMAGE_SIZE)"},
    "rle_to_mask": _rows(("rle",), ("list", "None", "no counts", "no size", "size of 3", "negative size",
                                    "compressed counts"),
                         "the RLE dict is not validated (KeyError, unpacking and numpy errors that do not name it): "
                         "ops/rle.py (one _check_rle used by rle_to_mask, area_from_rle, coco_encode_rle)"),
    "area_from_rle": _rows(("rle",), ("list", "None", "no counts", "compressed counts"),
                           "the RLE dict is not validated: ops/rle.py (_check_rle)"),
    "coco_encode_rle": {"rle:list": "the RLE dict is not validated: ops/rle.py (_check_rle)",
                        "rle:no size": "the RLE dict is not validated: ops/rle.py (_check_rle)",
                        "rle:short counts": "counts that do not sum to h * w are encoded silently into a wrong COCO "
                                            "RLE: ops/rle.py (_check_rle)"},
    "ppn_decode": {**_rows(("heatmap_logits", "box_regression", "image_sizes"), NON_TENSOR,
                           CALL_OP.format(file="ops/ppn_decode.py")),
                   "k:past int64": CALL_OP.format(file="ops/ppn_decode.py"),
                   "k:huge": "k has no upper limit: 2**40 reaches a 17 TB allocation (and the Triton kernel takes k "
                             "as int32 and sorts next_power_of_2(k) keys in one program): ops/ppn_decode.py (MAX_K)"},
    "op.ppn_decode": {"k:huge": "k has no upper limit: ops/ppn_decode.py (MAX_K in _check_k)"},
    "unpack_masks": _rows(("width",), ("float", "fraction"),
                          "width goes through check_real, so 40.5 is silently truncated to 40: ops/bitmask.py "
                          "(an int check, as _as_packed in ops/mask_nms.py does)"),
    "op.layer_norm2d_backward": _rows(("grad",), ("shape", "dtype", "device"),
                                      "backward op without input checks: ops/layer_norm.py (_check_inputs + "
                                      "_checks.check_gradient in the op and its fake)")
    | {"weight:shape": "backward op without input checks: ops/layer_norm.py"},
    "op.pool_mixer_backward": _rows(("grad",), ("shape", "dtype", "device"),
                                    "backward op without input checks: ops/pool_mixer.py (_check_inputs + "
                                    "check_gradient)")
    | {"pool_sizes:even": "backward op without input checks: ops/pool_mixer.py"},
    "op.dwconv_act_backward": _rows(("grad",), ("shape", "dtype", "device"),
                                    "backward op without input checks: ops/conv_block.py (_check_inputs + "
                                    "check_gradient)")
    | {"activation:unknown": "backward op without input checks: ops/conv_block.py"},
}

_SAM_ARGS = ("constructor arguments are not checked (NaN and out-of-range thresholds are accepted, a zero "
             "points_per_side divides by zero): amg.py / engine/frontend.py (check_generator_arguments in _setup)")
KNOWN["FastSamAutomaticMaskGenerator"] = {label: _SAM_ARGS for label in (
    "pred_iou_thresh:nan", "pred_iou_thresh:str", "stability_score_thresh:nan", "stability_score_thresh:str",
    "stability_score_offset:nan", "stability_score_offset:str", "box_nms_thresh:nan", "box_nms_thresh:above",
    "box_nms_thresh:below", "points_per_side:zero", "points_per_side:float", "crop_n_layers:negative",
    "crop_nms_thresh:nan", "crop_overlap_ratio:above", "crop_n_points_downscale_factor:zero",
    "min_mask_region_area:negative")}
KNOWN["SegmentEverything"] = {label: ("thresholds are not checked: segment_everything.py (check_real for each "
                                      "threshold in __init__)") for label in (
    "pred_iou_thresh:nan", "pred_iou_thresh:str", "stability_score_thresh:nan", "stability_score_thresh:str",
    "stability_score_offset:nan", "stability_score_offset:str", "box_nms_thresh:nan", "box_nms_thresh:above",
    "box_nms_thresh:below", "ppn_score_threshold:above", "ppn_score_threshold:nan")}


def apply_known(entries):
    return [replace(e, known=KNOWN.get(e.name, {})) for e in entries]
