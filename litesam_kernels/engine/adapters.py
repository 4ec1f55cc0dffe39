"""Model adapters: what the engine needs from a SAM-family model, for segment_anything's ``Sam``, sam2's
``SAM2Base`` and our ``LiteSAM``.

An adapter does four things, each exactly as the model's own predictor does it (so the drop-ins give
upstream's records bit for bit):

- ``encode(crop_images)``: preprocess a batch of crops and run the image encoder -> one :class:`Encoded` per
  crop (features, the crop's size and the resized size inside the model input);
- ``grid_prompts(points, encoded)``: SAM's point grid of one crop (crop pixels, float64) -> :class:`Prompts`
  in the model's input frame (SAM 1: ``ResizeLongestSide.apply_coords`` in float64; SAM 2: float32
  ``transform_coords(normalize=True)``), with the points the records report;
- ``decode(encoded, prompts, multimask_output, mask_input)``: the prompt encoder and mask decoder for the
  prompts of one or several crops (the image embedding is the model's: repeated per prompt by SAM's and
  SAM 2's decoders, broadcast by LiteSAM's batched decoder) -> per crop low-res logits (N, M, h, w) and
  predicted IoUs (N, M);
- the resize plan of post-processing: SAM 1 / Lite-SAM resize twice (to the square input, crop the padding,
  to the crop size), SAM 2 once from the low-res logits (as float32), and ``upscale`` for the unfused path.

The adapters duck-type the models (attribute names of the upstream classes): the engine imports neither
segment_anything nor sam2.

Half precision: in a float16/bfloat16 model the prompt encoders (all three) multiply float32 coordinates by
a half-precision Gaussian matrix, which torch refuses; prompts are therefore encoded under
``torch.autocast(dtype=model dtype)``, which casts the coordinates to the model's dtype as
segment-anything-fast and HF transformers do. Images are cast to the image encoder's dtype.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels.engine.geometry import longest_side_coords, normalized_coords, resized_shape
from litesam_kernels.ops.mask_postprocess import sam_upscale

HALF_DTYPES = (torch.float16, torch.bfloat16)
# SAM 2's ImageNet normalisation (sam2.utils.transforms.SAM2Transforms), applied to [0, 1] pixels.
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)
# SAM 2's predictor clamps the low-res logits it hands back as mask prompts (the m2m pass).
SAM2_MASK_INPUT_CLAMP = 32.0


@dataclass
class Encoded:
    """One crop after the image encoder."""

    crop_size: Tuple[int, int]   # (h, w) of the crop, image pixels
    input_size: Tuple[int, int]  # (h, w) of the resized crop inside the model input
    features: Any                # model-specific (an embedding; SAM 2: the embedding and high-res features)
    heads: Any = None            # Lite-SAM: (AutoPPN heatmap logits, box regression), (1, ...) each


@dataclass
class Prompts:
    """The prompts of one crop: N points and/or boxes in the model's input frame."""

    record_points: torch.Tensor            # (N, 2) crop pixels, in the dtype the records report
    points: Optional[torch.Tensor] = None  # (N, 2) model input frame
    boxes: Optional[torch.Tensor] = None   # (N, 4) XYXY model input frame
    valid: Optional[torch.Tensor] = None   # (N,) bool, None: all valid

    def __len__(self) -> int:
        return self.record_points.shape[0]

    def slice(self, start: int, stop: int) -> "Prompts":
        part = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Prompts(part(self.record_points), part(self.points), part(self.boxes), part(self.valid))


