"""The CT-to-network-input definition shared by training and inference."""

import numpy as np
import pytest

import drrkit
from drrkit import DrrkitError
from vertebra.views import ViewConfig, normalize


def test_detector_covers_the_ct_box_in_every_view():
    vol = drrkit.Volume(np.zeros((150, 80, 100), np.float32), spacing=[1.5, 1.2, 2.0],
                        origin=[-40, 20, 300])
    config = ViewConfig(views=6, mm_per_pixel=2.5)
    h, w = config.detector_size(vol)
    assert h % 32 == 0 and w % 32 == 0
    g = config.geometry(vol, start_angle=17.0)
    assert g.shape == (6, h, w)
    proj = drrkit.project_points(vol.corners, g)
    assert proj.inside.all()
    # the pixel size at the isocentre is what was asked for
    iso = drrkit.project_points([vol.center, vol.center + [0, 0, 10.0]], g).pixels
    np.testing.assert_allclose(iso[:, 0, 1] - iso[:, 1, 1], 10.0 / 2.5)


def test_round_trip_and_errors():
    config = ViewConfig(views=4, mm_per_pixel=3.0, step=1.0)
    assert ViewConfig.from_dict(config.to_dict() | {"unknown": 1}) == config
    with pytest.raises(DrrkitError):
        ViewConfig(views=0)
    with pytest.raises(DrrkitError):
        ViewConfig(sad=1000, sid=500)
    np.testing.assert_allclose(normalize(np.array([8.0, 4.0]), 8.0), [1.0, 0.5])


def test_render_is_normalised_drr():
    vol = drrkit.Volume(np.full((10, 10, 10), 0.02, np.float32), spacing=[2.0] * 3)
    config = ViewConfig(views=2, mm_per_pixel=4.0, multiple=8)
    g = config.geometry(vol)
    # the networks' inputs are trilinear on every backend, whatever drrkit's default
    np.testing.assert_allclose(config.render(vol, g, backend="cpu"),
                               drrkit.render(vol, g, backend="cpu", method="trilinear") / 8.0,
                               rtol=1e-6)


def test_bone_enhanced_views():
    hu = np.full((12, 12, 12), 40.0, np.float32)
    hu[3:9, 4:8, 4:8] = 900.0
    vol = drrkit.Volume(drrkit.hu_to_mu(hu), spacing=[2.0] * 3)
    config = ViewConfig(views=3, mm_per_pixel=4.0, multiple=8, bone_gain=6.0,
                        bone_threshold_hu=150.0)
    g = config.geometry(vol)
    expected = drrkit.render(drrkit.enhance_bone(vol, 150.0, 6.0), g, backend="cpu",
                             method="trilinear") / 8.0
    np.testing.assert_allclose(config.render(vol, g, backend="cpu"), expected, rtol=1e-6)
    assert config.render(vol, g, backend="cpu").max() > 1.5 * ViewConfig(
        views=3, mm_per_pixel=4.0, multiple=8).render(vol, g, backend="cpu").max()
    # a stored config from before bone enhancement renders the plain CT
    old = {k: v for k, v in config.to_dict().items() if not k.startswith("bone")}
    assert ViewConfig.from_dict(old).bone_gain == 1.0
    assert ViewConfig.from_dict(config.to_dict()) == config
    for bad in ({"bone_gain": 0.9}, {"bone_threshold_hu": float("nan")}):
        with pytest.raises(DrrkitError, match="bone"):
            ViewConfig(**bad)
