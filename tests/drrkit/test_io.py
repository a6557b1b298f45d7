"""Geometry JSON round trips and all-or-nothing writes (drrkit.io)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from drrkit import DrrkitError, Geometry, circular_orbit, project_points
from drrkit import io as dio


def _through_text(geometry: Geometry) -> Geometry:
    """to dict -> JSON text -> dict -> Geometry, as a file round trip does."""
    return dio.geometry_from_json(json.loads(dio.dumps(dio.geometry_to_json(geometry))))


def _assert_identical(a: Geometry, b: Geometry) -> None:
    for name in ("sources", "detector_origins", "u", "v"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.angles_deg, b.angles_deg)  # NaN == NaN here
    assert (a.height, a.width) == (b.height, b.width)


def _oblique_orbit() -> Geometry:
    g = circular_orbit(None, views=7, sad=611.3, sid=1093.7, size=(48, 64),
                       pixel_spacing=(1.7, 2.3), isocenter=(12.5, -7.25, 30.1), start_angle=13.0)
    a = np.deg2rad(23.0)
    rigid = np.eye(4)
    rigid[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    rigid[:3, 3] = (3.3, -1.1, 0.7)
    return g.moved(rigid)


def test_round_trip_is_exact_for_an_orbit_and_a_moved_orbit():
    for geometry in (circular_orbit(None, views=10), _oblique_orbit()):
        back = _through_text(geometry)
        _assert_identical(geometry, back)
        np.testing.assert_array_equal(back.projection_matrices, geometry.projection_matrices)


@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=12, max_size=12),
    st.integers(1, 4000),
    st.integers(1, 4000),
)
@example([0, 0, 0, 0, 0, 1, 0, 1, 0, 9.79e-231, 0, 0], 1, 1)  # found by CI: a vanishing pixel
def test_round_trip_is_exact_for_arbitrary_views(numbers, height, width):
    s, d0, u, v = (np.array(numbers[i:i + 3]) for i in range(0, 12, 3))
    try:
        geometry = Geometry(s, d0, u, v, height, width)
    except DrrkitError:  # degenerate draw (source in the detector plane): not a geometry
        return
    _assert_identical(geometry, _through_text(geometry))


def test_json_layout_matches_the_geometry():
    geometry = _oblique_orbit()
    data = dio.geometry_to_json(geometry)
    assert (data["height"], data["width"]) == (48, 64)
    assert data["world"] == "LPS mm"
    assert data["pixel_spacing"] == pytest.approx([2.3, 1.7])  # [column, row]
    assert len(data["views"]) == 7
    for k, view in enumerate(data["views"]):
        assert view["index"] == k
        assert view["angle_deg"] == pytest.approx(geometry.angles_deg[k])
        assert np.asarray(view["projection_matrix"]).shape == (3, 4)
        np.testing.assert_array_equal(view["projection_matrix"], geometry.projection_matrices[k])
        np.testing.assert_array_equal(view["source"], geometry.sources[k])
        np.testing.assert_array_equal(view["detector_center"], geometry.detector_centers[k])
        assert view["source_to_detector_mm"] == pytest.approx(1093.7)
    # a point projects the same through the stored matrix and through project_points
    point = np.array([20.0, 5.0, 40.0])
    p = np.asarray(data["views"][3]["projection_matrix"])
    h = p @ np.append(point, 1.0)
    expected = project_points(point, geometry).pixels[3, 0]
    np.testing.assert_allclose(h[:2] / h[2], expected, rtol=1e-12)


def test_nan_angles_become_null_and_come_back():
    g = circular_orbit(None, views=3, size=8)
    plain = Geometry(g.sources, g.detector_origins, g.u, g.v, g.height, g.width)  # NaN angles
    data = dio.geometry_to_json(plain)
    assert [view["angle_deg"] for view in data["views"]] == [None, None, None]
    json.dumps(data, allow_nan=False)  # standard JSON: no NaN tokens
    assert np.isnan(dio.geometry_from_json(data).angles_deg).all()


def test_mixed_pixel_spacing_gives_null_top_level_spacing():
    a = circular_orbit(None, views=1, size=8, pixel_spacing=1.0)
    b = circular_orbit(None, views=1, size=8, pixel_spacing=2.0)
    both = Geometry(np.r_[a.sources, b.sources], np.r_[a.detector_origins, b.detector_origins],
                    np.r_[a.u, b.u], np.r_[a.v, b.v], 8, 8)
    data = dio.geometry_to_json(both)
    assert data["pixel_spacing"] is None
    assert [view["pixel_spacing"] for view in data["views"]] == [[1.0, 1.0], [2.0, 2.0]]


def test_views_given_only_as_projection_matrices_keep_their_rays():
    geometry = _oblique_orbit()
    data = dio.geometry_to_json(geometry)
    for view in data["views"]:
        for key in ("source", "detector_origin", "u", "v", "detector_center", "normal"):
            del view[key]
    back = dio.geometry_from_json(data)
    np.testing.assert_allclose(back.sources, geometry.sources, atol=1e-9)
    points = np.random.default_rng(0).uniform(-100, 100, size=(20, 3))
    np.testing.assert_allclose(project_points(points, back).pixels,
                               project_points(points, geometry).pixels, atol=1e-8)
    np.testing.assert_allclose(back.source_to_detector, geometry.source_to_detector, rtol=1e-9)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("height"), "no 'height'"),
        (lambda d: d.update(width=0), "width must be a positive integer"),
        (lambda d: d.update(width=2.5), "width must be a positive integer"),
        (lambda d: d.update(views=[]), "non-empty list of views"),
        (lambda d: d.update(format="other"), "not a drrkit geometry"),
        (lambda d: d["views"][0].update(u=[1.0, 2.0]), "'u' must have shape"),
        (lambda d: d["views"][0].update(source=[float("nan"), 0.0, 0.0]), "must be finite"),
        (lambda d: d["views"][0].update(v="abc"), "'v' must be numbers"),
        (lambda d: [d["views"][0].pop(k) for k in ("u", "projection_matrix")],
         "no 'projection_matrix'"),
        (lambda d: d["views"][0].update(v=d["views"][0]["u"]), "degenerate view"),
    ],
)
def test_bad_geometry_json_is_refused_clearly(edit, message):
    data = dio.geometry_to_json(circular_orbit(None, views=2, size=8))
    edit(data)
    with pytest.raises(DrrkitError, match=message):
        dio.geometry_from_json(data)


def test_save_and_load_geometry_file(tmp_path):
    geometry = _oblique_orbit()
    path = tmp_path / "geometry.json"
    dio.save_geometry(path, geometry, note={"hello": [1, 2]})
    data = json.loads(path.read_text())
    assert data["note"] == {"hello": [1, 2]}
    _assert_identical(geometry, dio.load_geometry(path))
    with pytest.raises(DrrkitError, match="overwrite"):
        dio.save_geometry(path, geometry, views=[])
    with pytest.raises(DrrkitError, match="no such file"):
        dio.load_geometry(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DrrkitError, match="not valid JSON"):
        dio.load_geometry(tmp_path / "bad.json")


def test_dumps_is_standard_json_with_compact_number_lists():
    data = {"a": [1.5, -2.0, 3e-20], "b": [[1, 2], [3, 4]], "c": {"d": None, "e": "x"},
            "f": [], "g": {}, "h": [{"i": True}]}
    text = dio.dumps(data)
    assert json.loads(text) == data
    assert '"a": [1.5, -2.0, 3e-20]' in text
    with pytest.raises(ValueError):
        dio.dumps({"x": float("nan")})


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "data.npy"
    dio.save_npy(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(np.load(path), np.arange(6).reshape(2, 3))
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask

    def broken(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        dio.atomic_write(path, broken)
    np.testing.assert_array_equal(np.load(path), np.arange(6).reshape(2, 3))  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npy"]  # no temporary left


def test_staged_directory_commits_everything_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), dio.staged_directory(out) as staging:
        (staging / "drr.npy").write_bytes(b"partial")
        raise RuntimeError("render failed")
    assert not (tmp_path / "new").exists()  # folders it made are removed again

    out.mkdir(parents=True)
    (out / "drr.npy").write_bytes(b"old")
    (out / "view_007.png").write_bytes(b"old view")
    (out / "notes.txt").write_bytes(b"mine")
    with pytest.raises(KeyboardInterrupt), dio.staged_directory(out) as staging:
        (staging / "drr.npy").write_bytes(b"new")
        raise KeyboardInterrupt
    assert (out / "drr.npy").read_bytes() == b"old"
    assert sorted(p.name for p in out.iterdir()) == ["drr.npy", "notes.txt", "view_007.png"]

    moved = []
    real_replace = os.replace
    monkeypatch.setattr(dio.os, "replace", lambda a, b: (moved.append(os.path.basename(b)),
                                                         real_replace(a, b)))
    with dio.staged_directory(out, stale=lambda p: p.name.startswith("view_"),
                              last=("geometry.json", "drr.npy")) as staging:
        for name in ("drr.npy", "geometry.json", "view_000.png", "a.png"):
            (staging / name).write_bytes(b"new " + name.encode())
    assert moved == ["a.png", "view_000.png", "geometry.json", "drr.npy"]
    assert (out / "drr.npy").read_bytes() == b"new drr.npy"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "drr.npy", "geometry.json", "notes.txt", "view_000.png"]  # stale view gone


def test_staged_directory_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(DrrkitError, match="not a folder"), dio.staged_directory(target):
        pass


# ---------------------------------------------------------------------- json_safe
def test_json_safe_gives_plain_json():
    value = {1: np.arange(4, dtype=np.int64).reshape(2, 2), "f": np.float32(1.5),
             "bad": [float("nan"), np.inf, -np.inf], "t": (np.bool_(True), "s", None)}
    safe = dio.json_safe(value)
    assert safe == {"1": [[0, 1], [2, 3]], "f": 1.5, "bad": [None, None, None],
                    "t": [True, "s", None]}
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8))
def test_json_safe_keeps_finite_numbers_and_drops_the_rest(values):
    array = np.asarray(values, dtype=np.float32)
    safe = dio.json_safe({"a": array})["a"]
    assert len(safe) == len(values)
    for got, x in zip(safe, array):
        assert got is None if not np.isfinite(x) else got == float(x)
    json.dumps(safe, allow_nan=False)
