"""Projection geometry: conventions, round trips, constructors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError, Geometry, circular_orbit, pixel_rays, project_points
from tests.drrkit.conftest import random_rotation


def test_view0_source_is_anterior_and_left_is_image_right():
    g = circular_orbit(views=4, sad=500, sid=1000, size=101, pixel_spacing=2.0)
    np.testing.assert_allclose(g.sources[0], [0, -500, 0], atol=1e-9)   # anterior = -y
    np.testing.assert_allclose(g.sources[1], [500, 0, 0], atol=1e-9)    # 90 deg: patient's left
    np.testing.assert_allclose(g.angles_deg, [0, 90, 180, 270])
    # patient's left (+x) lands right of centre, superior (+z) above centre, in view 0
    pts = project_points([[10.0, 0, 0], [0, 0, 10.0], [0, 0, 0]], g)
    centre = pts.pixels[0, 2]
    np.testing.assert_allclose(centre, [50, 50], atol=1e-9)
    assert pts.pixels[0, 0, 0] > centre[0] and abs(pts.pixels[0, 0, 1] - 50) < 1e-9
    assert pts.pixels[0, 1, 1] < centre[1] and abs(pts.pixels[0, 1, 0] - 50) < 1e-9
    # superior stays up in every view of the orbit
    assert np.all(pts.pixels[:, 1, 1] < pts.pixels[:, 2, 1])


def test_magnification_and_depth():
    g = circular_orbit(views=3, sad=500, sid=1000, size=64, pixel_spacing=2.0)
    pts = project_points([[0, 0, 10.0]], g)
    # 10 mm at the isocentre, magnified 2x, on 2 mm pixels: 10 pixels
    np.testing.assert_allclose(pts.pixels[:, 0, 1], 31.5 - 10.0, atol=1e-9)
    np.testing.assert_allclose(pts.depth[:, 0], 500.0, atol=1e-9)
    np.testing.assert_allclose(g.source_to_detector, 1000.0)
    assert pts.inside.all()


def test_isocenter_is_volume_box_centre():
    vol = drrkit.Volume(np.zeros((4, 6, 8), np.float32), spacing=[1, 2, 3], origin=[10, 20, 30])
    np.testing.assert_allclose(vol.center, [10 + 3.5, 20 + 5.0, 30 + 4.5])
    g = circular_orbit(vol, views=2)
    np.testing.assert_allclose(g.sources[0], vol.center + [0, -500, 0])


@given(seed=st.integers(0, 2**31 - 1))
def test_project_then_rays_pass_through_point(seed):
    rng = np.random.default_rng(seed)
    g = circular_orbit(views=5, sad=400 + 200 * rng.random(), sid=1100, size=(60, 80),
                       pixel_spacing=(1.5, 2.5), isocenter=rng.normal(size=3) * 20,
                       start_angle=360 * rng.random())
    points = rng.normal(size=(7, 3)) * 50
    proj = project_points(points, g)
    origins, directions = pixel_rays(g, proj.pixels)
    # perpendicular distance from each point to its ray is zero
    offset = points[None] - origins
    perp = offset - np.einsum("kni,kni->kn", offset, directions)[..., None] * directions
    np.testing.assert_allclose(np.linalg.norm(perp, axis=-1), 0, atol=1e-8)
    np.testing.assert_allclose(np.einsum("kni,ki->kn", offset, g.normals), proj.depth)


@given(seed=st.integers(0, 2**31 - 1))
def test_rigid_motion_of_points_and_geometry_changes_nothing(seed):
    g = circular_orbit(views=3, size=(30, 40), start_angle=seed % 360)
    rigid = np.eye(4)
    rigid[:3, :3] = random_rotation(seed)
    rigid[:3, 3] = np.random.default_rng(seed).normal(size=3) * 100
    points = np.random.default_rng(seed + 1).normal(size=(6, 3)) * 60
    moved = points @ rigid[:3, :3].T + rigid[:3, 3]
    a = project_points(points, g)
    b = project_points(moved, g.moved(rigid))
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-7)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-7)


def test_from_matrices_reproduces_projection():
    g = circular_orbit(views=4, sad=600, sid=900, size=(50, 70), pixel_spacing=1.2,
                       isocenter=[5, -3, 40])
    h = Geometry.from_matrices(g.projection_matrices * 3.7, g.height, g.width, sid=1234)
    pts = np.random.default_rng(0).normal(size=(10, 3)) * 80
    np.testing.assert_allclose(project_points(pts, h).pixels, project_points(pts, g).pixels,
                               atol=1e-8)
    np.testing.assert_allclose(h.sources, g.sources, atol=1e-8)
    np.testing.assert_allclose(h.source_to_detector, 1234)


def test_from_vectors_centre_and_indexing():
    g = Geometry.from_vectors([[0, 0, -100]], [[0, 0, 100]], [[1, 0, 0]], [[0, 1, 0]], 3, 5)
    np.testing.assert_allclose(g.detector_centers, [[0, 0, 100]])
    np.testing.assert_allclose(g.detector_origins, [[-2, -1, 100]])
    assert g.shape == (1, 3, 5)
    sub = circular_orbit(views=6)[1:3]
    assert len(sub) == 2 and np.allclose(sub.angles_deg, [60, 120])


@pytest.mark.parametrize("kwargs", [{"views": 0}, {"sad": 1000, "sid": 500}, {"size": 0},
                                    {"pixel_spacing": -1.0}, {"views": 2.5}])
def test_bad_orbits_raise(kwargs):
    with pytest.raises(DrrkitError):
        circular_orbit(**kwargs)


def test_degenerate_view_raises():
    with pytest.raises(DrrkitError, match="degenerate"):
        Geometry.from_vectors([[0, 0, 100]], [[0, 0, 100]], [[1, 0, 0]], [[0, 1, 0]], 3, 3)


def test_vanishing_pixel_vectors_raise():
    """A 1e-230 mm pixel passes the determinant test (it scales with the vectors) but its
    detector normal underflows to NaN; it is refused with one clear line."""
    with pytest.raises(DrrkitError, match="at least 1e-06 mm"):
        Geometry.from_vectors([[0, 0, 0]], [[0, 0, 1]], [[0, 1, 0]], [[9.79e-231, 0, 0]],
                              1, 1)
