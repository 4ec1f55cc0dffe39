"""Multi-rank BatchNorm statistics of the fused LiteViT: 2 gloo processes whose BatchNorms synchronise (marked by
``synchronise_batch_statistics``, or ``nn.SyncBatchNorm``) compute what one process computes on their batches
together (outputs, DDP-averaged gradients, running statistics), and without it they do not (each rank normalises
by its own batch).

Measured (tiny config, 2 x 2 images of 32^2 whose halves differ in scale and shift, float32): synchronised
against one process, output max |diff| 2.1e-6, all gradients together rel 9.1e-7 (max |diff| 3.4e-7, in
parameters whose true gradient is ~0, such as biases before a BatchNorm), running statistics max |diff| 1.2e-7;
per-rank statistics against one process: output rel 0.50. Asserted: atol 2e-5 / rel 1e-5 and atol 2e-6 /
atol 1e-6, and rel > 0.05 without synchronisation.

Run as a script under torchrun this file is the worker (``python -m torch.distributed.run --nproc_per_node 2
tests/test_sync_batchnorm.py OUT``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PER_RANK, WORLD = 2, 2


VARIANTS = ("per-rank", "marked", "SyncBatchNorm")


def _model(variant: str):
    from litesam_kernels.model.config import CONFIGS
    from litesam_kernels.model.litevit import LiteViT
    from litesam_kernels.model.litevit_fused import synchronise_batch_statistics

    torch.manual_seed(0)
    model = LiteViT(CONFIGS["tiny"].encoder, fused=True)
    with torch.no_grad():  # non-trivial affine parameters and running statistics to update
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    if variant == "marked":
        # stem (2), downsamplings (2), pool-mixer norms (2 per block), attention's positional conv (1)
        assert synchronise_batch_statistics(model) == 9
    elif variant == "SyncBatchNorm":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.train()


def _batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(PER_RANK * WORLD, 3, 32, 32, generator=generator)
    images[PER_RANK:] = images[PER_RANK:] * 2 + 0.5  # ranks' batches of other statistics
    target = torch.randn(PER_RANK * WORLD, 32, 2, 2, generator=generator)
    return images, target


def _step(model, images, target):
    out = model(images)
    (out - target).square().mean().backward()
    return out.detach()


def _result(model, out):
    return {"out": out, "grads": [p.grad.clone() for p in model.parameters()],
            "buffers": [b.clone() for b in model.buffers()]}


def _worker(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    images, target = _batch()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for variant in VARIANTS:
        model = _model(variant)
        out = _step(model, images[mine], target[mine])
        for p in model.parameters():  # what DistributedDataParallel does with the gradients
            torch.distributed.all_reduce(p.grad)
            p.grad /= WORLD
        outs = [torch.empty_like(out) for _ in range(WORLD)]
        torch.distributed.all_gather(outs, out)
        results[variant] = _result(model, torch.cat(outs))
        results[variant]["buffers_agree"] = all(  # the running statistics must be the same on every rank
            _same_on_every_rank(b) for b in model.buffers())
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "ranks.pt"))
    torch.distributed.destroy_process_group()


def _same_on_every_rank(tensor):
    copies = [torch.empty_like(tensor) for _ in range(WORLD)]
    torch.distributed.all_gather(copies, tensor)
    return all(torch.equal(c, tensor) for c in copies)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(WORLD), __file__, str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "ranks.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process():
    images, target = _batch()
    model = _model("per-rank")
    return _result(model, _step(model, images, target))


@pytest.mark.parametrize("variant", ["marked", "SyncBatchNorm"])
def test_two_gloo_ranks_with_synchronised_batchnorm_equal_one_process(two_ranks, one_process, variant):
    synced, alone = two_ranks[variant], one_process
    assert synced["buffers_agree"]
    torch.testing.assert_close(synced["out"], alone["out"], atol=2e-5, rtol=0)
    squared = sum(float((a.double() - b.double()).norm()) ** 2 for a, b in zip(synced["grads"], alone["grads"]))
    assert (squared / sum(float(b.double().norm()) ** 2 for b in alone["grads"])) ** 0.5 < 1e-5
    for got, want in zip(synced["grads"], alone["grads"]):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    for got, want in zip(synced["buffers"], alone["buffers"]):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert int(synced["buffers"][-1]) == 1  # num_batches_tracked: one update per step, as nn.SyncBatchNorm


def test_per_rank_statistics_differ_from_one_process(two_ranks, one_process):
    """What synchronising guards against: each half normalised by its own batch."""
    assert _rel(two_ranks["per-rank"]["out"], one_process["out"]) > 0.05
    assert two_ranks["per-rank"]["buffers_agree"] is False


def test_sync_batchnorm_model_runs_eval_and_alone():
    """A converted model in one process trains like the plain one and runs the prepared inference path."""
    images, target = _batch()
    plain, synced = _model("per-rank"), _model("SyncBatchNorm")
    torch.testing.assert_close(_step(synced, images, target), _step(plain, images, target), atol=0, rtol=0)
    plain.eval(), synced.eval()
    with torch.no_grad():
        torch.testing.assert_close(synced(images), plain(images), atol=0, rtol=0)


def test_batch_statistics_of_one_process_are_torchs():
    from litesam_kernels.model.litevit_fused import batch_statistics

    x = torch.randn(2, 5, 7, 3, dtype=torch.float64) * 0.01 + 1e4  # |mean| >> std: two passes keep the variance
    mean, var, count = batch_statistics(x)
    flat = x.reshape(-1, 3)
    torch.testing.assert_close(mean, flat.mean(0))
    torch.testing.assert_close(var, flat.var(0, unbiased=False))
    assert float(count) == 70


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _worker(sys.argv[1])
