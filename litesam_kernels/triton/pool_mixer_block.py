"""LiteViT's pool-mixer block fused in one Triton kernel (channels-last, C <= 64): the pool mixer, then the MLP.

``y = pool_mixer(x, scale, shift)`` (BN1 folded into scale/shift, see ``triton/pool_mixer.py``) and
``z = y + W2 GELU(W1' y + b1') + b2`` (BN2 folded into W1'/b1'), the MLP's hidden activation never leaves the chip.

The kernel is the pool mixer's separable walk with another emit: every completed row tile of y (BLOCK_W pixels x
all C channels, rounded to the activation dtype as the unfused ops store it) feeds the two dots directly, with
W1' and W2 loaded once per program and kept on chip for the whole walk, so y never reaches memory. Memory: x read
once and z written once, 2 x itemsize bytes per element (the unfused pair moves 4 x itemsize: y written by the
mixer and read again by the MLP), plus the weights once per program. Compute: 4 C HID FLOPs per pixel in the two
dots (512 per element at C = 32, HID = 128, about what an H200 delivers per byte of copy bandwidth), so the
block sits near the ridge point of both limits. Tensor cores run the dots: fp16/bf16 operands, and fp32 under the
precision ``_precision.dot_precision(dtype, "conv")`` (TF32 when cuDNN would use it for the eager 1x1 convs).
GELU is ``_activations.gelu`` (tanh form for 16-bit activations, exact erf otherwise).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles
from litesam_kernels.triton import pool_mixer as mixer
from litesam_kernels.triton._activations import gelu
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

MAX_CHANNELS = 64  # all C channels of a row tile are one dot operand
MAX_HIDDEN = 256  # the weights (2 C HID values) stay in shared memory for the whole walk

# TILE = BLOCK_W x BLOCK_C (BLOCK_C the padded channels): the walk's ring holds 2 RMAX + 1 fp32 tiles of TILE / threads
# elements per thread, next to the MLP's operands; BLOCK_H hidden units per pair of dots (at most; fewer when HID is
# smaller). One family per channel class, each configuration free of spills for fp16, bf16 and fp32 (AOT report):
# at 64 channels only 8-pixel tiles leave room for the MLP beside the ring.
FWD_CONFIGS = {
    32: LaunchConfigs("pool_mixer_block.fwd_c32", [
        LaunchConfig({"TILE": 1024, "BLOCK_H": 64, "ROWS": 32}, num_warps=4, num_stages=1),
        LaunchConfig({"TILE": 1024, "BLOCK_H": 64, "ROWS": 32}, num_warps=8, num_stages=1),
        LaunchConfig({"TILE": 512, "BLOCK_H": 64, "ROWS": 64}, num_warps=2, num_stages=1),
    ]),
    64: LaunchConfigs("pool_mixer_block.fwd_c64", [
        LaunchConfig({"TILE": 512, "BLOCK_H": 128, "ROWS": 32}, num_warps=4, num_stages=1),
        LaunchConfig({"TILE": 512, "BLOCK_H": 256, "ROWS": 64}, num_warps=4, num_stages=1),
    ]),
}


@triton.jit
def _block_emit(args, h, pooled, OPTS: tl.constexpr):
    """z = y + W2 GELU(W1' y + b1') + b2 for row h, y = x + scale (pooled - x) in the activation dtype.

    The MLP runs transposed, z^T = y^T + W2 GELU(W1' y^T + b1') + b2, hidden units in chunks of BLOCK_H (one
    (W1' chunk, b1' chunk, W2 chunk) per entry of the weight tuples): the dots' M is the hidden and channel
    dimension, so the row tile's pixels (N) can be as few as the walk's registers allow; Triton spreads the
    warps of chained dots along M only, and pixels as M would have to be 16 per warp."""
    x_img, out_img, W, C, ws, cs, m2, scale, w1, b1, w2, b2 = args
    PREC: tl.constexpr = OPTS[0]
    FAST: tl.constexpr = OPTS[1]
    ACC: tl.constexpr = pooled.dtype
    DT: tl.constexpr = out_img.dtype.element_ty
    offs = (h * W + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_img + offs, mask=m2, other=0.0).to(ACC)
    y = (x + scale * (pooled - x)).to(DT)  # zero in the padded channels (scale is 0 there)
    yt = tl.trans(y)
    zt = yt.to(ACC) + b2
    for i in tl.static_range(len(w1)):
        at = tl.dot(w1[i], yt, input_precision=PREC, out_dtype=ACC) + b1[i]
        zt = tl.dot(w2[i], gelu(at, FAST).to(DT), zt, input_precision=PREC, out_dtype=ACC)
    tl.store(out_img + offs, tl.trans(zt).to(DT), mask=m2)


@triton.jit
def _pool_mixer_block_fwd_kernel(x_ptr, scale_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, H, W, C, HID,
                                 R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                                 NUM_POOLS: tl.constexpr, PW0: tl.constexpr, PW1: tl.constexpr,
                                 PW2: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, ROWS: tl.constexpr,
                                 TILE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                                 HID_CHUNKS: tl.constexpr):
    ACC: tl.constexpr = scale_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h0, h_end, ws, cs, w_ok, c_ok, image_base, _partial_row = tiles.nhwc_strip_tile(H, W, C, ROWS, BLOCK_W, BLOCK_C)
    # the MLP weights, once per program, in HID_CHUNKS chunks of BLOCK_H hidden units (zero in the padding):
    # W1' (BLOCK_H x C), b1' and W2 (C x BLOCK_H); each is one dot operand that stays in shared memory
    w1 = ()
    b1 = ()
    w2 = ()
    for i in tl.static_range(HID_CHUNKS):
        hs = i * BLOCK_H + tl.arange(0, BLOCK_H)
        h_ok = hs < HID
        w1 = w1 + (tl.load(w1_ptr + hs[:, None] * C + cs[None, :], mask=h_ok[:, None] & c_ok[None, :], other=0.0),)
        b1 = b1 + (tl.load(b1_ptr + hs, mask=h_ok, other=0.0)[:, None],)
        w2 = w2 + (tl.load(w2_ptr + cs[:, None] * HID + hs[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0),)
    b2 = tl.load(b2_ptr + cs, mask=c_ok, other=0.0)[:, None]
    x_img = x_ptr + image_base
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)[None, :]
    emit_args = (x_img, out_ptr + image_base, W, C, ws, cs, w_ok[:, None] & c_ok[None, :], scale, w1, b1, w2, b2)
    mixer.forward_walk(x_img, H, W, C, h0, h_end, ws, cs, c_ok, _block_emit, emit_args, (PREC, FAST),
                       R0, R1, R2, RMAX, NUM_POOLS, PW0, PW1, PW2, BLOCK_W, BLOCK_C, ACC)


def block_c(channels):
    """The padded channels (>= 16, the smallest dot dimension)."""
    return max(16, triton.next_power_of_2(channels))


def configs_for(channels):
    """The launch-configuration family of this many channels."""
    return FWD_CONFIGS[32 if block_c(channels) <= 32 else 64]


def hidden_chunks(config, hidden):
    """(BLOCK_H, HID_CHUNKS) of a configuration: chunks of at most the configuration's BLOCK_H hidden units."""
    block_h = min(config.meta["BLOCK_H"], max(16, triton.next_power_of_2(hidden)))
    return block_h, triton.cdiv(hidden, block_h)


