"""Running a segmenter over a dataset: the per-batch function (shared by the local loop, torchrun ranks and
Ray actors), the DataLoader loop with a progress bar, and the end of a run (failures, COCO merge, summary).

Failure handling: an image that cannot be decoded, segmented or written is logged, counted and listed in
``failures.txt``; the run goes on. When a batch fails in the model, its images are retried one by one so
that one bad image does not take its batch with it.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from litesam_kernels.datasets import DecodedImage, ImageItem, image_loader
from litesam_kernels.writers import OutputLayout

log = logging.getLogger("litesam_kernels.cli")


@dataclass
class ImageResult:
    item: ImageItem
    masks: int = 0
    error: Optional[str] = None


@dataclass
class RunStats:
    """Counts of one run (or of one rank / actor, merged with :meth:`merge`)."""

    images: int = 0  # in the run (or shard), including those already done
    segmented: int = 0
    skipped: int = 0  # already done (--skip-existing)
    masks: int = 0
    seconds: float = 0.0
    failures: List[Tuple[ImageItem, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def add(self, result: ImageResult) -> None:
        if result.error is None:
            self.segmented += 1
            self.masks += result.masks
        else:
            self.failures.append((result.item, result.error))

    def merge(self, other: "RunStats") -> "RunStats":
        return RunStats(self.images + other.images, self.segmented + other.segmented, self.skipped + other.skipped,
                        self.masks + other.masks, max(self.seconds, other.seconds), self.failures + other.failures)

    @property
    def exit_status(self) -> int:
        """0 when at least one image has its outputs (segmented now or already done), else 1."""
        return 0 if self.segmented + self.skipped > 0 or self.images == 0 else 1

    def summary(self, layout: OutputLayout) -> str:
        rate = self.segmented / self.seconds if self.seconds > 0 else 0.0
        failed = f"{self.failed} failed" + (f" (listed in {layout.failures_path})" if self.failed else "")
        return (f"{self.images} images: {self.segmented} segmented, {self.skipped} already done, {failed}; "
                f"{self.masks} masks; {self.seconds:.1f} s ({rate:.2f} images/s)")


def _safe_segment(segmenter, images) -> List[object]:
    """Records per image, or the exception of an image that failed on its own."""
    try:
        return list(segmenter.segment(images))
    except Exception as batch_error:  # noqa: BLE001  (retried per image below; a lone image's error is its own)
        if len(images) == 1:
            return [batch_error]
        outcomes = []
        for image in images:
            try:
                outcomes.append(segmenter.segment([image])[0])
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)
        return outcomes


def process_batch(segmenter, layout: OutputLayout, batch: Sequence[DecodedImage]) -> List[ImageResult]:
    """Segment the decoded images of ``batch`` in one model call and write their outputs; one
    :class:`ImageResult` per input, in order. Never raises for a bad image (only for interrupts)."""
    decoded = [d for d in batch if d.image is not None]
    outcomes = dict(zip((id(d) for d in decoded), _safe_segment(segmenter, [d.image for d in decoded]))) if decoded else {}
    results = []
    for d in batch:
        outcome = outcomes.get(id(d), d.error)
        if isinstance(outcome, list):
            try:
                layout.write(d.item, d.image, outcome)
                results.append(ImageResult(d.item, masks=len(outcome)))
                continue
            except Exception as exc:  # noqa: BLE001  (disk full, permissions: the other images may still work)
                outcome = exc
        error = outcome if isinstance(outcome, str) else f"{type(outcome).__name__}: {outcome}"
        log.warning("failed: %s: %s", d.item.path, error)
        results.append(ImageResult(d.item, error=error))
    return results


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """A progress bar (tqdm: images/s and ETA) on stderr, or plain lines every few seconds without tqdm."""

    def __init__(self, total: int, enabled: bool = True, description: str = "segmenting") -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = self.last_print = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="img", desc=description, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_print >= 5.0 or self.done == self.total:
                self.last_print = now
                rate = self.done / max(now - self.start, 1e-9)
                eta = (self.total - self.done) / rate if rate > 0 else float("inf")
                extra = "".join(f", {k} {v}" for k, v in postfix.items())
                print(f"{self.done}/{self.total} images, {rate:.2f} images/s, ETA {_duration(eta)}{extra}",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# ------------------------------------------------------------------------------------------ runs
def run_images(segmenter, layout: OutputLayout, items: Sequence[ImageItem], *, batch_size: int, num_workers: int,
               prefetch_factor: int = 2, max_side: Optional[int] = None, skip_existing: bool = False,
               progress: bool = True, description: str = "segmenting") -> RunStats:
    """Segment ``items`` (this process's share of a run) batch by batch, decoding in DataLoader workers."""
    start = time.perf_counter()
    todo = [item for item in items if not (skip_existing and layout.is_done(item))]
    stats = RunStats(images=len(items), skipped=len(items) - len(todo))
    if stats.skipped:
        log.info("%d of %d images already done (--skip-existing)", stats.skipped, len(items))
    bar = Progress(len(todo), progress and bool(todo), description)
    try:
        loader = image_loader(todo, batch_size=batch_size, num_workers=num_workers if todo else 0,
                              prefetch_factor=prefetch_factor, max_side=max_side)
        for batch in loader:
            for result in process_batch(segmenter, layout, batch):
                stats.add(result)
            bar.update(len(batch), masks=stats.masks, failed=stats.failed)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def finish_run(layout: OutputLayout, items: Sequence[ImageItem], stats: RunStats, description: str) -> List[str]:
    """The dataset files of a finished run (``failures.txt``, ``coco.json``) and its summary lines."""
    layout.write_failures(stats.failures)
    lines = [stats.summary(layout)]
    if "coco" in layout.formats:
        images, annotations = layout.merge_coco(items, description)
        lines.append(f"COCO: {layout.coco_path} ({images} images, {annotations} annotations)")
    return lines
