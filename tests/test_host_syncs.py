"""Host waits in the segment-everything engine: only the intended ones, and no blocking host->device copies.

On a GPU ``torch.tensor(values, device=cuda)`` / ``torch.as_tensor(array, device=cuda)`` / a blocking
``cpu_tensor.to(cuda)`` wait for every queued kernel (cudaMemcpyAsync + cudaStreamSynchronize), and reading a
device value on the host (``tolist``, ``item``, ``bool``, ``nonzero``, a boolean-mask index, ...) waits too.
The engine means to wait once per decoder call (``pipeline.survivor_counts``), inside the NMS of each crop,
and per image when it finishes the image's records.

On CPU no copy waits, so :class:`HostTransferLedger` (a ``TorchFunctionMode``) records the calls that would
wait on a GPU, each with the innermost ``litesam_kernels`` function that made it and whether it happened in
the per-crop loop (``Engine._process_group``) or when finishing an image (``Engine._finish_image``). The
``gpu`` test runs the same generators under ``torch.cuda.set_sync_debug_mode("error")`` with only the
intended sync points allowed.
"""
import contextlib
import sys
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from litesam_kernels import _device_data
from litesam_kernels.engine import pipeline
from litesam_kernels.engine.pipeline import Engine

FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}
HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
              torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero,
              torch.nonzero, torch.unique, torch.Tensor.unique, torch.masked_select, torch.Tensor.masked_select}
MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_}


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


class HostTransferLedger(TorchFunctionMode):
    """Records ``(kind, function, phase)`` for every call that waits for the device on a GPU.

    kind: "h2d" (host data made a tensor with an explicit ``device``, or a host-built tensor moved with a
    blocking ``.to``) or "read" (a device value read on the host); function: ``module:qualname`` of the
    innermost ``litesam_kernels`` frame; phase: "loop" (inside ``Engine._process_group``), "image" (inside
    ``Engine._finish_image``) or "other"."""

    def __init__(self):
        super().__init__()
        self.events = []
        self._host_built = {}  # id -> weakref of tensors built from host data (ids: tensors compare elementwise)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if func in FACTORIES and kwargs.get("device") is not None and not isinstance(args[0], torch.Tensor):
            kind = "h2d"
        elif func in MOVES and self._blocking_move_of_host_data(func, args, kwargs):
            kind = "h2d"
        elif func in HOST_READS or (func is torch.Tensor.__getitem__ and _is_bool_index(args[1])):
            kind = "read"
        result = func(*args, **kwargs)
        if func in FACTORIES and kwargs.get("device") is None and not isinstance(args[0], torch.Tensor):
            self._host_built[id(result)] = weakref.ref(result)
        if kind is not None:
            self._record(kind)
        return result

    def _built_on_host(self, tensor) -> bool:
        ref = self._host_built.get(id(tensor))
        return ref is not None and ref() is tensor

    def _blocking_move_of_host_data(self, func, args, kwargs) -> bool:
        if kwargs.get("non_blocking", False) or any(a is True for a in args[2:]):
            return False
        if func is torch.Tensor.copy_:
            return len(args) > 1 and self._built_on_host(args[1])
        to_device = func is torch.Tensor.cuda or "device" in kwargs or \
            any(isinstance(a, (str, torch.device)) for a in args[1:])
        return to_device and self._built_on_host(args[0])

    def _record(self, kind):
        frame, where, phase = sys._getframe(2), None, "other"
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.startswith("litesam_kernels"):
                name = f"{module}:{frame.f_code.co_qualname}"
                where = where or name
                if name.endswith("Engine._process_group") and phase == "other":
                    phase = "loop"
                elif name.endswith("Engine._finish_image"):
                    phase = "image"
            frame = frame.f_back
        if where is not None:
            self.events.append((kind, where, phase))

    def engine_events(self, phase=None):
        return [e for e in self.events if e[1].startswith("litesam_kernels.engine") and phase in (None, e[2])]


@contextlib.contextmanager
def counting_decoder_calls(monkeypatch):
    """Counts the decoder calls of the per-crop loop (one ``survivor_counts`` each)."""
    calls = []
    real = pipeline.survivor_counts

    def spy(valid, runs):
        calls.append(len(valid))
        return real(valid, runs)

    monkeypatch.setattr(pipeline, "survivor_counts", spy)
    yield calls


# Each front end with several decoder calls (small point batches) and, but for SAM 2 (one encoder pass at
# 512 px is the CPU budget), one crop layer: a ``generate()`` callable on ``device``.
def sam1_generate(device="cpu"):
    from litesam_kernels.amg import FastSamAutomaticMaskGenerator
    from tests.tiny_sam import scene, tiny_sam

    generator = FastSamAutomaticMaskGenerator(tiny_sam().to(device), points_per_side=4, points_per_batch=4,
                                              crop_n_layers=1, pred_iou_thresh=-1e9, stability_score_thresh=0.0)
    return lambda: generator.generate(scene())


def sam2_generate(device="cpu"):
    from litesam_kernels.sam2_amg import FastSAM2AutomaticMaskGenerator
    from tests._sam2_oracle import photo, tiny_sam2

    generator = FastSAM2AutomaticMaskGenerator(tiny_sam2(image_size=512, device=device), points_per_side=3,
                                               points_per_batch=4, batches_per_decoder_call=1, pred_iou_thresh=-1e9,
                                               stability_score_thresh=0.0, use_m2m=True)
    image = photo((96, 128))
    return lambda: generator.generate(image)


