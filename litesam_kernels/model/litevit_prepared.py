"""The prepared fused encoder: inference with the folds, casts and layouts computed once, not per call.

Automatic for ``LiteViT(fused=True)``: a forward takes this path when it is inference in eager code (every
module in eval mode; no gradient needed: ``torch.no_grad()``, ``torch.inference_mode()``, or neither the
images nor any parameter requires grad; not inside ``torch.compile``) and ``encoder.prepared`` is True (the
default). Otherwise ``litevit_fused`` folds per call on the custom ops, as training needs.

How a prepared forward runs:
1. the images are validated once, at the entry (``litevit_fused.check_images``); nothing inside checks again;
2. one walk over the module tree reads each parameter's and buffer's ``(_version, data_ptr)`` and the
   training flags: the *state* the prepared weights were computed from. The first forward for an
   (activation dtype, device) runs the encoder with :class:`RecordingFolds` (every fold of
   ``litevit_fused.Folds`` computed under no-grad and kept, with the module it read); later forwards whose
   state is unchanged replay them (:class:`ReplayFolds`: no fold, cast, copy or layout change per call);
3. the per-block calls go straight to the Triton launchers on the triton backend, to the ops' torch
   references otherwise (``fused_ops.table_for``: one backend choice per forward), with autocast off
   (every cast is explicit).

What invalidates the prepared weights (the next forward recomputes them): any in-place change of a
parameter or buffer that torch's version counter sees (optimizer steps, ``with torch.no_grad(): p.add_()``,
``p.copy_()``, ``load_state_dict``, BatchNorm statistics updated by a training-mode forward), new storage
(``.to(dtype/device)``, ``.half()``, assigning a new parameter or buffer), another activation dtype or
device (each (dtype, device) has its own cache entry), train/eval switches, and replacing a submodule.
What it cannot see: writes through ``param.data`` (``p.data.add_()``: torch gives ``.data`` a fresh
version counter, by design, so the write is invisible to the parameter's) and changes of non-tensor
module attributes (e.g. a BatchNorm's ``eps``): call ``encoder.invalidate_prepared()`` after those.
Device pointers and host pointers share one address space (CUDA unified addressing), so a change of dtype or
device always shows as a new ``data_ptr``; and each cache entry holds an alias of every tensor it was
computed from, so a freed address cannot come back as a different tensor with an equal state.

torch.compile. ``torch.compile(encoder, fullgraph=True)`` traces the per-call path (folds in the graph,
custom ops opaque). ``encoder.compile_fused(mode)`` instead compiles the prepared path: the state check and
any refresh stay in eager code, and the compiled graph takes the prepared weights as inputs, marked static
(``torch._dynamo.mark_static_address``), so ``mode="reduce-overhead"`` captures the encoder in a CUDA graph
whose replays read them in place (batch 1 on a GPU: no per-op host work at all). Each replay's output is
cloned out of the graph's memory pool, so callers may keep it. On CPU, "reduce-overhead" degrades to a plain
compile (CUDA graphs need CUDA tensors; inductor says so in a warning).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from litesam_kernels.model import fused_ops
from litesam_kernels.model._autocast import autocast_off
from litesam_kernels.model.litevit_fused import FOLD_METHODS, Folds, run_encoder

MAX_CACHED = 4  # (activation dtype, device) entries per encoder; the least recently built is dropped


class _Stale(Exception):
    """The module tree no longer matches the recorded folds (a submodule was replaced)."""


class RecordingFolds(Folds):
    """``Folds`` with the Triton layouts, keeping every result (and the module it read) in call order."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(dtype, launcher_layouts=True)
        self.entries: List[Tuple[nn.Module, object]] = []


class ReplayFolds:
    """The recorded folds, returned in call order; a call for another module than recorded raises _Stale."""

    def __init__(self, dtype: torch.dtype, entries: List[Tuple[nn.Module, object]]) -> None:
        self.dtype = dtype
        self._entries = entries
        self._next = 0

    def _replay(self, module):
        if self._next >= len(self._entries):
            raise _Stale
        recorded, result = self._entries[self._next]
        if recorded is not module:
            raise _Stale
        self._next += 1
        return result


def _recording(name):
    fold = getattr(Folds, name)

    def record(self, module, *args, **kwargs):
        result = fold(self, module, *args, **kwargs)
        self.entries.append((module, result))
        return result

    return record


def _replaying(name):
    def replay(self, module, *args, **kwargs):
        return self._replay(module)

    return replay


for _name in FOLD_METHODS:
    setattr(RecordingFolds, _name, _recording(_name))
    setattr(ReplayFolds, _name, _replaying(_name))


