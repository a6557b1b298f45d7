"""Pictures: reformats sample the CT at the right world positions; views figure draws."""

import numpy as np
import pytest

import drrkit
from drrkit.errors import DrrkitError
from vertebra.report import case_stem, reformat, reformat_figure, sphere_map


def volume_with_spot(direction):
    """A 40^3 volume (1.5 mm voxels, rotated storage) with one bright voxel; its world point."""
    data = np.zeros((40, 40, 40), np.float32)
    data[25, 12, 30] = 100.0  # (k, j, i)
    vol = drrkit.Volume(data, np.array([1.5, 1.5, 1.5]), np.array([-20.0, 10.0, 5.0]),
                        direction)
    return vol, vol.voxel_to_world(np.array([[30.0, 12.0, 25.0]]))[0]


@pytest.mark.parametrize("direction", [np.eye(3),
                                       np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])])
@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_reformat_finds_the_spot_where_to_pixel_says(direction, plane):
    vol, spot = volume_with_spot(direction)
    image, to_pixel = reformat(vol, {20: spot}, plane, mm_per_pixel=0.5, window=(0.0, 50.0))
    col, row = to_pixel(spot[None])[0]
    r, c = np.unravel_index(np.argmax(image), image.shape)
    assert abs(c - col) <= 1.0 and abs(r - row) <= 1.0
    assert image.max() == 255
    # superior is up: a point 10 mm higher is 20 pixels (0.5 mm) further up
    assert to_pixel((spot + [0, 0, 10])[None])[0, 1] == pytest.approx(row - 20)


def test_reformat_follows_a_curved_spine():
    vol, spot = volume_with_spot(np.eye(3))
    # the plane passes through the spot at its height, elsewhere 15 mm to the side
    curve = {1: spot + [15, 15, 30], 2: spot, 3: spot + [15, 15, -30]}
    image, _ = reformat(vol, curve, "sagittal", mm_per_pixel=0.5, window=(0.0, 50.0))
    assert image.max() == 255
    flat, _ = reformat(vol, {1: spot + [15, 15, 0]}, "sagittal", mm_per_pixel=0.5,
                       window=(0.0, 50.0))
    assert flat.max() == 0


def test_reformat_figure_and_bad_plane():
    vol, spot = volume_with_spot(np.eye(3))
    pic = reformat_figure(vol, {20: spot}, "coronal", confidence={20: 0.9}, min_height=200)
    assert pic.mode == "RGB" and pic.size[1] >= 200
    with pytest.raises(DrrkitError):
        reformat(vol, {}, "axial")


def test_case_stem():
    assert case_stem("a/sub-verse004_ct.nii.gz") == "sub-verse004"
    assert case_stem("scan.mha") == "scan"
    assert case_stem("x_ct") == "x"


# ---------------------------------------------------------------------- label map, markups
def oblique_volume():
    """A 30 x 36 x 40 grid of anisotropic voxels, stored rotated and flipped."""
    direction = np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])
    return drrkit.Volume(np.zeros((30, 36, 40), np.float32), np.array([1.2, 1.5, 2.0]),
                         np.array([40.0, -20.0, 30.0]), direction)


def test_sphere_map_balls_sit_on_their_centroids():
    vol = oblique_volume()
    centroids = {8: vol.voxel_to_world(np.array([20.3, 17.6, 8.2])),
                 9: vol.voxel_to_world(np.array([18.9, 19.1, 20.7]))}
    labels = sphere_map(centroids, vol, radius_mm=5.0)
    assert labels.shape == vol.data.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 8, 9}
    for vid, point in centroids.items():
        kji = np.argwhere(labels == vid)
        com = vol.voxel_to_world(kji[:, ::-1].mean(axis=0))
        assert np.linalg.norm(com - point) < vol.spacing.min()  # within a voxel
        # every labelled voxel centre within the radius, and about a ball's volume
        dist = np.linalg.norm(vol.voxel_to_world(kji[:, ::-1]) - point, axis=-1)
        assert dist.max() <= 5.0
        ball = 4 / 3 * np.pi * 5.0**3 / np.prod(vol.spacing)
        assert 0.8 * ball < len(kji) < 1.2 * ball


def test_sphere_map_overlap_edges_and_bad_labels():
    vol = oblique_volume()
    a, b = vol.voxel_to_world(np.array([[20.0, 18.0, 15.0], [20.0, 18.0, 18.0]]))  # 6 mm
    labels = sphere_map({1: a, 2: b}, vol, radius_mm=5.0)
    kji = np.argwhere(labels > 0)
    world = vol.voxel_to_world(kji[:, ::-1])
    nearer = np.where(np.linalg.norm(world - a, axis=-1) <= np.linalg.norm(world - b, axis=-1),
                      1, 2)
    assert np.array_equal(labels[tuple(kji.T)], nearer)  # the nearer centroid wins
    corner = vol.voxel_to_world(np.array([0.0, 0.0, 0.0]))
    cut = sphere_map({3: corner, 4: corner - 100.0 * vol.direction[:, 0]}, vol)
    assert 0 < (cut == 3).sum() < 0.25 * (labels == 1).sum() + 40 and not (cut == 4).any()
    for bad in ({0: a}, {300: a}):
        with pytest.raises(DrrkitError, match="uint8"):
            sphere_map(bad, vol)
    assert not sphere_map({}, vol).any()


