"""The prepared fused encoder (model/litevit_prepared.py): folds computed once per (dtype, device) and reused,
invalidated when a parameter or buffer changes, kernels called directly, torch.compile on top.

Outputs of the prepared path are compared with the unprepared fused path (``encoder.prepared = False``: folds
per call, custom ops) for exact equality: both hand the kernels the same tensors.
"""
import copy

import pytest
import torch
from torch import nn

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model import fused_ops, litevit_fused, litevit_prepared
from litesam_kernels.model.config import CONFIGS
from litesam_kernels.model.litevit import LiteViT

TRITON_REASON = _backend.why_not("triton", _backend.implementations("conv_mlp"), torch.device("cpu"))
TRITON = pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=TRITON_REASON)] if TRITON_REASON else [])
BACKENDS = [pytest.param(None, id="reference-ops"), TRITON]


def _encoder(seed=0):
    torch.manual_seed(seed)
    model = LiteViT(CONFIGS["tiny"].encoder, fused=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def _images(b=1, size=32, dtype=torch.float32):
    return torch.randn(b, 3, size, size, dtype=torch.float64).to(dtype)


def _cache(model):
    return litevit_prepared.cache_of(model)


def _unprepared(model, images, backend=None):
    """The same encoder with folds per call on the custom ops."""
    model.prepared = False
    try:
        with torch.no_grad(), lk.use_backend(backend):
            return model(images)
    finally:
        model.prepared = True


def _infer(model, images, backend=None):
    with torch.no_grad(), lk.use_backend(backend):
        return model(images)


def _eager(model, images):
    eager = copy.deepcopy(model)
    eager.fused = False
    with torch.no_grad():
        return eager(images)


class TestPreparedPath:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_equals_the_unprepared_path(self, backend, dtype):
        model = _encoder().to(dtype)
        images = _images(dtype=dtype)
        first = _infer(model, images, backend)
        second = _infer(model, images, backend)
        assert _cache(model).builds == 1 and _cache(model).replays == 1
        want = _unprepared(model, images, backend)
        assert torch.equal(first, want) and torch.equal(second, want)
        assert second.dtype == dtype and second.is_contiguous(memory_format=torch.channels_last)

    def test_replay_does_no_fold_and_no_custom_op(self, monkeypatch):
        model = _encoder()
        images = _images()
        want = _infer(model, images)

        def forbidden(*args, **kwargs):
            raise AssertionError("per-call work on the prepared path")

        for target in (litevit_fused.Folds, "_affine"), (litevit_fused, "fold_batchnorm"), \
                (litevit_fused, "fold_batchnorm_into_linear"), (fused_ops._pool_mixer, "pool_mixer"), \
                (fused_ops._conv_mlp, "conv_mlp"), (fused_ops._conv_mlp, "_check_inputs"), \
                (fused_ops._conv_block, "dwconv_act"), (fused_ops._layer_norm, "layer_norm2d"), \
                (fused_ops._attention, "pooled_kv_attention"):
            monkeypatch.setattr(*target, forbidden)
        assert torch.equal(_infer(model, images), want)

    @pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))
    def test_triton_backend_calls_the_launchers(self, monkeypatch):
        from litesam_kernels.triton import attention, conv_block, conv_mlp, layer_norm, pool_mixer, pool_mixer_block

        model = _encoder()
        images = _images()
        _infer(model, images, "triton")
        calls = {}
        for module, name in ((pool_mixer, "pool_mixer_forward"), (pool_mixer_block, "pool_mixer_block_forward"),
                             (conv_mlp, "conv_mlp_forward"),
                             (conv_block, "dwconv_forward"), (layer_norm, "layer_norm_forward"),
                             (attention, "kv_pool_forward"), (attention, "attention_projected_forward")):
            def spy(*args, original=getattr(module, name), name=name, **kwargs):
                calls[name] = calls.get(name, 0) + 1
                return original(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)
        monkeypatch.setattr(fused_ops._conv_mlp, "_check_inputs", lambda *a: pytest.fail("validated again"))
        _infer(model, images, "triton")
        # tiny: 1 + 1 pool-mixer blocks (each one kernel), 1 attention block (its LN2 fused into the MLP, its
        # projection into the attention kernel), the neck
        assert calls == {"pool_mixer_block_forward": 2, "conv_mlp_forward": 1, "dwconv_forward": 2,
                         "layer_norm_forward": 3, "kv_pool_forward": 1, "attention_projected_forward": 1}

    def test_backends_share_the_prepared_weights(self):
        model = _encoder()
        images = _images()
        _infer(model, images, None)
        _infer(model, images, "reference")  # the eager modules: the cache is not consulted
        if TRITON_REASON is None:
            _infer(model, images, "triton")
        assert _cache(model).builds == 1

    def test_empty_batch(self):
        model = _encoder()
        out = _infer(model, _images(b=0))
        assert out.shape == (0, 32, 2, 2)
        images = _images()
        assert torch.equal(_infer(model, images), _unprepared(model, images))  # weights prepared on the empty call
        assert _cache(model).builds == 1

    def test_not_for_training_or_autograd(self):
        model = _encoder()
        images = _images()
        out = model(images)  # grad enabled, parameters require grad: the custom ops, with autograd
        assert out.requires_grad and _cache(model).builds == 0
        for p in model.parameters():
            p.requires_grad_(False)
        out = model(images)  # nothing needs a gradient: prepared
        assert not out.requires_grad and _cache(model).builds == 1
        with torch.no_grad():
            model.train()(images)  # batch statistics
        assert _cache(model).builds == 1
        model.prepared = False
        _infer(model.eval(), images)
        assert _cache(model).builds == 1

    def test_inference_mode(self):
        model = _encoder()
        images = _images()
        with torch.inference_mode():
            out = model(images)
        assert _cache(model).builds == 1 and torch.equal(out, _unprepared(model, images))