def fits(channels, hidden):
    """Whether one kernel can hold a row tile's channels and hidden units (else the op runs the two ops)."""
    return channels <= MAX_CHANNELS and hidden <= MAX_HIDDEN


def pool_mixer_block_forward(x, scale, w1, b1, w2, b2, pool_sizes, precision, fast_gelu):
    """x (B, H, W, C) contiguous; scale (C,), b1 (HID,), b2 (C,) in the accumulation dtype; w1 (HID, C) and
    w2 (C, HID) in x's dtype, contiguous; ``precision`` the fp32 dot precision."""
    tiles.check_image_size("x", x.shape)
    out = torch.empty_like(x)
    b, h, w, c = x.shape
    hid = w1.shape[0]
    bc = block_c(c)

    def run(config):
        block_h, chunks = hidden_chunks(config, hid)
        grid = tiles.strip_grid(x.shape, config.meta["TILE"] // bc, bc, config.meta["ROWS"])
        _pool_mixer_block_fwd_kernel[grid](x, scale, w1, b1, w2, b2, out, h, w, c, hid, **mixer.pools(pool_sizes),
                                           PREC=precision, FAST=fast_gelu, BLOCK_C=bc,
                                           **dict(config.kwargs(), BLOCK_H=block_h), HID_CHUNKS=chunks)
        return out

    return configs_for(c).launch((tuple(x.shape), hid, x.dtype, tuple(pool_sizes), precision), run)


def _aot_entries(dtype, channels, hidden):
    sig = {"x_ptr": f"*{dtype}", "scale_ptr": "*fp32", "w1_ptr": f"*{dtype}", "b1_ptr": "*fp32",
           "w2_ptr": f"*{dtype}", "b2_ptr": "*fp32", "out_ptr": f"*{dtype}",
           "H": "i32", "W": "i32", "C": "i32", "HID": "i32"}
    const = dict(mixer.pools((3, 5, 7)), PREC="tf32", FAST=dtype != "fp32", BLOCK_C=block_c(channels))
    family = configs_for(channels)
    sig.update({k: "constexpr" for k in (*const, *family.configs[0].meta, "HID_CHUNKS")})
    entries = []
    for config, (kernel, signature, constexprs, options) in zip(
            family.configs, family.aot_entries(_pool_mixer_block_fwd_kernel, tiles.aot_signature(
                sig, ("H", "W", "C", "HID")), const)):
        block_h, chunks = hidden_chunks(config, hidden)
        entries.append((kernel, signature, dict(constexprs, BLOCK_H=block_h, HID_CHUNKS=chunks), options))
    return entries


# For the sm_90a AOT check in CI: every launch configuration at LiteViT's stage 1 and 2 shapes (fp32 under TF32,
# the default of torch.backends.cudnn.allow_tf32).
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for c, hid in ((32, 128), (64, 256))
               for e in _aot_entries(dt, c, hid)]
