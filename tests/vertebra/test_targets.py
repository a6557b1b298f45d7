"""2-D targets land on drrkit's projections, with sizes fixed in mm at the isocentre."""

import numpy as np
import pytest

import drrkit
from drrkit.errors import DrrkitError
from vertebra import labels as L
from vertebra.targets import (
    default_isocenter,
    make_targets,
    pixel_size_at_isocenter,
    project_centroids,
)

ISO = np.array([10.0, -5.0, 20.0])


def orbit(views=4, size=96, sad=500.0, sid=1000.0, spacing=2.0):
    return drrkit.circular_orbit(views=views, sad=sad, sid=sid, size=size,
                                 pixel_spacing=spacing, isocenter=ISO)


def point_on_pixel(geometry, view, col, row, depth_point=ISO):
    """World point on the ray through pixel (col, row) of `view`, at the depth of `depth_point`."""
    origin, direction = drrkit.pixel_rays(geometry[view], np.array([[col, row]], float))
    depth = drrkit.project_points(depth_point, geometry[view]).depth[0, 0]
    cos = direction[0, 0] @ geometry.normals[view]
    return origin[0, 0] + direction[0, 0] * depth / cos


def test_pixel_size_follows_magnification():
    np.testing.assert_allclose(pixel_size_at_isocenter(orbit(), ISO), 1.0)  # 2 mm / (1000/500)
    np.testing.assert_allclose(pixel_size_at_isocenter(orbit(sid=1500, spacing=1.5), ISO), 0.5)
    np.testing.assert_allclose(default_isocenter(orbit()), ISO, atol=1e-9)
    with pytest.raises(DrrkitError, match="isocentre"):
        default_isocenter(orbit(views=1))


def test_targets_land_on_projected_centroids():
    g = orbit(views=5, size=97)  # odd: the isocentre projects onto a pixel centre
    vol = drrkit.Volume(np.zeros((60, 40, 40), np.float32), spacing=(1.5, 1.5, 1.5),
                        origin=ISO - [30, 30, 45])
    # a column of vertebrae 25 mm apart (squares of 22 mm do not touch)
    ctd = {lab: ISO + [3 * np.sin(n), 4 * np.cos(n), 37.3 - 25 * n]
           for n, lab in enumerate((18, 19, 28, 20))}
    t = make_targets(ctd, g, vol, per_vertebra=True)
    proj = drrkit.project_points(np.array([ctd[k] for k in (18, 19, 28, 20)]), g)
    np.testing.assert_allclose(t.projected.pixels, proj.pixels)
    np.testing.assert_array_equal(t.projected.labels, [18, 19, 28, 20])
    np.testing.assert_array_equal(t.projected.classes, [18, 19, 20, 21])
    assert t.projected.visible.all()
    assert t.heatmaps.shape == (5, 4, 97, 97) and t.heatmaps.dtype == np.float32
    assert t.id_maps.shape == (5, 97, 97) and t.id_maps.dtype == np.int64
    for k in range(5):
        for n, cls in enumerate(t.projected.classes):
            c, r = np.rint(proj.pixels[k, n]).astype(int)
            peak = np.unravel_index(np.argmax(t.heatmaps[k, n]), (97, 97))
            assert peak == (r, c)
            assert t.id_maps[k, r, c] == cls
    combined = make_targets(ctd, g, vol).heatmaps
    np.testing.assert_allclose(combined, t.heatmaps.max(axis=1), atol=1e-7)
    assert set(np.unique(t.id_maps)) == {0, 18, 19, 20, 21}


@pytest.mark.parametrize("sid, spacing, pixel_mm", [(1000, 2.0, 1.0), (1500, 1.5, 0.5)])
def test_gaussian_width_uses_sigma_squared_in_mm(sid, spacing, pixel_mm):
    g = orbit(views=2, sid=sid, spacing=spacing)
    p = point_on_pixel(g, 0, 40, 50)
    t = make_targets({20: p}, g, sigma_mm=3.0, isocenter=ISO)
    sigma_px = 3.0 / pixel_mm
    np.testing.assert_allclose(t.sigma_px, sigma_px)
    h = t.heatmaps[0]
    assert h[50, 40] == pytest.approx(1.0, abs=1e-6)
    s = int(sigma_px)
    for dr, dc in [(0, s), (0, -s), (s, 0), (-s, 0)]:
        assert h[50 + dr, 40 + dc] == pytest.approx(np.exp(-0.5), rel=1e-5)  # not exp(-s/2)
    assert h[50 + s, 40 + s] == pytest.approx(np.exp(-1.0), rel=1e-5)


