"""SegEvery's fixed-size stages under ``torch.compile(fullgraph=True)`` (``SegmentEverything(compile=True)``).

Stages with shapes fixed by the configuration, each one graph (no graph breaks: the fused ops are custom ops
with fake implementations):

- preprocessing after the resize: normalise and pad one image to the ``S x S`` input (symbolic sizes);
- the encoder: LiteViT + AutoPPN on a (B, 3, S, S) batch;
- prompts -> masks: prompt encoding and the batched decoder over exactly ``prompts_per_call`` prompts per crop
  (a shorter last chunk is padded with copies of its last prompt and the padding's outputs dropped: prompts
  do not interact in the batched decoder);
- fused post-processing (``ops.postprocess_masks``), with the input / crop sizes as dynamic ints so images of
  many sizes reuse one graph.

The decoder's graph is compiled with Inductor's pattern matcher off: its attention-fusion rewrite
mis-handles the batched decoder's 5-D attention (pytorch/pytorch#195589, open for torch 2.11; on CPU it
returns wrong IoUs off by 0.2 or raises a size mismatch, verified here).

The data-dependent rest (survivor compaction, NMS, RLE sizes, records) stays eager, as it must. On a GPU,
``compile={"mode": "reduce-overhead"}`` adds CUDA graphs to the fixed-size stages (batch 1 is host-bound
otherwise). ``compile={"backend": "aot_eager"}`` checks capture without code generation.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from litesam_kernels.engine.adapters import Encoded, LiteSamAdapter, Prompts, module_dtype, prompt_encoding
from litesam_kernels.engine.preprocess import normalize_and_pad, preprocess_longest_side


def _inductor_config(**changes):
    """Inductor settings for the graphs compiled (lazily, at their first call) inside this context."""
    from torch._inductor import config

    return config.patch(**changes)


def _postprocess(logits, input_size, crop_size, mask_threshold, offset, image_size):
    # The op itself (the engine's arguments are already checked): its Python wrapper's checks do not trace.
    return torch.ops.litesam.postprocess_masks(logits, input_size, crop_size, float(mask_threshold), float(offset),
                                               True, image_size)


class CompiledLiteSamAdapter(LiteSamAdapter):
    """:class:`LiteSamAdapter` whose fixed-size stages run compiled (module docstring).

    Args:
        prompts_per_call: the decoder's fixed prompt count per crop.
        compile_options: extra ``torch.compile`` options (``mode``, ``backend``, ...); ``fullgraph=True``
            always.
    """

    def __init__(self, model, batched_decoder: bool = True, prompts_per_call: int = 64,
                 compile_options: Optional[Dict] = None) -> None:
        super().__init__(model, batched_decoder=batched_decoder)
        options = dict(compile_options or {})
        options["fullgraph"] = True
        # Image sizes vary: the size-dependent stages are compiled for symbolic sizes, the others for the
        # configured shapes (a new crop count per encoder call recompiles once).
        fixed, sized = dict(options, dynamic=options.get("dynamic", False)), dict(options, dynamic=True)
        self.prompts_per_call = int(prompts_per_call)
        self._normalize = torch.compile(normalize_and_pad, **sized)
        self._encoder = torch.compile(model.forward, **fixed)
        self._decoder = torch.compile(self._decode_fixed, **fixed)
        self.fused_postprocess_op = torch.compile(_postprocess, **sized)

    def encode(self, crop_images: Sequence[torch.Tensor]) -> List[Encoded]:
        model = self.model
        batch, input_sizes = preprocess_longest_side(crop_images, self.image_size, model.pixel_mean, model.pixel_std,
                                                     normalize=self._normalize)
        embeddings, heatmap_logits, box_regression = self._encoder(batch.to(module_dtype(model.image_encoder)))
        return [Encoded(tuple(int(s) for s in crop.shape[:2]), tuple(input_sizes[i]), embeddings[i:i + 1],
                        (heatmap_logits[i:i + 1], box_regression[i:i + 1]))
                for i, crop in enumerate(crop_images)]

    def _decode_fixed(self, embeddings: torch.Tensor, image_pe: torch.Tensor, points: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor], multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, K, 2) points and/or (B, K, 4) boxes -> (B, K, M, h, w) logits and (B, K, M) IoUs."""
        encoder = self.model.prompt_encoder
        point_prompts = None
        if points is not None:
            coords = points[:, :, None, :]
            point_prompts = (coords, torch.ones(coords.shape[:-1], dtype=torch.int64, device=coords.device))
        with prompt_encoding(self.dtype, self.device):
            sparse = encoder.embed_prompts(point_prompts, boxes)
        return self.model.mask_decoder.forward_batched(embeddings, image_pe, sparse.to(self.dtype),
                                                       encoder.no_mask_embed.weight, multimask_output)

    def decode(self, encoded: Sequence[Encoded], prompts: Sequence[Prompts], multimask_output: bool = True,
               mask_input=None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        count = len(prompts[0])
        if not self.batched_decoder or any(len(p) != count for p in prompts) or count > self.prompts_per_call:
            return super().decode(encoded, prompts, multimask_output, mask_input)

        def fixed(tensors):  # (B, K, ...) padded to prompts_per_call with the last prompt
            if tensors[0] is None:
                return None
            stacked = torch.stack(tensors)
            pad = self.prompts_per_call - count
            return torch.cat([stacked, stacked[:, -1:].expand(-1, pad, *stacked.shape[2:])], 1) if pad else stacked

        with _inductor_config(pattern_matcher=False):  # pytorch/pytorch#195589 (module docstring)
            masks, ious = self._decoder(torch.cat([e.features for e in encoded]),
                                        self.dense_pe(self.model.prompt_encoder), fixed([p.points for p in prompts]),
                                        fixed([p.boxes for p in prompts]), multimask_output)
        return [(m[:count], q[:count]) for m, q in zip(masks.unbind(0), ious.unbind(0))]


__all__ = ["CompiledLiteSamAdapter"]