def module_dtype(module: torch.nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a module's first floating parameter (what its inputs must be cast to)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return default


def prompt_encoding(dtype: torch.dtype, device: torch.device):
    """Context for the prompt encoder of a model in ``dtype`` (see the module docstring)."""
    if dtype in HALF_DTYPES and not torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


class _Adapter:
    """Shared plumbing: device, dtype, the cached dense positional encoding."""

    #: dtype of the point coordinates the records report (upstream's).
    record_point_dtype = torch.float32
    #: True when ``decode`` runs the prompts of several crops in one decoder call.
    decodes_crops_together = False

    def __init__(self, model) -> None:
        self.model = model
        self._dense_pe = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return module_dtype(self.model)

    def reset(self) -> None:
        """Forget what was prepared for one run (the dense positional encoding): weights may change."""
        self._dense_pe = None

    def dense_pe(self, prompt_encoder) -> torch.Tensor:
        if self._dense_pe is None:
            with prompt_encoding(self.dtype, self.device):
                self._dense_pe = prompt_encoder.get_dense_pe()
            self._dense_pe = self._dense_pe.to(self.dtype)
        return self._dense_pe

    def logits_for_upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """The low-res logits post-processing resizes (their dtype is the model's unless overridden)."""
        return low_res

    def upscale(self, low_res: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Unfused post-processing: (N, M, h, w) low-res -> (N, M, H, W) logits at the crop size."""
        input_size, image_size = self.resize_plan(encoded, low_res.shape[-2:])
        flat = sam_upscale(low_res.flatten(0, 1), input_size, encoded.crop_size, image_size)
        return flat.unflatten(0, low_res.shape[:2])

    def resize_plan(self, encoded: Encoded, low_res_size) -> Tuple[Tuple[int, int], int]:
        """(input_size, image_size) of ``ops.postprocess_masks``: SAM's two resizes."""
        return encoded.input_size, self.image_size


class SamAdapter(_Adapter):
    """segment_anything's ``Sam`` (``image_encoder.img_size``, ``preprocess``, ``prompt_encoder``,
    ``mask_decoder``, ``postprocess_masks``, ``mask_threshold``, ``image_format``), as ``SamPredictor``."""

    record_point_dtype = torch.float64

    @property
    def image_size(self) -> int:
        return self.model.image_encoder.img_size

    @property
    def mask_threshold(self) -> float:
        return self.model.mask_threshold

    def encode(self, crop_images: Sequence[np.ndarray]) -> List[Encoded]:
        from PIL import Image  # segment_anything's ResizeLongestSide resizes through PIL too

        model, device = self.model, self.device
        inputs, encoded = [], []
        for crop in crop_images:
            if model.image_format != "RGB":
                crop = crop[..., ::-1]
            height, width = crop.shape[:2]
            target = resized_shape(height, width, self.image_size)
            crop = np.ascontiguousarray(crop)
            if target != (height, width):  # torchvision's resize returns the image itself at equal size
                crop = np.array(Image.fromarray(crop).resize(target[::-1], Image.BILINEAR))
            pixels = torch.as_tensor(crop, device=device).permute(2, 0, 1).contiguous()[None]
            inputs.append(model.preprocess(pixels))
            encoded.append(Encoded((height, width), tuple(pixels.shape[-2:]), None))
        batch = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
        features = model.image_encoder(batch.to(module_dtype(model.image_encoder)))
        for i, item in enumerate(encoded):
            item.features = features[i:i + 1]
        return encoded

    def grid_prompts(self, points: np.ndarray, encoded: Encoded) -> Prompts:
        in_points = longest_side_coords(points, encoded.crop_size, self.image_size)
        return Prompts(torch.as_tensor(points, device=self.device),
                       points=torch.as_tensor(in_points, device=self.device))

    def decode(self, encoded: Sequence[Encoded], prompts: Sequence[Prompts], multimask_output: bool = True,
               mask_input=None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        model = self.model
        out = []
        for item, prompt in zip(encoded, prompts):
            labels = torch.ones(len(prompt), dtype=torch.int, device=self.device)
            with prompt_encoding(self.dtype, self.device):
                sparse, dense = model.prompt_encoder(points=(prompt.points[:, None, :], labels[:, None]),
                                                     boxes=None, masks=None)
            low_res, iou = model.mask_decoder(
                image_embeddings=item.features, image_pe=self.dense_pe(model.prompt_encoder),
                sparse_prompt_embeddings=sparse.to(self.dtype), dense_prompt_embeddings=dense.to(self.dtype),
                multimask_output=multimask_output,
            )
            out.append((low_res, iou))
        return out

    def upscale(self, low_res: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        return self.model.postprocess_masks(low_res, encoded.input_size, encoded.crop_size)


class Sam2Adapter(_Adapter):
    """sam2's ``SAM2Base`` (``image_size``, ``forward_image``, ``_prepare_backbone_features``,
    ``sam_prompt_encoder``, ``sam_mask_decoder``), as ``SAM2ImagePredictor``: square resize with
    antialiasing and ImageNet normalisation (on the CPU, as sam2 does, unless ``preprocess_on_device``),
    float32 point transforms, post-processing in float32 with one resize."""

    def __init__(self, model, preprocess_on_device: bool = False) -> None:
        super().__init__(model)
        self.preprocess_on_device = bool(preprocess_on_device)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def _preprocess(self, crop: np.ndarray) -> torch.Tensor:
        # torchvision's ToTensor, Resize((R, R)) (antialiased bilinear; identity at equal size), Normalize.
        pixels = torch.from_numpy(np.ascontiguousarray(crop).transpose(2, 0, 1)).contiguous()
        if self.preprocess_on_device:
            pixels = pixels.to(self.device)
        pixels = pixels.to(torch.get_default_dtype()).div(255)
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels[None], (self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)[0]
        mean = torch.as_tensor(SAM2_PIXEL_MEAN, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(SAM2_PIXEL_STD, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        return pixels.sub_(mean).div_(std)

    def encode(self, crop_images: Sequence[np.ndarray]) -> List[Encoded]:
        model = self.model
        batch = torch.stack([self._preprocess(crop) for crop in crop_images]).to(self.device)
        batch = batch.to(module_dtype(model.image_encoder))
        backbone_out = model.forward_image(batch)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        # Feature sizes of the levels: image_size / 4, / 8, / 16 (sam2 hard-codes 256, 128, 64 for 1024).
        sizes = [(self.image_size // s, self.image_size // s) for s in (4, 8, 16)][-len(vision_feats):]
        feats = [feat.permute(1, 2, 0).view(batch.shape[0], -1, *size)
                 for feat, size in zip(vision_feats[::-1], sizes[::-1])][::-1]
        # sam2's FPN neck upsamples in float32 whatever the model's dtype: the decoder gets its own dtype.
        decoder_dtype = module_dtype(model.sam_mask_decoder)
        image_embed, high_res = feats[-1].to(decoder_dtype), [level.to(decoder_dtype) for level in feats[:-1]]
        encoded = []
        for i, crop in enumerate(crop_images):
            features = (image_embed[i:i + 1], [level[i:i + 1] for level in high_res])
            size = tuple(crop.shape[:2])
            encoded.append(Encoded(size, (self.image_size, self.image_size), features))
        return encoded

    def grid_prompts(self, points: np.ndarray, encoded: Encoded) -> Prompts:
        points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        return Prompts(points, points=self.transform_points(points, encoded))

    def transform_points(self, points: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        return normalized_coords(points, encoded.crop_size, self.image_size)

    def decode(self, encoded: Sequence[Encoded], prompts: Sequence[Prompts], multimask_output: bool = True,
               mask_input: Optional[Sequence[torch.Tensor]] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        model = self.model
        out = []
        for i, (item, prompt) in enumerate(zip(encoded, prompts)):
            labels = torch.ones(len(prompt), dtype=torch.int, device=self.device)
            masks = None if mask_input is None else mask_input[i]
            with prompt_encoding(self.dtype, self.device):
                sparse, dense = model.sam_prompt_encoder(points=(prompt.points[:, None, :], labels[:, None]),
                                                         boxes=None, masks=masks)
            image_embed, high_res = item.features
            low_res, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=image_embed, image_pe=self.dense_pe(model.sam_prompt_encoder),
                sparse_prompt_embeddings=sparse.to(self.dtype), dense_prompt_embeddings=dense.to(self.dtype),
                multimask_output=multimask_output, repeat_image=len(prompt) > 1, high_res_features=high_res,
            )
            out.append((low_res, iou))
        return out

    @staticmethod
    def mask_prompts(low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits as the predictor returns them for a later mask prompt (clamped to +-32)."""
        return torch.clamp(low_res, -SAM2_MASK_INPUT_CLAMP, SAM2_MASK_INPUT_CLAMP)

    def logits_for_upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        return low_res.float()  # SAM2Transforms.postprocess_masks works in float32

    def resize_plan(self, encoded: Encoded, low_res_size) -> Tuple[Tuple[int, int], int]:
        # One resize: an identity first stage (the low-res grid as the "input"), then low-res -> crop size.
        height, width = low_res_size
        if height != width:
            raise ValueError(f"SAM 2 low-res masks must be square, got {height}x{width}")
        return (height, width), height

    def upscale(self, low_res: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        return F.interpolate(low_res, encoded.crop_size, mode="bilinear", align_corners=False)


class LiteSamAdapter(_Adapter):
    """Our ``LiteSAM``: longest-side resize on the device, LiteViT + AutoPPN, and the batched decoder over
    all prompts of all crops of an encoder call (``batched_decoder``; False: SAM's per-prompt path)."""

    def __init__(self, model, batched_decoder: bool = True) -> None:
        super().__init__(model)
        self.batched_decoder = bool(batched_decoder)
        self.decodes_crops_together = self.batched_decoder

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def mask_threshold(self) -> float:
        return self.model.mask_threshold

    def encode(self, crop_images: Sequence[torch.Tensor]) -> List[Encoded]:
        from litesam_kernels.engine.preprocess import preprocess_longest_side

        model = self.model
        batch, input_sizes = preprocess_longest_side(crop_images, self.image_size, model.pixel_mean, model.pixel_std)
        embeddings, heatmap_logits, box_regression = model(batch.to(module_dtype(model.image_encoder)))
        return [Encoded(tuple(int(s) for s in crop.shape[:2]), tuple(input_sizes[i]), embeddings[i:i + 1],
                        (heatmap_logits[i:i + 1], box_regression[i:i + 1]))
                for i, crop in enumerate(crop_images)]

    def _sparse(self, prompt: Prompts) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        points = None
        if prompt.points is not None:
            coords = prompt.points[:, None, :]
            points = (coords, torch.ones(coords.shape[:-1], dtype=torch.int64, device=coords.device))
        with prompt_encoding(self.dtype, self.device):
            return encoder.embed_prompts(points, prompt.boxes).to(self.dtype)

    def decode(self, encoded: Sequence[Encoded], prompts: Sequence[Prompts], multimask_output: bool = True,
               mask_input=None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        decoder, encoder = self.model.mask_decoder, self.model.prompt_encoder
        image_pe = self.dense_pe(encoder)
        sparse = [self._sparse(p) for p in prompts]
        no_mask = encoder.no_mask_embed.weight
        if self.batched_decoder and len({s.shape for s in sparse}) == 1:
            embeddings = torch.cat([e.features for e in encoded])
            masks, ious = decoder.forward_batched(embeddings, image_pe, torch.stack(sparse), no_mask, multimask_output)
            return list(zip(masks.unbind(0), ious.unbind(0)))
        out = []
        for item, tokens in zip(encoded, sparse):  # SAM's path: the embedding repeated per prompt
            dense = no_mask.reshape(1, -1, 1, 1).expand(tokens.shape[0], -1, *item.features.shape[-2:])
            out.append(decoder(item.features, image_pe, tokens, dense, multimask_output))
        return out


def adapter_for(model, **options) -> _Adapter:
    """The adapter of a model by what it has: sam2's ``sam_mask_decoder``, LiteSAM's AutoPPN ``ppn``
    head, or segment_anything's ``mask_decoder``."""
    if hasattr(model, "sam_mask_decoder") and hasattr(model, "forward_image"):
        return Sam2Adapter(model, **options)
    if hasattr(model, "ppn") and hasattr(model, "config"):
        return LiteSamAdapter(model, **options)
    if hasattr(model, "mask_decoder") and hasattr(model, "image_encoder") and hasattr(model, "preprocess"):
        return SamAdapter(model, **options)
    raise TypeError(f"model must be a segment_anything Sam, a sam2 SAM2Base or a LiteSAM, got {type(model).__name__}")


__all__ = ["Encoded", "LiteSamAdapter", "Prompts", "Sam2Adapter", "SamAdapter", "adapter_for", "module_dtype",
           "prompt_encoding"]
