"""``benchmarks/spine_rhythm.py``'s mean heatmap at projected points (closed form)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import drrkit


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("spine_rhythm")


def test_mean_heat_averages_the_views_at_each_projection(script):
    geometry = drrkit.circular_orbit(views=4, size=64, pixel_spacing=2.0)
    # heatmap of view k: k + the column index / 1000, so a value names its view and column
    cols = np.arange(64) / 1000.0
    heat = np.stack([np.broadcast_to(k + cols, (64, 64)) for k in range(4)]).astype(np.float32)
    result = SimpleNamespace(geometry=geometry, heatmaps=heat)
    points = np.array([[0.0, 0.0, 0.0], [5.0, 3.0, -8.0], [0.0, 0.0, 900.0]])
    got = script.mean_heat(result, points)
    at = np.rint(drrkit.project_points(points, geometry).pixels).astype(int)  # (K, N, 2)
    want = np.mean(np.arange(4)[:, None] + at[..., 0] / 1000.0, axis=0)
    np.testing.assert_allclose(got[:2], want[:2], atol=1e-6)
    assert np.isnan(got[2])  # off every detector: no view to average