class TestInvalidation:
    """Every change of a parameter or buffer reaches the next forward; its output equals a fresh computation."""

    def _check(self, model, images, builds):
        got = _infer(model, images)
        assert _cache(model).builds == builds
        torch.testing.assert_close(got, _unprepared(model, images), atol=0, rtol=0)
        torch.testing.assert_close(got, _eager(model, images), atol=1e-4, rtol=1e-4)
        return got

    @pytest.mark.parametrize("tensor", ["stem.0.conv.weight", "stage1.0.mlp.fc1.weight", "stage3.0.attn.kv.bias",
                                        "stage3.0.pos.bn.running_var", "neck.3.weight"])
    def test_in_place_update(self, tensor):
        model = _encoder()
        images = _images()
        before = self._check(model, images, 1)
        with torch.no_grad():
            dict(list(model.named_parameters()) + list(model.named_buffers()))[tensor].mul_(1.5)
        after = self._check(model, images, 2)
        assert not torch.equal(before, after)
        self._check(model, images, 2)

    def test_optimizer_step(self):
        model = _encoder()
        images = _images()
        self._check(model, images, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(images).square().mean().backward()  # autograd path (the parameters require grad)
        optimizer.step()
        self._check(model, images, 2)

    def test_load_state_dict(self):
        model = _encoder()
        images = _images()
        before = self._check(model, images, 1)
        model.load_state_dict(_encoder(seed=1).state_dict())
        assert not torch.equal(before, self._check(model, images, 2))

    def test_dtype_and_device_moves(self):
        model = _encoder()
        images = _images()
        self._check(model, images, 1)
        model.to(torch.float64)
        self._check(model, images.double(), 2)
        model.to(torch.float32)  # new storage again: the float32 entry's data_ptrs are stale
        self._check(model, images, 3)
        model.to("cpu")  # no-op move: nothing changes
        self._check(model, images, 3)

    def test_assigned_parameter_and_replaced_submodule(self):
        model = _encoder()
        images = _images()
        self._check(model, images, 1)
        fc2 = model.stage3[0].mlp.fc2
        fc2.weight = nn.Parameter(torch.randn_like(fc2.weight))
        self._check(model, images, 2)
        replacement = copy.deepcopy(model.stage1[0])
        with torch.no_grad():
            replacement.mlp.fc1.weight.normal_()
        model.stage1[0] = replacement
        self._check(model, images, 3)

    def test_train_then_eval(self):
        model = _encoder()
        images = _images(b=2)
        self._check(model, images, 1)
        with torch.no_grad():
            model.train()(images)  # updates the BatchNorm running statistics
        self._check(model.eval(), images, 2)

    def test_writes_through_data_need_invalidate(self):
        """``p.data`` has its own version counter (torch's design): such writes are invisible to the cache."""
        model = _encoder()
        images = _images()
        before = self._check(model, images, 1)
        model.stage1[0].mlp.fc1.weight.data.mul_(2.0)
        assert torch.equal(_infer(model, images), before) and _cache(model).builds == 1
        model.invalidate_prepared()
        assert not torch.equal(self._check(model, images, 2), before)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_autocast_has_its_own_entry(self, backend):
        model = _encoder()
        with torch.no_grad():  # large float32 biases: any bias not rounded to bf16 as the ops round it shows
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.normal_(0, 3)
        images = _images()
        plain = _infer(model, images, backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = _infer(model, images, backend)
            assert torch.equal(_infer(model, images, backend), half)
            want = _unprepared(model, images, backend)
        assert half.dtype == torch.bfloat16 and torch.equal(half, want)
        assert torch.equal(_infer(model, images, backend), plain)
        assert _cache(model).builds == 2

    def test_inference_tensors_run_uncached(self):
        """Buffers made under torch.inference_mode have no version counter: the forward still works (on the
        custom ops, nothing cached) and equals the same model made outside inference mode."""
        want = _infer(_encoder(), _images())
        with torch.inference_mode():
            model = _encoder().to(torch.float32)  # .to() inside inference mode makes inference tensors
            got = model(_images())
        assert any(b.is_inference() for b in model.buffers())
        assert torch.equal(got, want)
        assert _cache(model).builds == 0


class TestOpTables:
    def test_one_backend_per_forward(self, monkeypatch):
        device = torch.device("cpu")
        assert fused_ops.table_for(device) is fused_ops.ReferenceOps
        assert fused_ops.table_for(device, batch_is_empty=True) is fused_ops.ReferenceOps
        if TRITON_REASON is None:
            with lk.use_backend("triton"):
                assert fused_ops.table_for(device) is fused_ops.TritonOps
        real = _backend.choose
        monkeypatch.setattr(_backend, "choose", lambda op, dev: "triton" if op.name == "conv_mlp" else real(op, dev))
        assert fused_ops.table_for(device) is fused_ops.CustomOps  # mixed: each custom op decides

    def test_forced_backend_without_kernel_raises(self):
        model = _encoder()
        with pytest.raises(lk.BackendUnavailableError, match="cpu"):
            _infer(model, _images(), "cpu")


class TestCompile:
    """torch.compile on CPU: the custom ops are opaque; Triton runs inside them under the interpreter."""

    def test_fullgraph_compile(self):
        model = _encoder()
        images = _images()
        want = _unprepared(model, images)
        compiled = torch.compile(model, fullgraph=True)
        with torch.no_grad():
            got = compiled(images)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)  # inductor may reorder the folds' arithmetic
        assert _cache(model).builds == 0  # traced: folds in the graph, not the eager cache

    def test_compile_fused_reduce_overhead_on_cpu(self):
        """``mode="reduce-overhead"`` needs CUDA tensors for its graphs: on CPU it is a plain compile."""
        model = _encoder().compile_fused("reduce-overhead")
        images = _images()
        want = _unprepared(model, images)
        assert torch.equal(_infer(model, images), want)  # first call records the folds eagerly
        assert torch.equal(_infer(model, images), want)  # compiled, on the prepared weights
        if TRITON_REASON is None:
            torch.testing.assert_close(_infer(model, images, "triton"), want, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            model.stage2[0].mlp.fc2.weight.mul_(-1.0)
        _infer(model, images)  # the state check runs eagerly: rebuild
        got = _infer(model, images)  # the compiled graph reads the new weights (inputs, not constants)
        assert torch.equal(got, _unprepared(model, images))
        assert _cache(model).builds == 2 and _cache(model).replays >= 3
        model.compile_fused(None)
        assert torch.equal(_infer(model, images), got)


@pytest.mark.gpu
class TestPreparedGPU:
    """On CUDA: the prepared path on Triton, and compile_fused("reduce-overhead") replaying a CUDA graph."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_prepared_and_cuda_graphs(self, dtype):
        model = _encoder().cuda().to(dtype)
        images = _images(size=64, dtype=dtype).cuda()
        want = _unprepared(model, images)
        assert torch.equal(_infer(model, images), want)
        graphed = copy.deepcopy(model).compile_fused("reduce-overhead")
        outputs = [_infer(graphed, images) for _ in range(4)]  # record, warm up, capture, replay
        for out in outputs:  # every output stays valid: each replay's output is cloned out of the graph pool
            torch.testing.assert_close(out, want, atol=1e-2 if dtype == torch.bfloat16 else 1e-4, rtol=1e-2)
        with torch.no_grad():
            graphed.stage1[0].mlp.fc1.weight.mul_(0.5)
        _infer(graphed, images)
        torch.testing.assert_close(_infer(graphed, images), _unprepared(graphed, images), atol=1e-2, rtol=1e-2)