def test_identification_square_is_22_mm_at_the_isocentre():
    for sid, spacing, half in [(1000, 2.0, 11), (1500, 1.5, 22)]:
        g = orbit(views=1, sid=sid, spacing=spacing, size=64)
        p = point_on_pixel(g, 0, 30, 31)
        t = make_targets({20: p}, g, isocenter=ISO)
        cls = L.class_of(20)
        assert t.id_maps.max() == cls == 21
        rows, cols = np.nonzero(t.id_maps[0] == cls)
        assert (rows.min(), rows.max()) == (max(31 - half, 0), min(31 + half, 63))
        assert (cols.min(), cols.max()) == (max(30 - half, 0), min(30 + half, 63))
        assert set(np.unique(t.id_maps[0])) == {0, cls}


def _overlapping_pair():
    """Two vertebrae 10 mm apart along z whose squares overlap; T12 nearer the source in view 0."""
    g = orbit(views=1, size=64)
    top = point_on_pixel(g, 0, 32, 27)
    bottom = point_on_pixel(g, 0, 32, 37)
    # push T12 (top) towards the source along its own ray: same pixel, smaller depth
    src = g.sources[0]
    top = src + (top - src) * 0.9
    return g, {19: top, 20: bottom}


def test_overlap_rules():
    g, ctd = _overlapping_pair()
    t12, l1 = L.class_of(19), L.class_of(20)
    pix = drrkit.project_points(np.array([ctd[19], ctd[20]]), g).pixels[0]
    np.testing.assert_allclose(pix, [[32, 27], [32, 37]], atol=1e-9)
    depth = drrkit.project_points(np.array([ctd[19], ctd[20]]), g).depth[0]
    assert depth[0] < depth[1]
    col = 32
    nearest = make_targets(ctd, g, isocenter=ISO, overlap="nearest").id_maps[0, :, col]
    front = make_targets(ctd, g, isocenter=ISO, overlap="front").id_maps[0, :, col]
    order = make_targets(ctd, g, isocenter=ISO, overlap="order").id_maps[0, :, col]
    # squares span rows 16..38 (T12) and 26..48 (L1); the overlap is rows 26..38
    assert (nearest[16:32] == t12).all() and nearest[32] == t12  # tie at the mid-line -> front
    assert (nearest[33:49] == l1).all()
    assert (front[16:39] == t12).all() and (front[39:49] == l1).all()
    assert (order[16:26] == t12).all() and (order[26:49] == l1).all()
    assert nearest[15] == front[15] == order[15] == 0 and nearest[49] == 0


def test_visibility_and_what_is_drawn():
    g = orbit(views=2, size=64)
    vol = drrkit.Volume(np.zeros((20, 20, 20), np.float32), origin=ISO - 9.5)
    off_detector = point_on_pixel(g, 0, -20, 30)  # off view 0's detector but inside the CT?
    ctd = {1: ISO, 2: ISO + [0, 0, 200.0], 3: off_detector}
    proj = project_centroids(ctd, g, vol)
    assert proj.in_volume.tolist() == [True, False, bool(np.all(
        np.abs(vol.world_to_voxel(off_detector) - 9.5) <= 10))]
    assert proj.on_detector[:, 0].all() and not proj.on_detector[0, 2]
    np.testing.assert_array_equal(proj.visible, proj.on_detector & proj.in_volume[None])
    t = make_targets({1: ISO, 2: ISO + [0, 0, 200.0]}, g, vol, per_vertebra=True)
    assert t.heatmaps[:, 1].max() == 0  # outside the CT: not drawn
    assert set(np.unique(t.id_maps)) == {0, 1}


def test_empty_and_bad_input():
    g = orbit(views=2, size=32)
    t = make_targets({}, g, isocenter=ISO)
    assert t.heatmaps.shape == (2, 32, 32) and not t.heatmaps.any() and not t.id_maps.any()
    with pytest.raises(DrrkitError, match="not vertebra targets"):
        make_targets({26: ISO}, g, isocenter=ISO)
    with pytest.raises(DrrkitError, match="sigma_mm"):
        make_targets({20: ISO}, g, isocenter=ISO, sigma_mm=0)
    with pytest.raises(DrrkitError, match="overlap rule"):
        make_targets({20: ISO}, g, isocenter=ISO, overlap="first")
    with pytest.raises(DrrkitError, match="finite"):
        make_targets({20: [np.nan, 0, 0]}, g, isocenter=ISO)
    with pytest.raises(DrrkitError, match="Geometry"):
        make_targets({20: ISO}, "views", isocenter=ISO)
    with pytest.raises(DrrkitError, match="behind"):
        pixel_size_at_isocenter(g, g.sources[0] - 50 * g.normals[0])
