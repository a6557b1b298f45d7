"""Validation scores of networks with known outputs."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


class _Oracle(torch.nn.Module):
    """Returns the ground truth of one RenderedViews as its output (padded like the input)."""

    def __init__(self, rv, shift_rows=0):
        super().__init__()
        self.heat = torch.from_numpy(np.roll(rv.heatmaps, shift_rows, axis=1))
        ids = torch.from_numpy(rv.id_maps.astype(np.int64))
        self.logits = 10.0 * torch.nn.functional.one_hot(ids, 27).permute(0, 3, 1, 2).float()

    def forward(self, x):
        from vertebra.models import UNetOutput

        h, w = self.heat.shape[1:]
        pad = (0, x.shape[-1] - w, 0, x.shape[-2] - h)
        return UNetOutput(torch.nn.functional.pad(self.heat, pad)[:, None],
                          torch.nn.functional.pad(self.logits, pad))


def test_confusion_of_a_network_one_level_low(rendered):
    from vertebra.training.validate import identification_scores

    rv = rendered[0]
    oracle = _Oracle(rv)
    ids = torch.from_numpy(rv.id_maps.astype(np.int64))
    low = torch.where(ids > 0, (ids + 1).clamp(max=26), ids)  # every square called the next level
    oracle.logits = 10.0 * torch.nn.functional.one_hot(low, 27).permute(0, 3, 1, 2).float()
    conf = identification_scores(oracle, [rv], batch_size=len(rv))["confusion"]
    classes = np.unique(rv.id_maps[rv.id_maps > 0])
    assert np.trace(conf) == 0 and conf.sum() == rv.visible.sum()
    for c in classes:  # row = true class, column = predicted
        assert conf[c].sum() == conf[c, min(c + 1, 26)] > 0


def test_validation_scores_of_an_oracle(rendered):
    from vertebra.training.validate import identification_scores, localization_scores

    rv = rendered[0]
    ident = identification_scores(_Oracle(rv), [rv], batch_size=len(rv))
    assert ident["pixel_accuracy"] == ident["square_accuracy"] == 1.0
    assert ident["sequence_accuracy"] == 1.0 and ident["squares"] == rv.visible.sum()
    conf = ident["confusion"]
    assert conf.shape == (27, 27) and conf.sum() == ident["squares"]
    assert np.count_nonzero(conf - np.diag(np.diag(conf))) == 0
    assert set(np.flatnonzero(np.diag(conf))) == set(np.unique(rv.id_maps[rv.id_maps > 0]))
    loc = localization_scores(_Oracle(rv), [rv], batch_size=len(rv))
    assert loc["detection_rate"] == 1.0 and loc["false_positives_per_view"] == 0.0
    assert loc["median_error_mm"] < 0.5  # peak extraction on exact Gaussians, 4 mm pixels
    off = localization_scores(_Oracle(rv, shift_rows=1), [rv], batch_size=len(rv))
    assert off["median_error_mm"] == pytest.approx(float(rv.pixel_mm[:, 1].mean()), rel=0.05)
