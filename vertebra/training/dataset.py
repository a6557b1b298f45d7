"""Training samples: random views of random CTs, cropped to a fixed size and augmented.

Every sample is a pure function of ``(seed, index)``: item ``index`` draws its CT, view
angle, crop and augmentation from ``numpy.random.default_rng([seed, index])``. A training
run reads indices from :class:`StreamSampler`, an endless, resumable stream (iteration
``i`` of process ``r`` out of ``W`` uses indices ``(i * W + r) * B ... + B - 1``), so a
resumed run sees exactly the samples an uninterrupted one would have, and data-parallel
processes never share a sample.

Sources (see :mod:`vertebra.training.sources`):

* a :class:`~vertebra.training.rendered.RenderedCache` -- a random stored view;
* a CT source -- one view rendered on the fly at ``k * 360 / K + jitter`` degrees
  (``augment.angle_jitter_deg``) with :func:`~vertebra.training.rendered.render_views`.

Crops: ``crop_size`` x ``crop_size`` pixels; with probability ``augment.crop_on_vertebra``
centred within a quarter crop of a random visible vertebra, else anywhere; parts outside
the detector are filled with 0 (air: zero line integral, zero targets). Augmentation
changes the image only: ``image * scale + offset + N(0, noise^2)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vertebra.errors import VertebraError
from vertebra.training.config import TrainConfig
from vertebra.training.rendered import RenderedCache, RenderedViews, render_views


class _ViewSource:
    """Draws one view (as a one-view :class:`RenderedViews` slice) for a sample."""

    def __init__(self, data, config: TrainConfig) -> None:
        from vertebra.training.sources import CTSource

        if not isinstance(data, (RenderedCache, CTSource)):
            raise VertebraError(f"cannot train from a {type(data).__name__}; pass a CT source "
                                "or a RenderedCache")
        if len(data) == 0:
            raise VertebraError("the training data holds no CTs")
        self.data = data
        self.config = config
        self.cached = isinstance(data, RenderedCache)

    @property
    def view_config(self):
        return self.data.view_config if self.cached else self.config.views

    def draw(self, rng: np.random.Generator, count: int = 1) -> list[tuple[RenderedViews, int]]:
        """``count`` distinct views of one random CT, as (rendered, view index) pairs."""
        ct = int(rng.integers(len(self.data)))
        if self.cached:
            rv = self.data.load(ct)
            if count > len(rv):
                raise VertebraError(f"{rv.name} has {len(rv)} views, {count} needed")
            picks = rng.choice(len(rv), size=count, replace=False)
            return [(rv, int(v)) for v in picks]
        vc = self.config.views
        if count > vc.views:
            raise VertebraError(f"need {count} distinct views but the orbit has {vc.views}")
        ks = rng.choice(vc.views, size=count, replace=False)
        jitter = self.config.augment.angle_jitter_deg
        angles = ks * (360.0 / vc.views) + rng.uniform(-jitter, jitter, size=count)
        item = self.data.load(ct)
        out = []
        for a in angles:
            rv = render_views(item, vc, [float(a)], views=[0], sigma_mm=self.config.sigma_mm,
                              square_mm=self.config.square_mm,
                              backend=self.config.render_backend)
            out.append((rv, 0))
        return out


def crop(array: np.ndarray, top: int, left: int, size: int, fill=0) -> np.ndarray:
    """``array[top:top+size, left:left+size]`` with the parts outside filled with ``fill``.

    Args:
        array: (H, W) image.
        top, left: crop corner in pixels; may be negative or run past the image.
        size: crop side in pixels.
    """
    h, w = array.shape
    out = np.full((size, size), fill, dtype=array.dtype)
    r0, r1 = max(top, 0), min(top + size, h)
    c0, c1 = max(left, 0), min(left + size, w)
    if r0 < r1 and c0 < c1:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = array[r0:r1, c0:c1]
    return out


def crop_corner(rng: np.random.Generator, shape: tuple[int, int], size: int,
                centres: np.ndarray, p_on: float) -> tuple[int, int]:
    """(top, left) of a random crop of an (H, W) image.

    With probability ``p_on`` (and when ``centres`` (M, 2) (col, row) is not empty) the
    crop is centred within ``size / 4`` of a random centre, else placed uniformly. The
    corner is then clipped so the crop stays inside the image, or, for an image smaller
    than the crop, so the image stays inside the crop.
    """
    h, w = shape
    lo = np.array([min(0, h - size), min(0, w - size)])
    hi = np.array([max(0, h - size), max(0, w - size)])
    if len(centres) and rng.random() < p_on:
        col, row = centres[rng.integers(len(centres))] + rng.uniform(-size / 4, size / 4, 2)
        corner = np.round([row - size / 2, col - size / 2]).astype(int)
    else:
        corner = np.array([rng.integers(lo[0], hi[0] + 1), rng.integers(lo[1], hi[1] + 1)])
    corner = np.clip(corner, lo, hi)
    return int(corner[0]), int(corner[1])


def augment_image(image: np.ndarray, rng: np.random.Generator, config) -> np.ndarray:
    """``blur(image ** gamma) * scale + offset + distractors + noise`` with factors drawn
    from ``config`` (AugmentConfig); the gamma, blur and distractor steps draw nothing
    from ``rng`` while their ranges are the identity.

    Args:
        image: (H, W) float32 network input.

    Returns:
        (H, W) float32.
    """
    if config.gamma != (1.0, 1.0):
        image = np.maximum(image, 0.0) ** np.float32(rng.uniform(*config.gamma))
    if config.blur_px != (0.0, 0.0):
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, rng.uniform(*config.blur_px), mode="nearest")
    scale = rng.uniform(*config.scale)
    offset = rng.uniform(*config.offset)
    sigma = rng.uniform(*config.noise)
    out = image * np.float32(scale) + np.float32(offset)
    if config.distractors:
        out = out + _distractors(image.shape, int(rng.integers(0, config.distractors + 1)), rng)
    if sigma > 0:
        out = out + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def _distractors(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 sum of ``n`` soft bright shapes: elliptic blobs and straight bands
    (tubes, wires, contrast-filled vessels seen end-on or along), each 0.05-0.4 high."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        height = rng.uniform(0.05, 0.4)
        if rng.random() < 0.5:  # blob
            a, b = rng.uniform(1.5, max(2.0, 0.15 * min(h, w)), 2)
            d2 = ((rows - r0) / a) ** 2 + ((cols - c0) / b) ** 2
        else:  # band through (r0, c0)
            t = rng.uniform(0, np.pi)
            d2 = (((rows - r0) * np.cos(t) - (cols - c0) * np.sin(t)) / rng.uniform(0.7, 4.0)) ** 2
        out += np.float32(height) * np.exp(-0.5 * d2)
    return out


class ViewDataset(torch.utils.data.Dataset):
    """Random cropped, augmented training views; ``dataset[i]`` is a dict of tensors.

    Args:
        data: a CT source (render on the fly) or a :class:`RenderedCache`.
        config: the :class:`TrainConfig` (crop size, augmentation, targets, views).
        seed: seed of the sample stream (default ``config.seed``).
        augment: apply intensity augmentation and angle jitter (False: fixed angles,
            plain image; crops are still random).

    Items (S = ``config.crop_size``):
        ``image`` (1, S, S) float32, ``heatmap`` (1, S, S) float32, ``id_map`` (S, S)
        int64 classes, ``t13`` () bool, ``pixel_mm`` (2,) float32 mm per pixel at the
        isocentre (column, row), ``pixels`` (P, 2) float32 visible centroids in crop
        pixels (col, row) padded with NaN to P = 32 rows.
    """

    MAX_POINTS = 32

    def __init__(self, data, config: TrainConfig, *, seed: int | None = None,
                 augment: bool = True) -> None:
        from dataclasses import replace

        from vertebra.training.config import AugmentConfig

        if not augment:
            config = replace(config, augment=replace(
                AugmentConfig.none(), crop_on_vertebra=config.augment.crop_on_vertebra))
        self.source = _ViewSource(data, config)
        self.config = config
        self.seed = config.seed if seed is None else int(seed)

    @property
    def view_config(self):
        """The :class:`ViewConfig` the views come from (the cache's, for a cache)."""
        return self.source.view_config

    def __len__(self) -> int:
        """Nominal size (CTs x views); indices beyond it are valid too (an endless stream)."""
        return len(self.source.data) * self.view_config.views

    def _sample(self, rv: RenderedViews, v: int, rng: np.random.Generator) -> dict:
        size = self.config.crop_size
        vis = rv.visible[v]
        centres = rv.pixels[v][vis]
        top, left = crop_corner(rng, rv.images.shape[1:], size, centres,
                                self.config.augment.crop_on_vertebra)
        image = augment_image(crop(rv.images[v], top, left, size), rng, self.config.augment)
        pts = np.full((self.MAX_POINTS, 2), np.nan, dtype=np.float32)
        shifted = centres - np.array([left, top])
        pts[:min(len(shifted), self.MAX_POINTS)] = shifted[:self.MAX_POINTS]
        return {
            "image": torch.from_numpy(image[None]),
            "heatmap": torch.from_numpy(crop(rv.heatmaps[v], top, left, size)[None]),
            "id_map": torch.from_numpy(crop(rv.id_maps[v], top, left, size).astype(np.int64)),
            "t13": torch.tensor(bool(rv.t13)),
            "pixel_mm": torch.from_numpy(rv.pixel_mm[v].astype(np.float32)),
            "pixels": torch.from_numpy(pts),
        }

    def __getitem__(self, index: int) -> dict:
        if int(index) < 0:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        (rv, v), = self.source.draw(rng, 1)
        return self._sample(rv, v, rng)


class PairDataset(ViewDataset):
    """Positive pairs for multi-view SimSiam: two different views of one CT.

    ``dataset[i]`` -> ``(x1, x2)``, each (1, S, S) float32, cropped and augmented
    independently.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if int(index) < 0:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        (ra, va), (rb, vb) = self.source.draw(rng, 2)
        return self._sample(ra, va, rng)["image"], self._sample(rb, vb, rng)["image"]


class StreamSampler(torch.utils.data.Sampler):
    """Endless sample indices for one process of a (possibly data-parallel) run.

    Iteration ``i`` (from ``start``) of process ``rank`` out of ``world`` takes indices
    ``(i * world + rank) * batch_size + b`` for ``b < batch_size``: every process sees
    different samples, and resuming at iteration ``start`` continues the same stream.
    This plays the role of ``DistributedSampler`` for an endless stream.
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if batch_size < 1 or start < 0 or not 0 <= rank < world:
            raise VertebraError("need batch_size >= 1, start >= 0 and 0 <= rank < world")
        self.batch_size, self.start, self.rank, self.world = batch_size, start, rank, world

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            base = (i * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            i += 1


def make_loader(dataset, batch_size: int, start: int = 0, rank: int = 0, world: int = 1,
                workers: int = 0):
    """A DataLoader reading ``dataset`` through a :class:`StreamSampler` (never ends)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=StreamSampler(batch_size, start, rank, world),
        num_workers=workers, persistent_workers=workers > 0, drop_last=True)
