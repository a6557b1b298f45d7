"""``benchmarks/centroid_offsets.py``'s measures in a vertebra's own frame (closed form)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("centroid_offsets")


def _grid(lo, hi, step=1.0) -> np.ndarray:
    """(N, 3) voxel centres filling the box [lo, hi) at ``step`` mm."""
    axes = [np.arange(a + step / 2, b, step) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _vertebra(z0: float) -> np.ndarray:
    """A body (40 x 30 x 20 mm) and a midline bar behind it (6 x 40 x 4 mm, 10 mm lower),
    in world LPS mm, the body's centre at (0, 0, z0)."""
    body = _grid((-20, -15, z0 - 10), (20, 15, z0 + 10))
    bar = _grid((-3, 15, z0 - 12), (3, 55, z0 - 8))
    return np.vstack([body, bar])


def test_offsets_of_a_body_and_a_bar_match_their_closed_form(script):
    points = {"T5": _vertebra(30.0), "T6": _vertebra(0.0), "T7": _vertebra(-30.0)}
    row = script.offsets(points)["T6"]
    n_body, n_bar = 40 * 30 * 20, 6 * 40 * 4
    # the whole centroid: weighted mean of the body's (y 0, z 0) and the bar's (y 35, z -10)
    cy, cz = 35.0 * n_bar / (n_body + n_bar), -10.0 * n_bar / (n_body + n_bar)
    body_y = np.arange(-14.5, 15.0) - cy  # the body's voxel rows, relative to the centroid
    anterior = body_y < -script.BODY_MM  # the part counted as the body
    assert row["y_mm"] == pytest.approx(-body_y[anterior].mean(), abs=0.01)
    assert row["z_mm"] == pytest.approx(cz, abs=0.01)  # the body is centred on z 0
    assert row["extent_mm"] == pytest.approx(21.0)  # voxel centres from -11.5 to 9.5
    # the 2 % most posterior voxels (499) are the bar's last 20-21 rows of 24: y 34.5-54.5
    assert 44.0 - cy <= row["tip_y_mm"] <= 45.0 - cy
    assert row["tip_z_mm"] == pytest.approx(-10.0 - cz, abs=0.01)
    # the arch (more than 12 mm behind the centroid, within 8 mm of the midline): the whole
    # bar at z -10 and the body's last two rows (16 x 20 voxels each) at z 0
    n_back = 2 * 16 * 20
    assert row["arch_z_mm"] == pytest.approx(-10.0 * n_bar / (n_bar + n_back) - cz, abs=0.01)
    assert row["lateral_share"] == 0.0  # nothing beyond 25 mm to either side


def test_local_frame_follows_the_spine_and_keeps_measures_under_rotation(script):
    points = {"T5": _vertebra(30.0), "T6": _vertebra(0.0), "T7": _vertebra(-30.0)}
    angle = np.radians(20.0)  # tilt the whole column about the left-right axis
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                    [0, np.sin(angle), np.cos(angle)]])
    tilted = {k: v @ rot.T for k, v in points.items()}
    a, b = script.offsets(points)["T6"], script.offsets(tilted)["T6"]
    for key in ("y_mm", "z_mm", "extent_mm", "tip_y_mm", "tip_z_mm", "arch_z_mm"):
        assert a[key] == pytest.approx(b[key], abs=0.1), key  # ties among rows: 0.05 mm


def test_rib_heights_find_bars_beside_each_level_at_their_height(script):
    # five levels 30 mm apart; beside each, bars 38 mm to both sides, 10 mm behind and
    # 7 mm above its centroid (what a rib's neck is to its vertebra)
    zs = [60.0, 30.0, 0.0, -30.0, -60.0]
    points = {f"T{i + 4}": _vertebra(z) for i, z in enumerate(zs)}
    centres = {n: p.mean(0) for n, p in points.items()}
    bars = [_grid((s * 38 - 4, c[1] + 6, c[2] + 5), (s * 38 + 4, c[1] + 14, c[2] + 9))
            for c in centres.values() for s in (-1, 1)]
    got = script.rib_heights(points, np.vstack(bars))
    assert set(got) == {"T5", "T6", "T7"}  # the ends have one neighbour only
    for name in got:
        assert got[name] == pytest.approx(7.0, abs=0.01)
    # heights wrap into (-7.5, 22.5] mm, a quarter of the 30 mm spacing below to three
    # quarters above: 22 stays, 32 reads as 2, -3 stays, -9 reads as 21
    for shift, want in ((15.0, 22.0), (25.0, 2.0), (-10.0, -3.0), (-16.0, 21.0)):
        moved = np.vstack([b + np.array([0.0, 0.0, shift]) for b in bars])
        assert script.rib_heights(points, moved)["T6"] == pytest.approx(want, abs=0.01)


