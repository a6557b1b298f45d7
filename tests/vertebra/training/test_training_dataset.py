"""Training items: crops, the view dataset, the resumable stream sampler."""

import numpy as np
import pytest
import torch

from tests.vertebra.training.conftest import tiny_config
from vertebra.training.dataset import (
    PairDataset,
    StreamSampler,
    ViewDataset,
    crop,
    crop_corner,
)
from vertebra.training.rendered import RenderedCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


def test_crop_and_corner():
    a = np.arange(12.0).reshape(3, 4)
    c = crop(a, -1, 2, 3)
    assert c.tolist() == [[0, 0, 0], [2, 3, 0], [6, 7, 0]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left = crop_corner(rng, (100, 40), 64, np.array([[20.0, 50.0]]), 0.5)
        assert 0 <= top <= 36 and -24 <= left <= 0  # crop inside the image / image inside crop


def _check_item(item, size):
    assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
    assert item["heatmap"].shape == (1, size, size)
    assert item["id_map"].shape == (size, size) and item["id_map"].dtype == torch.int64
    pts = item["pixels"].numpy()
    pts = pts[~np.isnan(pts[:, 0])]
    heat, ids = item["heatmap"][0].numpy(), item["id_map"].numpy()
    inside = [(c, r) for c, r in pts if 0 <= round(r) < size and 0 <= round(c) < size]
    for c, r in inside:  # targets sit on the projected centroids
        assert heat[round(r), round(c)] > 0.8
        assert ids[round(r), round(c)] > 0
    return len(inside)


def test_view_dataset_items_on_the_fly_and_cached(phantoms, rendered):
    cfg = tiny_config()
    seen = 0
    for data in (phantoms, RenderedCache.from_views(rendered)):
        ds = ViewDataset(data, cfg)
        for i in range(4):
            seen += _check_item(ds[i], 64)
        # an item is a pure function of (seed, index)
        assert torch.equal(ds[3]["image"], ds[3]["image"])
        assert not torch.equal(ds[3]["image"], ds[4]["image"])
    assert seen > 0
    x1, x2 = PairDataset(RenderedCache.from_views(rendered), cfg)[0]
    assert x1.shape == x2.shape == (1, 64, 64)


def test_stream_sampler_resumes_and_splits_ranks():
    it = iter(StreamSampler(2, start=0))
    first = [next(it) for _ in range(6)]
    assert first == [0, 1, 2, 3, 4, 5]
    resumed = iter(StreamSampler(2, start=2))
    assert [next(resumed) for _ in range(2)] == [4, 5]
    r0, r1 = iter(StreamSampler(2, rank=0, world=2)), iter(StreamSampler(2, rank=1, world=2))
    a, b = [next(r0) for _ in range(4)], [next(r1) for _ in range(4)]
    assert not set(a) & set(b)