def module_state(model: nn.Module) -> Tuple[List[int], bool, List[Dict[str, Optional[torch.Tensor]]]]:
    """(state, any module training, the parameter dicts): ``state`` lists ``_version, data_ptr`` of every
    parameter and buffer, in module-tree order. One iterative walk (``named_modules`` is several times slower)."""
    state: List[int] = []
    append = state.append
    parameter_dicts = []
    training = False
    stack = [model]
    while stack:
        module = stack.pop()
        training = training or module.training
        parameter_dicts.append(module._parameters)
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None:
                    append(t._version)
                    append(t.data_ptr())
        stack.extend(module._modules.values())
    return state, training, parameter_dicts


def _requires_grad(parameter_dicts) -> bool:
    return any(p is not None and p.requires_grad for params in parameter_dicts for p in params.values())


def _storage_holders(model: nn.Module) -> List[torch.Tensor]:
    """An alias of every parameter and buffer: while held, no new tensor can get one of their addresses, so
    an equal ``(_version, data_ptr)`` state really is the same storage (freed memory is reused otherwise)."""
    return [t.detach() for module in model.modules() for tensors in (module._parameters, module._buffers)
            for t in tensors.values() if t is not None]


class PreparedWeights:
    """The folds of one (activation dtype, device), and the module state they were computed from."""

    def __init__(self, entries: List[Tuple[nn.Module, object]], state: List[int], model: nn.Module) -> None:
        self.entries = entries
        self.state = state
        self._holders = _storage_holders(model)
        self.marked_static = False

    def tensors(self) -> List[torch.Tensor]:
        return [t for _, result in self.entries for t in (result or ()) if isinstance(t, torch.Tensor)]

    def mark_static(self) -> None:
        """For CUDA graphs: these inputs keep their addresses across calls (a rebuild gives new ones, and
        cudagraph trees re-record then)."""
        if not self.marked_static:
            for t in self.tensors():
                torch._dynamo.mark_static_address(t)
            self.marked_static = True


class PreparedCache:
    """Per encoder: the prepared weights per (activation dtype, device), counters, the compile switch."""

    def __init__(self) -> None:
        self.entries: Dict[Tuple[torch.dtype, torch.device], PreparedWeights] = {}
        self.builds = 0
        self.replays = 0
        self.compile_mode: Optional[str] = None
        self.compile_options: dict = {}
        self._compiled = None

    def clear(self) -> None:
        self.entries.clear()

    def store(self, key, weights: PreparedWeights) -> None:
        self.entries.pop(key, None)
        if len(self.entries) >= MAX_CACHED:
            self.entries.pop(next(iter(self.entries)))
        self.entries[key] = weights
        self.builds += 1

    def set_compile(self, mode: Optional[str], options: dict) -> None:
        self.compile_mode, self.compile_options, self._compiled = mode, dict(options), None

    def compiled(self):
        if self._compiled is None:
            self._compiled = torch.compile(_replay_on_custom_ops, mode=self.compile_mode, fullgraph=True,
                                           **self.compile_options)
        return self._compiled


def cache_of(model: nn.Module) -> PreparedCache:
    cache = model.__dict__.get("_prepared_cache")
    if cache is None:
        cache = model.__dict__["_prepared_cache"] = PreparedCache()
    return cache


def _replay_on_custom_ops(model, images, entries):
    """The compiled prepared path: weights are inputs, the kernels the (opaque) custom ops."""
    return run_encoder(model, images, ReplayFolds(images.dtype, entries), fused_ops.CustomOps)


def prepared_forward(model, images: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``model(images)`` on prepared weights, or None when this call is not inference (see the module
    docstring). ``images`` were validated by the caller."""
    if not getattr(model, "prepared", True):
        return None
    state, training, parameter_dicts = module_state(model)
    if training:
        return None
    if torch.is_grad_enabled() and (images.requires_grad or _requires_grad(parameter_dicts)):
        return None
    cache = cache_of(model)
    key = (dtype, images.device)
    with autocast_off(images.device.type):
        x = images.to(dtype)
        weights = cache.entries.get(key)
        if weights is not None and weights.state == state:
            try:
                return _run_prepared(model, x, weights, cache)
            except _Stale:
                pass
        folds = RecordingFolds(dtype)
        with torch.no_grad():
            out = run_encoder(model, x, folds, fused_ops.table_for(x.device, x.shape[0] == 0))
        if not folds.uses_batch_statistics:
            cache.store(key, PreparedWeights(folds.entries, state, model))
        return out


def _run_prepared(model, x, weights: PreparedWeights, cache: PreparedCache) -> torch.Tensor:
    if cache.compile_mode is not None or cache.compile_options:
        weights.mark_static()
        cudagraphs = cache.compile_mode == "reduce-overhead" and x.is_cuda
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = cache.compiled()(model, x, weights.entries)
        cache.replays += 1
        return out.clone() if cudagraphs else out  # the graph's pool is reused by the next replay
    out = run_encoder(model, x, ReplayFolds(x.dtype, weights.entries), fused_ops.table_for(x.device, x.shape[0] == 0))
    cache.replays += 1
    return out