@pytest.mark.parametrize("seed", [5, 2031])
def test_phantom_ribs_lie_near_the_disc_above_as_in_the_real_chest(script, seed):
    # the chest CT's ribs beside T3-T9 lie 7.9-11.5 mm above the centroids (decision ribs)
    from vertebra import labels as vlabels
    from vertebra.data.phantom import make_spine_phantom

    phantom = make_spine_phantom(seed, levels=("T2", "T10"), size="full", clinical=True)
    points = script._level_points(phantom.labels, vlabels)
    bright = script._bright_points(phantom.ct, script.RIB_HU, phantom.labels)
    heights = script.rib_heights(points, bright)
    for level in ("T3", "T4", "T5", "T6", "T7", "T8", "T9"):
        assert 6.0 < heights[level] < 13.0, (level, heights[level])


def test_notch_height_is_the_top_of_the_bone_in_front_of_t2(script):
    points = {"T1": _vertebra(30.0), "T2": _vertebra(0.0), "T3": _vertebra(-30.0)}
    c = points["T2"].mean(0)
    # a manubrium 20 mm wide whose top lies 6 mm below T2's centroid, 80 mm in front;
    # beside it, bone that does not count: clavicles' ends 15 mm higher beyond 12 mm of
    # the midline, and a rib head level with the centroid, 30 mm behind the front cut
    manubrium = _grid((c[0] - 10, c[1] - 90, c[2] - 46), (c[0] + 10, c[1] - 80, c[2] - 6))
    clavicles = [_grid((c[0] + s * 20 - 4, c[1] - 90, c[2] - 6), (c[0] + s * 20 + 4,
                                                                c[1] - 80, c[2] + 9))
                 for s in (-1, 1)]
    rib = _grid((c[0] - 4, c[1] - 20, c[2]), (c[0] + 4, c[1] - 10, c[2] + 10))
    bone = np.vstack([manubrium, *clavicles, rib])
    # 98th percentile of the manubrium's voxels: 40 rows of 20 x 10 at -45.5 to -6.5 mm
    want = np.quantile(np.repeat(np.arange(-45.5, -6.0), 200), script.NOTCH_QUANTILE)
    assert script.notch_height(points, bone) == pytest.approx(want)
    assert np.isnan(script.notch_height({k: points[k] for k in ("T1", "T3")}, bone))
    assert np.isnan(script.notch_height(points, rib))  # nothing in front of T2


def test_phantom_jugular_notch_lies_below_t2_as_in_the_real_chest(script):
    # the chest CT's manubrium top lies 6.3 mm below T2's centroid (centroid-offsets.json)
    from vertebra import labels as vlabels
    from vertebra.data.phantom import make_spine_phantom

    for seed in (5, 2031):
        wide = make_spine_phantom(seed, levels=("T1", "T4"), size=(512, 512, 512),
                                  spacing=1.5, fov=420.0)
        points = script._level_points(wide.labels, vlabels)
        bright = script._bright_points(wide.ct, script.RIB_HU, wide.labels)
        assert -12.0 < script.notch_height(points, bright) < -1.0, seed


def test_volumes_count_whole_vertebrae_in_ml_and_leave_out_cut_ones(script):
    import drrkit
    from vertebra import labels as vlabels

    data = np.zeros((20, 30, 40), np.float32)
    t5, l2, t6 = (vlabels.by_name(n).verse_id for n in ("T5", "L2", "T6"))
    data[2:6, 3:8, 4:10] = t5  # 4 x 5 x 6 voxels inside
    data[8:18, 10:20, 10:30] = l2  # 10 x 10 x 20 voxels inside
    data[0:3, 20:25, 30:35] = t6  # touches the first slice: cut by the scan's edge
    mask = drrkit.Volume(data, spacing=(0.5, 2.0, 3.0))  # 3 mm^3 voxels
    got = script.volumes(mask)
    assert got == {"T5": pytest.approx(4 * 5 * 6 * 3e-3), "L2": pytest.approx(2000 * 3e-3)}
    assert list(got) == ["T5", "L2"]  # cranio-caudal
