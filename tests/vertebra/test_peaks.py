"""Density-peak detection of 2-D centroids."""

import numpy as np
import pytest

from vertebra.peaks import density_peaks


def gaussian_image(centres, shape=(120, 80), sigma=3.0, heights=None):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    heights = np.ones(len(centres)) if heights is None else heights
    for (c, r), h in zip(centres, heights):
        image = np.maximum(image, h * np.exp(-((cols - c) ** 2 + (rows - r) ** 2) / (2 * sigma**2)))
    return image


def test_finds_each_blob_at_subpixel_accuracy():
    centres = np.array([[40.3, 15.7], [42.1, 35.2], [44.8, 55.5], [43.0, 76.1], [40.6, 97.9]])
    peaks = density_peaks(gaussian_image(centres), mm_per_pixel=1.0, min_distance_mm=8.0)
    assert len(peaks) == 5
    found = peaks.pixels[np.argsort(peaks.pixels[:, 1])]
    np.testing.assert_allclose(found, centres, atol=0.35)


def test_distance_threshold_is_in_mm():
    centres = [[30.0, 30.0], [30.0, 42.0]]  # 12 px apart
    image = gaussian_image(centres, sigma=2.5)
    assert len(density_peaks(image, mm_per_pixel=1.0, min_distance_mm=8.0)) == 2
    # same image at 0.5 mm per pixel: the blobs are 6 mm apart, closer than 8 mm
    assert len(density_peaks(image, mm_per_pixel=0.5, min_distance_mm=8.0)) == 1


def test_noise_below_threshold_and_empty_images():
    rng = np.random.default_rng(0)
    image = gaussian_image([[20.0, 20.0]]) + 0.2 * rng.random((120, 80))
    peaks = density_peaks(image, mm_per_pixel=1.0, threshold=0.5)
    assert len(peaks) == 1
    empty = density_peaks(np.zeros((10, 10)), mm_per_pixel=1.0)
    assert empty.pixels.shape == (0, 2) and len(empty) == 0
    with pytest.raises(ValueError):
        density_peaks(np.zeros((2, 2, 2)), mm_per_pixel=1.0)


def test_scores_sorted_and_weak_blob_kept():
    image = gaussian_image([[20.0, 20.0], [20.0, 80.0]], heights=[1.0, 0.6])
    peaks = density_peaks(image, mm_per_pixel=1.0, threshold=0.3)
    assert len(peaks) == 2 and peaks.scores[0] >= peaks.scores[1]
    np.testing.assert_allclose(peaks.scores, [1.0, 0.6], atol=0.02)


def test_refinement_keeps_a_lopsided_cluster_on_its_peak():
    # a Gaussian peak at (30.4, 40.6) with a flat shoulder hanging off one side: the whole
    # cluster's mean is pulled into the shoulder, the refined mean stays on the peak
    image = gaussian_image([[30.4, 40.6]], shape=(100, 60), sigma=2.0)
    image[48:70, 26:36] = np.maximum(image[48:70, 26:36], 0.5)
    whole = density_peaks(image, mm_per_pixel=1.0, threshold=0.3, min_distance_mm=30.0)
    near = density_peaks(image, mm_per_pixel=1.0, threshold=0.3, min_distance_mm=30.0,
                         refine_mm=4.0)
    assert len(whole) == len(near) == 1
    assert whole.pixels[0, 1] > 45  # dragged down the shoulder
    np.testing.assert_allclose(near.pixels[0], [30.4, 40.6], atol=0.15)
    np.testing.assert_allclose(near.scores, whole.scores)
    with pytest.raises(ValueError, match="refine_mm"):
        density_peaks(image, mm_per_pixel=1.0, refine_mm=0.0)
