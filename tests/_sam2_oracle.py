"""sam2 on this CPU machine, for the SAM 2 drop-in tests and benchmarks: a random-weight hiera-tiny whose
masks depend on the prompt, a real photo, an OpenCV oracle for sam2's CUDA-only connected components, and
a cache of identical image-encoder calls.

- ``tiny_sam2(image_size)``: ``build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None)`` (0.2 s),
  at 1024 px or (``sam2_generator`` explains) 512 px. Random
  decoders give prompt-independent, speckled masks; with the decoder's weights rescaled (``tiny_sam2``'s
  comments) masks follow the photo's content and differ per prompt and per mask token, in sizes and
  stability, with holes and sprinkles, so every filter (IoU, stability, crop edge, NMS, small regions)
  decides something.
- ``cpu_connected_components``: sam2's ``get_connected_components(mask (N, 1, H, W))`` -> (labels, areas),
  8-connected, from ``cv2.connectedComponentsWithStats``. Without ``sam2._C`` sam2 skips hole filling
  with a warning; with this patched in, sam2's own filling runs and is the oracle for ours.
- ``EncoderCache``: the image encoder is deterministic, and both generators encode the same crops; caching
  outputs by the exact input bits halves the tests' time. A preprocessing difference misses the cache and
  shows up as different records.
"""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def tiny_sam2(seed: int = 0, image_size: int = 1024, config: str = CONFIG, device: str = "cpu"):
    """A random-weight SAM 2 (hiera-tiny unless ``config`` names another) whose masks follow the prompt."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config, ckpt_path=None, device=device,
                       hydra_overrides_extra=[f"++model.image_size={image_size}"])
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        # Random transposed convolutions and high-res features make every pixel noise: no high-res features,
        # and upscaling that repeats each embedding cell (channel c -> c), so masks follow the 64x64
        # embedding, i.e. the photo's content.
        for conv in (decoder.conv_s0, decoder.conv_s1):
            conv.weight.zero_()
            conv.bias.zero_()
        upscaling = decoder.output_upscaling
        for deconv in (upscaling[0], upscaling[3]):
            deconv.weight.zero_()
            deconv.bias.zero_()
            for c in range(deconv.weight.shape[1]):
                deconv.weight[c, c] = 1.0
        # Large hypernetwork outputs: logits of O(10..100), so the masks depend on the prompt and their
        # stability spreads. Channel 0 of the upscaled embedding is made constant (GELU(1)) and weighted
        # by a negative bias per mask token: a logit offset that sets the mask sizes.
        upscaling[3].weight[:, 0] = 0
        upscaling[3].bias[0] = 1.0
        for token, mlp in enumerate(decoder.output_hypernetworks_mlps):
            mlp.layers[-1].weight.mul_(300)
            mlp.layers[-1].bias.zero_()
            mlp.layers[-1].weight[0] = 0
            mlp.layers[-1].bias[0] = -200.0 if token == 1 else -16.0
    return model.eval()


def sam2_generator(model, **kwargs):
    """sam2's ``SAM2AutomaticMaskGenerator``. Its predictor hard-codes the feature sizes of a 1024 px model
    (256, 128, 64); for a smaller ``image_size`` (the tests' 512: 2-3x faster on CPU) they are set to the
    model's (image_size / 4, / 8, / 16), the only change to sam2's code path."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, **kwargs)
    generator.predictor._bb_feat_sizes = [(model.image_size // s,) * 2 for s in (4, 8, 16)]
    return generator


def photo(size=(96, 128)):
    """Real photos on a flat grey ground: scikit-image's astronaut (top left) and coffee (bottom right),
    resized with PIL into an (H, W) image. With random weights masks follow image content, so on a whole
    photo they span the image; two separate photos give masks of different places and sizes (crops keep
    some away from their inner edges)."""
    from PIL import Image
    from skimage import data

    height, width = size
    image = np.full((height, width, 3), 120, np.uint8)
    for picture, (top, left, bottom, right) in ((data.astronaut(), (0.08, 0.05, 0.40, 0.31)),
                                                (data.coffee(), (0.62, 0.66, 0.92, 0.94))):
        y0, x0, y1, x1 = int(top * height), int(left * width), int(bottom * height), int(right * width)
        image[y0:y1, x0:x1] = np.asarray(Image.fromarray(picture).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    return image


def cpu_connected_components(mask: torch.Tensor):
    """sam2.utils.misc.get_connected_components on the CPU (OpenCV, 8-connectivity)."""
    import cv2

    flat = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(flat.shape, np.int32)
    areas = np.zeros(flat.shape, np.int32)
    for i in range(flat.shape[0]):
        _, label, stats, _ = cv2.connectedComponentsWithStats(flat[i, 0], connectivity=8)
        labels[i, 0] = label
        areas[i, 0] = np.where(label > 0, stats[label, cv2.CC_STAT_AREA], 0)
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


@contextlib.contextmanager
def sam2_cpu_connected_components():
    """Patch the oracle into sam2 (its post-processing imports the function at call time)."""
    import sam2.utils.misc as misc

    real = misc.get_connected_components
    misc.get_connected_components = cpu_connected_components
    try:
        yield
    finally:
        misc.get_connected_components = real


class EncoderCache(torch.nn.Module):
    """Memoise ``model.image_encoder`` by the exact bits of its input (see the module docstring)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.image_encoder
        self.outputs = {}
        self.calls = self.hits = 0
        object.__setattr__(self, "model", model)  # not a submodule: the model owns this cache

    def forward(self, x: torch.Tensor):
        self.calls += 1
        key = (tuple(x.shape), str(x.dtype), hashlib.sha1(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest())
        if key in self.outputs:
            self.hits += 1
        else:
            self.outputs[key] = self.encoder(x)
        out = self.outputs[key]
        # sam2 edits the dict it gets (forward_image replaces backbone_fpn entries): hand out copies.
        return {k: (list(v) if isinstance(v, list) else v) for k, v in out.items()}

    @contextlib.contextmanager
    def installed(self):
        self.model.image_encoder = self
        try:
            yield self
        finally:
            self.model.image_encoder = self.encoder
