"""Training samples as a pure function of their position in the run, so any step can be reproduced.

The run reads an endless stream of sample *positions* 0, 1, 2, ...: position ``p`` is item
``permutation(epoch)[p % n]`` of epoch ``p // n``, each epoch's permutation drawn from (seed, epoch).
Optimizer step ``s`` consumes positions ``[s * G, (s + 1) * G)`` of the global batch ``G = batch_size *
world_size * accumulation``: micro-step ``a`` of rank ``r`` reads ``batch_size`` consecutive positions
from ``s * G + (a * world_size + r) * batch_size``. One process with ``world_size``-times the batch size
therefore reads the same samples as the whole torchrun job. Every random choice of a sample (its augmented
view, its prompts) comes from a generator seeded by (seed, epoch, item), never from a global RNG state: a
run resumed at step s reads exactly what the uninterrupted run read, whatever the number of DataLoader
workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from litesam_kernels.train import sources
from litesam_kernels.train.cache import EmbeddingCache, MaskCache
from litesam_kernels.train.targets import decoder_prompts, mask_geometry, ppn_targets
from litesam_kernels.train.views import Augmentation, View, render_image, render_masks


class Positions:
    """Sample position -> (epoch, item) over ``num_items`` items, a fresh permutation per epoch."""

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items < 1:
            raise ValueError(f"a run needs at least one item, got {num_items}")
        self.num_items, self.seed = int(num_items), int(seed)
        self._epoch, self._order = -1, None

    def __call__(self, position: int) -> Tuple[int, int]:
        epoch, offset = divmod(int(position), self.num_items)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return epoch, int(self._order[offset])


class StepBatches(Sampler):
    """The micro-batches of positions this rank reads for optimizer steps ``start_step`` .. ``end_step`` - 1."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, accumulation: int = 1, rank: int = 0,
                 world_size: int = 1) -> None:
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.batch_size, self.accumulation = int(batch_size), int(accumulation)
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulation

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start_step, self.end_step):
            for micro in range(self.accumulation):
                first = step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
                yield list(range(first, first + self.batch_size))


class ImageFolder:
    """The run's images: ``names`` relative to ``root`` (``sources.find_images``), decoded on demand."""

    def __init__(self, root, names: Sequence[str]) -> None:
        self.root, self.names = Path(root), list(names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> np.ndarray:
        return sources.load_image(self.root / self.names[index])


class ViewPlan:
    """View ``v`` of image ``i``: the identity for ``v = 0``, else ``augmentation`` drawn from (seed, i, v).
    What the teacher embedded for the cache and what the student sees in training."""

    def __init__(self, views: int, augmentation: Optional[Augmentation], seed: int) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if views > 1 and augmentation is None:
            raise ValueError("more than one view per image needs an augmentation")
        self.views, self.augmentation, self.seed = int(views), augmentation, int(seed)

    def view(self, image_index: int, view_index: int, height: int, width: int) -> View:
        if view_index == 0:
            return View.identity(height, width)
        return self.augmentation.sample(np.random.default_rng([self.seed, image_index, view_index]), height, width)

    def manifest(self) -> Dict[str, object]:
        """What the views depend on (only the view count when every view is the identity)."""
        if self.views == 1:
            return {"views": 1}
        return {"views": self.views, "augmentation": self.augmentation.to_dict(), "view_seed": self.seed}


class RenderedViews(Dataset):
    """Item ``i * views + v`` -> ``pixels`` (3, S, S) uint8 and ``sizes`` (2,) of view v of image i."""

    def __init__(self, images: ImageFolder, plan: ViewPlan, image_size: int) -> None:
        self.images, self.plan, self.image_size = images, plan, int(image_size)

    def __len__(self) -> int:
        return len(self.images) * self.plan.views

    def __getitem__(self, item: int) -> Dict[str, torch.Tensor]:
        image_index, view_index = divmod(int(item), self.plan.views)
        image = self.images.load(image_index)
        view = self.plan.view(image_index, view_index, *image.shape[:2])
        pixels, size = render_image(image, view, self.image_size)
        return {"pixels": pixels, "sizes": torch.tensor(size)}


class DistillSamples(Dataset):
    """Position -> a rendered view and the teacher's cached embedding of it (``teacher`` float16)."""

    def __init__(self, views: RenderedViews, cache: EmbeddingCache, seed: int) -> None:
        self.views, self.cache = views, cache
        self.positions = Positions(len(views), seed)

    def __len__(self) -> int:  # positions are endless; the sampler bounds them
        return len(self.views)

    def __getitem__(self, position: int) -> Dict[str, torch.Tensor]:
        _, item = self.positions(position)
        return {**self.views[item], "teacher": self.cache.read(item)}


class MaskSamples(Dataset):
    """Position -> an augmented view of an image with its AutoPPN targets (``heatmap``, ``positive``,
    ``box``, ``valid``) from the teacher's cached masks, and with ``prompt_slots`` > 0 also the decoder's
    prompted mask targets (``mask_targets``, ``boxes``, ``points``, ``slot_valid``, ``mask_valid``)."""

    def __init__(self, images: ImageFolder, cache: MaskCache, image_size: int, seed: int,
                 augmentation: Optional[Augmentation], prompt_slots: int = 0, box_fraction: float = 0.5) -> None:
        self.images, self.cache, self.image_size = images, cache, int(image_size)
        self.seed, self.augmentation = int(seed), augmentation
        self.prompt_slots, self.box_fraction = int(prompt_slots), float(box_fraction)
        self.positions = Positions(len(images), seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> Dict[str, torch.Tensor]:
        epoch, index = self.positions(position)
        rng = np.random.default_rng([self.seed, epoch, index])
        image = self.images.load(index)
        entry = self.cache.read(index)
        if tuple(entry["original_size"]) != tuple(image.shape[:2]):
            raise ValueError(f"{self.images.names[index]}: the mask cache holds an image of size "
                             f"{entry['original_size']}, the file is {image.shape[:2]} (rebuild the cache)")
        view = (self.augmentation.sample(rng, *image.shape[:2]) if self.augmentation is not None
                else View.identity(*image.shape[:2]))
        pixels, size = render_image(image, view, self.image_size)
        coverage = render_masks(entry["masks"], entry["original_size"], view, self.image_size)
        geometry = mask_geometry(coverage)
        sample = {"pixels": pixels, "sizes": torch.tensor(size), **ppn_targets(geometry, size, self.image_size)}
        if self.prompt_slots:
            sample.update(decoder_prompts(geometry, rng, self.prompt_slots, self.box_fraction, size, self.image_size))
            grid = coverage.shape[-1]
            cells = torch.arange(grid) * (self.image_size // grid)
            sample["mask_valid"] = (cells < size[0])[:, None] & (cells < size[1])[None, :]
        return sample