def check_slicer_markups(doc):
    """The fields 3D Slicer's markups schema (v1.0.3) requires or constrains, as we use them."""
    assert set(doc) >= {"@schema", "markups"} and isinstance(doc["markups"], list)
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    for markup in doc["markups"]:
        assert markup["type"] in ("Fiducial", "Line", "Angle", "Curve", "ClosedCurve",
                                  "Plane", "ROI")
        assert markup.get("coordinateSystem", "LPS") in ("LPS", "RAS")
        assert markup.get("coordinateUnits", "mm") in ("mm", "um")
        for key in ("locked", "fixedNumberOfControlPoints"):
            assert isinstance(markup.get(key, False), bool)
        for point in markup.get("controlPoints", []):
            assert isinstance(point, dict)
            for key in ("id", "label", "description"):
                assert isinstance(point.get(key, ""), str)
            position = point["position"]
            assert len(position) == 3 and all(isinstance(x, float) for x in position)
            orientation = point.get("orientation", [0.0] * 9)
            assert len(orientation) == 9 and all(isinstance(x, float) for x in orientation)
            for key in ("selected", "locked", "visibility"):
                assert isinstance(point.get(key, True), bool)
            assert point.get("positionStatus", "defined") in ("undefined", "preview", "defined")
        display = markup.get("display", {})
        assert isinstance(display.get("visibility", True), bool)
        assert isinstance(display.get("pointLabelsVisibility", False), bool)
        assert display.get("glyphType", "Sphere3D") in (
            "Vertex2D", "Dash2D", "Cross2D", "ThickCross2D", "Triangle2D", "Square2D",
            "Circle2D", "Diamond2D", "Arrow2D", "ThickArrow2D", "HookedArrow2D", "StarBurst2D",
            "Sphere3D", "Diamond3D")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A small phantom CT file (stored permuted and flipped) and its oracle labelling."""
    from vertebra import labels as vl
    from vertebra.data.phantom import make_spine_phantom
    from vertebra.pipeline import label_ct
    from vertebra.targets import make_targets
    from vertebra.views import ViewConfig

    phantom = make_spine_phantom(0, size="small")
    path = tmp_path_factory.mktemp("ct") / "case_ct.nii.gz"
    phantom.ct.save(path)
    volume = drrkit.load_volume(path)
    views = ViewConfig(views=6, mm_per_pixel=2.0)
    targets = make_targets(phantom.centroids, views.geometry(volume), volume)
    probs = np.eye(vl.NUM_CLASSES, dtype=np.float32)[targets.id_maps].transpose(0, 3, 1, 2)
    result = label_ct(volume, lambda x: targets.heatmaps, lambda x: probs.copy(), views=views,
                      backend="cpu")
    assert len(result.vertebrae) >= 4
    return path, volume, result


def test_write_outputs_label_map_and_markups(labelled, tmp_path):
    import json

    import SimpleITK as sitk

    from vertebra.report import write_outputs

    path, volume, result = labelled
    files = write_outputs(result, volume, tmp_path / "out", "case", pictures=False)
    assert files["label_map"].name == "case_seg-spheres.nii.gz"
    assert files["markups"].name == "case.mrk.json"
    ct, seg = sitk.ReadImage(str(path)), sitk.ReadImage(str(files["label_map"]))
    assert seg.GetSize() == ct.GetSize() and seg.GetPixelID() == sitk.sitkUInt8
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(seg, get)(), getattr(ct, get)(), atol=1e-4)
    labels = drrkit.Volume.from_sitk(seg)
    assert set(np.unique(labels.data)) - {0} == {v.verse_id for v in result.vertebrae}
    step = float(np.linalg.norm(labels.spacing))
    for v in result.vertebrae:  # ball centres: within a voxel of the centroids
        kji = np.argwhere(labels.data == v.verse_id)
        com = labels.voxel_to_world(kji[:, ::-1].mean(axis=0))
        assert np.linalg.norm(com - v.world) < step, v.name
    doc = json.loads(files["markups"].read_text())
    check_slicer_markups(doc)
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == [v.name for v in result.vertebrae]
    np.testing.assert_allclose([p["position"] for p in points],
                               [v.world for v in result.vertebrae], atol=1e-3)


def test_write_outputs_all_or_nothing(labelled, tmp_path, monkeypatch):
    from vertebra import report

    _, volume, result = labelled

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "markups", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        report.write_outputs(result, volume, out, "case", pictures=False)
    assert not out.exists()  # nothing half-written, not even the folder
    out.mkdir()
    (out / "case_ctd.json").write_text("old")
    with pytest.raises(OSError):
        report.write_outputs(result, volume, out, "case", pictures=False)
    assert [p.name for p in out.iterdir()] == ["case_ctd.json"]
    assert (out / "case_ctd.json").read_text() == "old"
