"""Synthetic spine CTs: ground truth consistent with the mask, anatomy, options, I/O."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from drrkit.errors import DrrkitError
from vertebra import labels as vlabels
from vertebra.data import _sdf, anatomy
from vertebra.data.phantom import (
    MIN_VISIBLE,
    make_spine_phantom,
    save_phantom,
    write_phantoms,
)
from vertebra.errors import VertebraError

NON_TARGETS = {vlabels.SACRUM, vlabels.COCCYX}


@pytest.fixture(scope="module")
def lumbar():
    """Explicit thoracolumbar run, random storage orientation."""
    return make_spine_phantom(3, levels=("T10", "L3"), size="small")


@pytest.fixture(scope="module")
def whole():
    """The whole spine C3..L5 on a coarse grid (explicit levels may exceed the z cap)."""
    return make_spine_phantom(1, levels=("C3", "L5"), size="small", spacing=(2.5, 2.5, 3.0),
                              transitional="none", metal=False)


def mask_centres(mask) -> dict[int, np.ndarray]:
    """Centre of mass (world mm) of every non-zero label, computed independently."""
    data = np.asarray(mask.data)
    out = {}
    for lab in np.unique(data):
        if lab:
            kji = np.argwhere(data == lab).mean(axis=0)
            out[int(lab)] = mask.voxel_to_world(kji[::-1])
    return out


# ---------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("seed,options", [
    (0, {}), (5, {}), (11, {"metal": True}), (4, {"transitional": "t13"}),
    (6, {"transitional": "l6", "levels": ("L3", "L6")}), (9, {"levels": ("C1", "C4")}),
])
def test_centroids_are_the_mask_centres_of_mass(seed, options):
    ph = make_spine_phantom(seed, size="small", **options)
    centres = mask_centres(ph.labels)
    present = set(centres)
    assert present <= set(vlabels.VERSE_IDS) | NON_TARGETS
    vertebrae = present - NON_TARGETS
    assert set(ph.visible) == vertebrae
    assert set(ph.centroids) == {v for v in vertebrae if ph.visible[v] >= MIN_VISIBLE}
    assert len(ph.centroids) >= 2
    for vid, c in ph.centroids.items():
        np.testing.assert_allclose(c, centres[vid], atol=1e-6, err_msg=vlabels.name_of(vid))
    assert all(0.0 < f <= 1.0 for f in ph.visible.values())
    assert ph.levels == tuple(vlabels.name_of(v) for v in ph.centroids)


def test_reproducible_from_the_seed():
    a = make_spine_phantom(12, size="small")
    b = make_spine_phantom(12, size="small")
    c = make_spine_phantom(13, size="small")
    assert np.array_equal(a.ct.data, b.ct.data)
    assert np.array_equal(a.labels.data, b.labels.data)
    for attr in ("spacing", "origin", "direction"):
        assert np.array_equal(getattr(a.ct, attr), getattr(b.ct, attr))
    assert a.centroids.keys() == b.centroids.keys()
    for k in a.centroids:
        assert np.array_equal(a.centroids[k], b.centroids[k])
    assert a.ct.data.shape != c.ct.data.shape or not np.array_equal(a.ct.data, c.ct.data)


def test_levels_run_superior_to_inferior_along_the_curve(lumbar):
    ids = list(lumbar.centroids)
    assert ids == vlabels.sort_anatomical(ids)
    names = lumbar.anatomy.names
    ranks = [names.index(vlabels.name_of(v)) for v in ids]
    assert ranks == list(range(ranks[0], ranks[0] + len(ranks)))  # contiguous
    for name in ("T10", "T11", "T12", "L1", "L2", "L3"):
        assert vlabels.by_name(name).verse_id in lumbar.centroids
    z = np.array([lumbar.centroids[v][2] for v in ids])
    assert np.all(np.diff(z) < -5.0)  # superior first, at least 5 mm apart
    # each centroid lies nearest to its own vertebral body
    bodies = lumbar.anatomy.centres
    for v in ids:
        d = np.linalg.norm(bodies - lumbar.centroids[v], axis=1)
        assert names[int(np.argmin(d))] == vlabels.name_of(v)
        assert d.min() < 25.0


def test_sizes_grow_craniocaudally(whole):
    voxel = float(np.prod(whole.ct.spacing))
    data = whole.labels.data
    volume = {v: np.count_nonzero(data == v) * voxel for v in whole.centroids}
    by_region = {r: [vol for v, vol in volume.items() if vlabels.region_of(v) == r]
                 for r in vlabels.REGIONS}
    means = [np.mean(by_region[r]) for r in ("cervical", "thoracic", "lumbar")]
    assert means[0] < means[1] < means[2]
    dims = {d.name: d for d in whole.anatomy.dims}
    for a, b in (("C3", "T1"), ("T1", "T8"), ("T8", "L1"), ("L1", "L4")):
        assert dims[a].width < dims[b].width and dims[a].height < dims[b].height


@pytest.mark.parametrize("transitional,count", [(None, 12), ("t13", 13), ("l6", 12)])
def test_ribs_only_on_thoracic_levels(transitional, count):
    ph = make_spine_phantom(2, size="small", transitional=transitional or "none")
    thoracic = tuple(d.name for d in ph.anatomy.dims if d.region == "thoracic")
    assert ph.rib_levels == thoracic
    assert len(ph.rib_levels) == count
    ribs = {d.name: d.ribs for d in ph.anatomy.dims}
    assert ribs[thoracic[-1]] in ("floating", "short") and ribs[thoracic[-2]] == "floating"
    assert all(ribs[n] == "true" for n in thoracic[:7])
    assert all(ribs[n] == "none" for n in ribs if n not in thoracic)


def test_thirteenth_thoracic_vertebra():
    ph = make_spine_phantom(4, levels=("T12", "L1"), size="small", transitional="t13")
    names = ph.anatomy.names
    assert names.index("T12") + 1 == names.index("T13") == names.index("L1") - 1
    assert {19, 28, 20} <= set(ph.centroids)  # T12, T13, L1
    assert list(ph.centroids) == vlabels.sort_anatomical(ph.centroids)
    assert ph.transitional == "t13"
    # T13 in the levels implies the variant
    assert make_spine_phantom(4, levels=("T13", "L2"), size="small").transitional == "t13"
    with pytest.raises(DrrkitError, match="T13"):
        make_spine_phantom(4, levels=("T13", "L2"), size="small", transitional="none")


def test_sixth_lumbar_vertebra():
    ph = make_spine_phantom(8, levels=("L5", "L6"), size="small", transitional="l6")
    assert ph.anatomy.names[-2:] == ("L5", "L6")
    assert {24, 25} <= set(ph.centroids)
    assert ph.rib_levels[-1] == "T12"
    dims = {d.name: d for d in ph.anatomy.dims}
    assert dims["L6"].width > dims["L2"].width


def test_storage_orientation_changes_layout_but_not_the_world():
    seen_directions = set()
    for seed in (0, 1, 2, 3):
        canon = make_spine_phantom(seed, size="small", orientation="canonical")
        stored = make_spine_phantom(seed, size="small")
        np.testing.assert_array_equal(canon.ct.direction, np.eye(3))
        seen_directions.add(tuple(np.round(stored.ct.direction).astype(int).ravel()))
        assert canon.centroids.keys() == stored.centroids.keys()
        for k in canon.centroids:
            np.testing.assert_allclose(stored.centroids[k], canon.centroids[k], atol=1e-9)
        # the same world point holds the same HU and label in both
        rng = np.random.default_rng(seed)
        zyx = rng.integers(0, canon.ct.data.shape, size=(300, 3))
        world = canon.ct.voxel_to_world(zyx[:, ::-1].astype(float))
        ijk = np.round(stored.ct.world_to_voxel(world)).astype(int)
        assert np.array_equal(stored.ct.data[ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                              canon.ct.data[zyx[:, 0], zyx[:, 1], zyx[:, 2]])
        assert np.array_equal(stored.labels.data[ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                              canon.labels.data[zyx[:, 0], zyx[:, 1], zyx[:, 2]])
        assert np.allclose(stored.ct.spacing[np.argmax(np.abs(stored.ct.direction), axis=0)],
                           canon.ct.spacing)
    assert len(seen_directions) > 1


# ---------------------------------------------------------------------- intensities
def test_hu_ranges():
    ph = make_spine_phantom(3, levels=("T10", "L3"), size=(64, 160, 160), fov=450,
                            spacing=(3.0, 3.0, 3.0), metal=False)
    hu, lab = ph.ct.data, ph.labels.data
    assert hu.dtype == np.float32 and lab.dtype == np.uint8
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert np.mean(hu < -900) > 0.05  # air around the patient
    body = hu[(lab == 0) & (hu > -300) & (hu < 300)]
    assert abs(float(np.median(body))) < 80  # soft tissue and fat
    bone = hu[lab == vlabels.by_name("L1").verse_id]
    assert bone.size > 100
    assert 80 < float(np.median(bone)) < 700  # trabecular core
    assert float(np.percentile(bone, 95)) > 350  # cortical shell (partial volume)
    assert hu.max() < 2500  # no metal, no teeth in a thoracolumbar field of view


def test_metal_is_bright():
    ph = make_spine_phantom(11, levels=("T12", "L3"), size="small", metal=True,
                            spacing=(1.0, 1.0, 2.0))
    assert ph.metal
    assert np.count_nonzero(ph.ct.data > 2500) > 50
    # screws sit in labelled vertebrae: the mask keeps its labels under the metal
    assert np.count_nonzero((ph.ct.data > 2500) & (ph.labels.data > 0)) > 10
    plain = make_spine_phantom(11, levels=("T12", "L3"), size="small", metal=False,
                               spacing=(1.0, 1.0, 2.0))
    assert not plain.metal and plain.ct.data.max() < 2500
    assert np.array_equal(plain.labels.data, ph.labels.data)
    with pytest.warns(UserWarning, match="no screws"):
        neck = make_spine_phantom(11, levels=("C2", "C5"), size="small", metal=True)
    assert not neck.metal


def test_noise_is_independent_of_the_anatomy():
    clean = make_spine_phantom(21, size="small", noise=False, orientation="canonical")
    noisy = make_spine_phantom(21, size="small", orientation="canonical")
    assert np.array_equal(clean.labels.data, noisy.labels.data)
    diff = (noisy.ct.data - clean.ct.data)[(clean.ct.data > -900) & (clean.ct.data < 900)]
    assert 7.0 < float(diff.std()) < 31.0 and abs(float(diff.mean())) < 1.0


def test_spine_is_visible_in_a_drr(lumbar):
    import drrkit

    vol = lumbar.ct.with_data(drrkit.hu_to_mu(lumbar.ct.data))
    geo = drrkit.circular_orbit(vol, views=2, size=64, pixel_spacing=6.0, arc=180)
    img = drrkit.render(vol, geo, backend="cpu")
    pts = drrkit.project_points(np.array(list(lumbar.centroids.values())), geo).pixels
    for k in range(2):
        cols, rows = np.round(pts[k]).astype(int).T
        assert np.all((cols >= 0) & (cols < 64) & (rows >= 0) & (rows < 64))
        at_spine = img[k, rows, cols].mean()
        row_median = np.median(img[k, rows, :], axis=1).mean()
        assert at_spine > row_median  # the spine attenuates more than its row's median


def test_coarser_voxels_keep_the_spine_the_scan_and_its_drr():
    """voxel_scale: the same draw in 8x fewer voxels; centroids, box and a coarse DRR agree."""
    import drrkit

    options = {"size": (96, 128, 128), "orientation": "canonical", "metal": False}
    fine = make_spine_phantom(7, **options)
    coarse = make_spine_phantom(7, voxel_scale=2.0, **options)
    assert coarse.levels == fine.levels and coarse.transitional == fine.transitional
    assert np.allclose(coarse.ct.spacing, 2 * fine.ct.spacing)
    assert np.all(np.asarray(coarse.ct.data.shape) == -(-np.asarray(fine.ct.data.shape) // 2))

    def box(volume):  # world extent of the voxel edges, (2, 3) mm
        lo, hi = (volume.voxel_to_world(np.asarray(c, float)) for c in
                  ((-0.5,) * 3, tuple(n - 0.5 for n in volume.data.shape[::-1])))
        return np.array([lo, hi])

    assert np.allclose(box(coarse.ct), box(fine.ct), atol=float(coarse.ct.spacing.max()))
    for vid, centre in fine.centroids.items():  # partial volumes keep the centres of mass
        assert np.linalg.norm(coarse.centroids[vid] - centre) < 0.5
    views = []
    for ph in (fine, coarse):
        vol = ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data))
        geo = drrkit.circular_orbit(vol, views=2, size=48, pixel_spacing=4.0, arc=180)
        views.append(drrkit.render(vol, geo, backend="cpu"))
    inside = views[0] > 0.05 * views[0].max()
    rel = np.abs(views[1] - views[0])[inside] / views[0][inside]
    assert float(np.median(rel)) < 0.02 and float(np.mean(rel)) < 0.04


# ---------------------------------------------------------------------- primitives
def test_capsule_and_box_distances_are_exact():
    shapes = _sdf.Shapes()
    shapes.capsule(0, (0, 0, 0), (10, 0, 0), 2.0)
    shapes.box(0, (0, 0, 0), np.eye(3), (3, 4, 5), rounding=1.0)
    rows, _, _ = shapes.arrays()
    for p, expect in (((5, 3, 0), 1.0), ((-4, 0, 0), 2.0), ((12, 0, 0), 0.0), ((5, 0, 0), -2.0)):
        assert math.isclose(_sdf._prim_sdf(rows[0], *map(float, p)), expect, abs_tol=1e-9)
    for p, expect in (((5, 0, 0), 2.0), ((0, 0, 0), -3.0), ((0, 6, 0), 2.0)):
        assert math.isclose(_sdf._prim_sdf(rows[1], *map(float, p)), expect, abs_tol=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (2.0, 1.5, 3.0)])
def test_partial_volume_keeps_the_integral(spacing):
    """A 1000 HU ball (with a 2 mm 2000 HU shell) on air: sum(HU + 1000) * voxel ~ exact."""
    spacing = np.asarray(spacing)
    n = np.ceil(60.0 / spacing).astype(int)
    origin = -0.5 * (n - 1) * spacing + 0.31  # off-centre on purpose
    shapes = _sdf.Shapes()
    shapes.ellipsoid(0, (0, 0, 0), np.eye(3), (20.0, 20.0, 20.0))
    rows, lo, hi = shapes.arrays()
    boxes = _sdf.index_boxes(lo, hi, origin, spacing, tuple(n), spacing.max() + 1)
    zyx = (n[2], n[1], n[0])
    sdf, obj = np.empty(zyx, np.float32), np.empty(zyx, np.int16)
    _sdf.rasterise(sdf, obj, rows, boxes, origin, spacing)
    hu = np.full(zyx, -1000.0, np.float32)
    lab = np.zeros(zyx, np.uint8)
    _sdf.composite(hu, lab, sdf, obj, np.array([1000.0]), np.array([2000.0]), np.array([2.0]),
                   np.array([7]), spacing)
    voxel = float(np.prod(spacing))
    got = float((hu.astype(np.float64) + 1000.0).sum() * voxel)
    r = 20.0
    exact = 2000.0 * 4 / 3 * math.pi * r ** 3 + 1000.0 * 4 / 3 * math.pi * (
        r ** 3 - (r - 2) ** 3)
    assert abs(got - exact) / exact < 0.01
    ball = np.count_nonzero(lab == 7) * voxel
    assert abs(ball - 4 / 3 * math.pi * r ** 3) / (4 / 3 * math.pi * r ** 3) < 0.03


# ---------------------------------------------------------------------- files and CLI
def test_save_round_trip(tmp_path, lumbar):
    import SimpleITK as sitk

    from drrkit.volume import Volume
    from vertebra.data import VerseDataset
    from vertebra.data.verse import read_centroids

    paths = save_phantom(lumbar, tmp_path, "ph003")
    assert paths["centroids"].name == "sub-ph003_seg-subreg_ctd.json"
    ct = Volume.from_sitk(sitk.ReadImage(str(paths["ct"])))
    assert ct.data.dtype == np.int16
    np.testing.assert_array_equal(ct.data, np.round(lumbar.ct.data))
    np.testing.assert_allclose(ct.direction, lumbar.ct.direction, atol=1e-6)
    mask = Volume.from_sitk(sitk.ReadImage(str(paths["mask"])))
    np.testing.assert_array_equal(mask.data, lumbar.labels.data)
    back = read_centroids(paths["centroids"], paths["mask"])
    assert list(back) == list(lumbar.centroids)
    for k, c in lumbar.centroids.items():
        np.testing.assert_allclose(back[k], c, atol=0.01)
    header = json.loads(paths["centroids"].read_text())[0]
    assert header == {"direction": ["P", "I", "R"]}
    case = VerseDataset(tmp_path)[0]
    assert case.ct == paths["ct"] and case.mask == paths["mask"]
    assert case.centroid_file == paths["centroids"]


def test_write_phantoms_is_atomic(tmp_path):
    out = tmp_path / "set"
    assert write_phantoms(out, [1, 2], size="small") == ["phantom0001", "phantom0002"]
    assert len(list((out / "rawdata").iterdir())) == 2
    with pytest.raises(DrrkitError, match="already exists"):
        write_phantoms(out, [3], size="small")
    broken = tmp_path / "broken"
    with pytest.raises(DrrkitError, match="X9"):
        write_phantoms(broken, [1, 2], size="small", levels="T2:X9")
    assert not broken.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folder left


def test_cli_phantom(tmp_path):
    from typer.testing import CliRunner

    from vertebra.cli import app

    runner = CliRunner()
    out = tmp_path / "ph"
    result = runner.invoke(app, ["phantom", str(out), "--seed", "5", "--count", "2",
                                 "--levels", "T11:L2", "--size", "small", "--no-metal"])
    assert result.exit_code == 0, result.output
    assert "phantom0005" in result.output and "phantom0006" in result.output
    assert (out / "derivatives" / "sub-phantom0006" / "sub-phantom0006_seg-vert_msk.nii.gz"
            ).is_file()
    for args in (["--transitional", "t14"], ["--levels", "L3:T10"], ["--count", "0"],
                 ["--spine-fov", "1"], ["--clinical", "--spine-fov", "1.5"],
                 ["--sagittal", "1"], ["--thick-slices", "0.5"],
                 ["--clinical", "--sagittal", "-0.5"], ["--clinical", "--thick-slices", "2"]):
        bad = runner.invoke(app, ["phantom", str(tmp_path / "x"), "--size", "small", *args])
        assert bad.exit_code == 2
        assert bad.output.strip().startswith("error:") and len(bad.output.strip().splitlines()) == 1
    again = runner.invoke(app, ["phantom", str(out), "--size", "small"])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("kwargs,match", [
    ({"levels": ("L3", "T10")}, "cranio-caudally"),
    ({"levels": ("T10",)}, "two names"),
    ({"size": "huge"}, "unknown size"),
    ({"size": (8, 64, 64)}, "at least 16"),
    ({"spacing": (1.0, -1.0, 1.0)}, "positive"),
    ({"transitional": "t14"}, "transitional"),
    ({"orientation": "sideways"}, "orientation"),
    ({"voxel_scale": 0.5}, "voxel_scale"),
    ({"voxel_scale": float("nan")}, "voxel_scale"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(DrrkitError, match=match):
        make_spine_phantom(0, **{"size": "small", **kwargs})
    with pytest.raises(DrrkitError, match="seed"):
        make_spine_phantom(-1)


def test_level_table():
    assert anatomy.level_names()[:2] == ("C1", "C2") and len(anatomy.level_names()) == 24
    assert anatomy.level_names("t13").index("T13") == 19
    assert anatomy.level_names("l6")[-1] == "L6"
    with pytest.raises(DrrkitError):
        anatomy.level_names("s6")


def test_speed_of_a_256_cubed_class_phantom():
    """Reported, not asserted tightly (the machine may be busy)."""
    kwargs = {"levels": ("T4", "L2"), "size": (256, 256, 256), "spacing": (0.9, 0.9, 1.45)}
    make_spine_phantom(0, **kwargs)  # warm (Numba cache load)
    times = []
    for seed in (1, 2):
        start = time.perf_counter()
        ph = make_spine_phantom(seed, **kwargs)
        times.append(time.perf_counter() - start)
    print(f"\n256^3-class phantom {ph.ct.data.shape}: median {np.median(times):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in times)})")
    assert ph.ct.data.size > 12e6
    assert np.median(times) < 30.0


def test_disc_scale_thins_every_disc_and_keeps_the_rest():
    names = anatomy.level_names()
    plain = anatomy.build_spine(names, np.random.default_rng(5))
    thin = anatomy.build_spine(names, np.random.default_rng(5), disc_scale=0.5)
    for a, b in zip(plain.dims, thin.dims):
        assert b.disc == pytest.approx(0.5 * a.disc)
        assert (a.height, a.width, a.depth) == (b.height, b.width, b.depth)
    # closed form, up to the turns at each disc: a vertebra sits its own disc's height above
    # the one below, so each gap shrinks by half the upper vertebra's disc (the atlas sits
    # on C2 without one)
    gap = [np.linalg.norm(np.diff(s.centres, axis=0), axis=1) for s in (plain, thin)]
    discs = np.array([d.disc for d in plain.dims])
    np.testing.assert_allclose(gap[0][0], gap[1][0])
    np.testing.assert_allclose(gap[0][1:] - gap[1][1:], 0.5 * discs[1:-1], atol=0.15)
    np.testing.assert_allclose(plain.frames, thin.frames)  # the curvature is unchanged
    for bad in (0.0, -0.5):
        with pytest.raises(VertebraError, match="disc_scale must be positive"):
            anatomy.build_spine(names, np.random.default_rng(5), disc_scale=bad)


def test_max_t1_lean_steepens_only_the_upper_spine():
    """The same seed with a wider T1 range: the same vertebra sizes and sacrum, T1's
    forward lean (its body axis) never smaller and on average larger; a value outside
    [5, 80] degrees is refused."""
    names = anatomy.level_names()

    def t1_lean(spine):
        axis = spine.frames[spine.index("T1")][:, 2]
        return math.degrees(math.atan2(-axis[1], axis[2]))

    gained = []
    for seed in range(12):
        usual = anatomy.build_spine(names, np.random.default_rng(seed))
        steep = anatomy.build_spine(names, np.random.default_rng(seed), max_t1_lean=50)
        assert usual.dims == steep.dims
        np.testing.assert_array_equal(usual.sacrum_centres, steep.sacrum_centres)
        gained.append(t1_lean(steep) - t1_lean(usual))
    assert min(gained) > -0.5 and np.mean(gained) > 5.0
    with pytest.raises(anatomy.VertebraError, match="max_t1_lean"):
        anatomy.build_spine(names, np.random.default_rng(0), max_t1_lean=90)