def segevery_generate(device="cpu"):
    from litesam_kernels.model import build_litesam
    from litesam_kernels.segment_everything import SegmentEverything
    from tests.test_segment_everything import synthetic_photo

    torch.manual_seed(0)
    generator = SegmentEverything(build_litesam("tiny").eval().to(device), points_per_image=12, prompts_per_batch=5,
                                  crop_n_layers=1, pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                                  prompt="point+box")
    images = [synthetic_photo(90, 120, 3), synthetic_photo(64, 80, 4)]
    return lambda: generator.generate(images)


FRONT_ENDS = {"sam1": sam1_generate, "segevery": segevery_generate, "sam2": sam2_generate}


class TestEngineHostTransfers:
    @pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
    def test_one_host_wait_per_decoder_call_and_no_blocking_copies(self, front_end, monkeypatch):
        if front_end == "sam2":
            pytest.importorskip("sam2")
        generate = FRONT_ENDS[front_end]()
        with counting_decoder_calls(monkeypatch) as calls, HostTransferLedger() as ledger:
            records = generate()
        assert records and len(calls) >= 2  # several decoder calls (and crops, but for sam2)
        # No host data reaches the device with a wait anywhere in the engine, per call, crop or image.
        assert [e for e in ledger.engine_events() if e[0] == "h2d"] == []
        # In the per-crop loop the engine itself reads the device once per decoder call, in survivor_counts.
        loop_reads = [e[1] for e in ledger.engine_events("loop") if e[0] == "read"]
        assert loop_reads == ["litesam_kernels.engine.pipeline:survivor_counts"] * len(calls), loop_reads

    def test_the_ledger_sees_what_waits(self):
        """The detector itself: the calls that wait on a GPU are recorded, their non-blocking forms are not."""
        values = torch.arange(4)
        with HostTransferLedger() as ledger:
            _record_from_engine(lambda: torch.tensor([1, 2], device="cpu"))
            _record_from_engine(lambda: torch.tensor([1, 2]).to("cpu"))
            _record_from_engine(lambda: values.sum().tolist())
            _record_from_engine(lambda: values[values > 1])
            _record_from_engine(lambda: _device_data.host_to_device([1, 2], "cpu"))
            _record_from_engine(lambda: _device_data.device_constants((0.5, 7.0), torch.float64, "cpu"))
            _record_from_engine(lambda: values[1:])
        assert [e[0] for e in ledger.engine_events()] == ["h2d", "h2d", "read", "read"]


def _record_from_engine(fn):
    """Run ``fn`` as if called from an engine module (the ledger attributes calls to litesam_kernels frames)."""
    namespace = {"__name__": "litesam_kernels.engine.probe", "fn": fn}
    exec("def probe():\n    return fn()\n", namespace)
    return namespace["probe"]()


class TestDeviceData:
    def test_device_constants_round_like_torch_tensor_and_are_cached(self):
        values = (0.1, 1 / 3, -2.5, 1e-30)
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            got = _device_data.device_constants(values, dtype, "cpu")
            assert torch.equal(got, torch.tensor(values, dtype=dtype)) and got.dtype == dtype
            assert _device_data.device_constants(values, dtype, torch.device("cpu")) is got
        ints = _device_data.device_constants((3, -7, 2 ** 40), torch.int64, "cpu")
        assert ints.tolist() == [3, -7, 2 ** 40]

    def test_device_constants_are_made_without_a_host_copy(self, monkeypatch):
        def no_copies(*args, **kwargs):
            raise AssertionError("device_constants copied host data")

        monkeypatch.setattr(torch, "tensor", no_copies)
        monkeypatch.setattr(torch, "as_tensor", no_copies)
        got = _device_data.device_constants((0.25, 4.0, 123.0), torch.float32, "cpu")
        assert got.dtype == torch.float32 and got.shape == (3,)

    def test_host_to_device(self):
        got = _device_data.host_to_device(np.array([[1.5, 2.0]]), "cpu", torch.float32)
        assert got.dtype == torch.float32 and got.tolist() == [[1.5, 2.0]]
        assert _device_data.host_to_device([[1, 2]], "cpu").dtype == torch.int64

    def test_host_to_device_of_a_read_only_array_copies_it_without_a_warning(self):
        image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        image.flags.writeable = False  # as np.asarray(PIL image)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = _device_data.host_to_device(image, "cpu")
        got += 1  # its own memory
        assert got.tolist() == (image + 1).tolist() and image[0, 0, 0] == 0


@pytest.mark.gpu
class TestNoHiddenSyncsOnCuda:
    """``generate`` of the three front ends on CUDA under ``set_sync_debug_mode("error")``: any synchronising
    call raises, except inside the intended sync points, wrapped here (their syncs allowed)."""

    @staticmethod
    def _allow_syncs_in(monkeypatch, owner, name):
        real = getattr(owner, name)

        def allowed(*args, **kwargs):
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        monkeypatch.setattr(owner, name, allowed)

    @pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
    def test_only_intended_syncs(self, front_end, monkeypatch):
        if front_end == "sam2":
            pytest.importorskip("sam2")
        generate = FRONT_ENDS[front_end]("cuda")
        generate()  # warm-up: autotuning (do_bench synchronises) and first-call caches
        for owner, name in ((pipeline, "survivor_counts"), (Engine, "_crop_nms"), (Engine, "_finish_image")):
            self._allow_syncs_in(monkeypatch, owner, name)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            records = generate()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert records
