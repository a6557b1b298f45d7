"""Multi-view SimSiam: loss, stop-gradient, schedule, pair sampling, checkpoint for the U-Nets."""

import math
import warnings

import numpy as np
import pytest
import torch

from drrkit.errors import DrrkitError
from vertebra.models import create_model
from vertebra.simsiam import (
    SimSiam,
    cosine_lr,
    make_optimizer,
    pretrain,
    pretrain_step,
    sample_view_pairs,
    set_lr,
    simsiam_loss,
)

ENC = "resnet10t"
SMALL = {"dim": 32, "pred_dim": 8}
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_loss_values_and_stop_gradient():
    z = torch.randn(4, 8)
    assert simsiam_loss(z, z, z, z).item() == pytest.approx(-1.0)
    assert simsiam_loss(z, z, -z, -z).item() == pytest.approx(1.0)
    assert simsiam_loss(2 * z, z, z, 3 * z).item() == pytest.approx(-1.0)  # scale-free
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None


def test_model_outputs_and_targets_detached():
    torch.manual_seed(0)
    model = SimSiam(ENC, **SMALL)
    x = torch.randn(3, 1, 32, 32)
    p1, p2, z1, z2 = model(x, x.flip(-1))
    assert p1.shape == p2.shape == z1.shape == (3, 32)
    assert p1.requires_grad and not z1.requires_grad and not z2.requires_grad
    with pytest.raises(DrrkitError, match=r"\(B, 1, H, W\)"):
        model.project(torch.randn(3, 3, 32, 32))


def test_cosine_schedule_and_fixed_predictor():
    assert cosine_lr(0.0125, 0, 100) == pytest.approx(0.0125)
    assert cosine_lr(0.0125, 50, 100) == pytest.approx(0.00625)
    assert cosine_lr(0.0125, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(1.0, 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    model = SimSiam(ENC, **SMALL)
    opt = make_optimizer(model, lr=0.1, fix_pred_lr=True)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    set_lr(opt, 75, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(cosine_lr(0.1, 75, 100))
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)
    n_pred = sum(p.numel() for p in opt.param_groups[1]["params"])
    assert n_pred == sum(p.numel() for p in model.predictor.parameters())


def test_pairs_are_two_different_views_of_one_ct():
    n, k = 5, 4
    value = 100 * np.arange(n)[:, None] + np.arange(k)[None, :]  # CT * 100 + view
    drrs = np.broadcast_to(value[:, :, None, None], (n, k, 6, 6)).astype(np.float32)
    gen = torch.Generator().manual_seed(0)
    pairs = sample_view_pairs(drrs, batch_size=64, generator=gen)
    seen = set()
    for _ in range(3):
        x1, x2 = next(pairs)
        assert x1.shape == x2.shape == (64, 1, 6, 6)
        a, b = x1[:, 0, 0, 0].long(), x2[:, 0, 0, 0].long()
        assert torch.equal(a // 100, b // 100) and not torch.any(a == b)
        seen |= set(a.tolist())
    assert len(seen) == n * k  # every CT and view gets drawn
    with pytest.raises(DrrkitError, match="K >= 2"):
        next(sample_view_pairs(np.zeros((3, 1, 6, 6))))


def test_pretrain_lowers_the_loss_on_a_fixed_batch():
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    res = pretrain([(x, x.flip(-1))], steps=8, encoder=ENC, lr=0.1, **SMALL)
    assert all(-1.0 <= v <= 1.0 for v in res.losses)
    assert res.losses[-1] < res.losses[0] - 0.05  # seeds 0-3 all drop by > 0.1


def test_pretrain_checkpoint_loads_into_both_unets(tmp_path):
    torch.manual_seed(0)
    drrs = torch.rand(4, 3, 32, 32)
    seen = []
    res = pretrain(
        drrs, steps=3, encoder=ENC, out=tmp_path / "enc.pt", batch_size=8,
        callback=lambda step, loss: seen.append(step), **SMALL,
    )
    assert seen == list(range(3)) and len(res.losses) == 3
    ckpt = torch.load(res.checkpoint, weights_only=True)
    assert ckpt["encoder"] == ENC and ckpt["config"]["steps_done"] == 3
    assert ckpt["config"]["lr"] == 0.0125 and ckpt["config"]["weight_decay"] == 1e-4
    fresh = SimSiam(ENC, **SMALL).encoder.state_dict()
    trained = res.model.encoder.state_dict()
    assert not torch.equal(fresh["layer1.0.conv1.weight"], trained["layer1.0.conv1.weight"])
    for task in ("localization", "identification"):
        net = create_model(encoder=ENC, task=task, pretrained=res.checkpoint)
        for key, value in trained.items():
            torch.testing.assert_close(net.encoder.state_dict()[key], value)


def test_pretrain_sources():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    batches = [(x, x.flip(-1)), (x.flip(-2), x)]
    assert len(pretrain(batches, steps=3, encoder=ENC, **SMALL).losses) == 3  # list re-read
    dataset = [(x[i], x[i].flip(-1)) for i in range(4)]  # items are single (C, H, W) pairs
    assert len(pretrain(dataset, steps=2, encoder=ENC, batch_size=2, **SMALL).losses) == 2
    one_shot = iter(batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pretrain(one_shot, steps=5, encoder=ENC, **SMALL)
    assert len(res.losses) == 2 and any("ran out" in str(w.message) for w in caught)
    with pytest.raises(DrrkitError, match="B >= 2"):
        pretrain_step(SimSiam(ENC, **SMALL), None, x[:1], x[:1])
    with pytest.raises(DrrkitError, match="cannot draw"):
        pretrain(42, steps=1, encoder=ENC, **SMALL)
