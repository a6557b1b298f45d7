"""Losses: square rows, the Sequence Loss term, identification and focal heatmap losses."""

import numpy as np
import pytest
import torch

from drrkit.errors import DrrkitError
from vertebra.sequence import SequenceDP, sequence_loss
from vertebra.training.losses import heatmap_loss, identification_loss, sequence_term, square_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


def test_square_rows_mean_softmax_per_square():
    probs = torch.zeros(1, 27, 2, 4)
    probs[0, 0] = 1.0
    ids = torch.zeros(1, 2, 4, dtype=torch.int64)
    ids[0, :, :2] = 21  # L1 square
    ids[0, :, 2:3] = 19  # T12 square
    probs[0, :, :, :2] = 0
    probs[0, 21, 0, :2] = 1.0
    probs[0, 20, 1, :2] = 1.0  # half of L1's pixels say T13
    rows = square_rows(probs, ids)
    assert rows.lengths.tolist() == [2]
    assert rows.classes.tolist() == [[19, 21]]  # spine order
    assert rows.probs[0, 1, 20].item() == pytest.approx(0.5)  # column of class 21 (L1)
    assert rows.probs[0, 1, 19].item() == pytest.approx(0.5)  # column of class 20 (T13)
    assert rows.probs[0, 0].sum().item() == pytest.approx(0.0)  # T12's pixels: background


def test_sequence_term_uses_the_spines_own_chain():
    """T12 then L1 predicted perfectly: consecutive without T13, a skip with T13."""
    ids = torch.zeros(1, 1, 4, dtype=torch.int64)
    ids[0, 0, :2], ids[0, 0, 2:] = 19, 21
    probs = torch.zeros(1, 27, 1, 4)
    probs[0, 19, 0, :2] = 1.0
    probs[0, 21, 0, 2:] = 1.0
    dp = SequenceDP()
    no_t13 = sequence_term(probs, ids, torch.tensor([False]), dp)
    with_t13 = sequence_term(probs, ids, torch.tensor([True]), dp)
    perfect = sequence_loss(np.eye(2))  # two consecutive one-hot rows
    assert no_t13.item() == pytest.approx(float(perfect))
    assert with_t13.item() > no_t13.item() + 0.3
    # a batch mixing both chains averages the two per-image losses
    both = sequence_term(probs.repeat(2, 1, 1, 1), ids.repeat(2, 1, 1),
                         torch.tensor([False, True]), dp)
    assert both.item() == pytest.approx((no_t13.item() + with_t13.item()) / 2)
    # an image without vertebrae contributes nothing
    empty = sequence_term(probs, torch.zeros_like(ids), torch.tensor([False]), dp)
    assert empty.item() == 0.0


def test_identification_loss_gradients_and_switch():
    torch.manual_seed(0)
    logits = torch.randn(2, 27, 8, 8, requires_grad=True)
    ids = torch.zeros(2, 8, 8, dtype=torch.int64)
    ids[:, 2:5, 2:5], ids[:, 5:8, 2:5] = 8, 9
    t13 = torch.tensor([False, True])
    on = identification_loss(logits, ids, t13, gamma=1.0)
    off = identification_loss(logits, ids, t13, sequence=False)
    assert on.total.item() == pytest.approx(on.ce.item() + on.seq.item())
    assert off.total.item() == pytest.approx(off.ce.item())
    assert off.seq.item() == pytest.approx(on.seq.item()) and not off.seq.requires_grad
    (g_seq,) = torch.autograd.grad(on.seq, logits)
    assert g_seq.abs().sum() > 0
    assert heatmap_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0
    w = heatmap_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), fg_weight=3.0)
    assert w.item() == pytest.approx(4.0 / 2)


def test_focal_heatmap_loss_closed_form_and_gradients():
    from vertebra.training.losses import focal_heatmap_loss

    target = torch.tensor([[[[1.0, 0.95, 0.5, 0.0]]]])  # two positives (>= 0.9)
    x = torch.tensor([[[[0.0, 2.0, -1.0, -3.0]]]], requires_grad=True)
    p = torch.sigmoid(x.detach())
    pos = -((1 - p[..., :2]) ** 2 * torch.log(p[..., :2])).sum()
    neg = -((1 - target[..., 2:]) ** 4 * p[..., 2:] ** 2 * torch.log(1 - p[..., 2:])).sum()
    loss = focal_heatmap_loss(x, target)
    assert loss.item() == pytest.approx(((pos + neg) / 2).item(), rel=1e-6)
    (g,) = torch.autograd.grad(loss, x)
    assert (g[..., :2] < 0).all() and (g[..., 2:] > 0).all()  # raise peaks, lower the rest
    # stable for huge logits, and zero when the logits already say exactly the target
    big = torch.tensor([[[[60.0, 60.0, -60.0, -60.0]]]])
    assert torch.isfinite(focal_heatmap_loss(big, target)) and focal_heatmap_loss(
        big, target).item() < 1e-6
    assert focal_heatmap_loss(-big, target).item() > 10
    with pytest.raises(DrrkitError, match="shapes"):
        focal_heatmap_loss(x, target[..., :2])
