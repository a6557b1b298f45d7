"""Clinical phantoms (organs, contrast, arms, the reconstruction circle), the strong
augmentation and the named recipes that use them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drrkit.errors import DrrkitError
from vertebra import labels as vlabels
from vertebra.data._clinical import (
    OUTSIDE_FOV_HU,
    bone_texture,
    fov_cut,
    scanner_blur,
    sclerotic_endplates,
)
from vertebra.data.phantom import make_spine_phantom
from vertebra.training.config import AugmentConfig
from vertebra.training.dataset import augment_image

SMALL = {"levels": ("T6", "L2"), "size": "small", "orientation": "canonical", "fov": 170.0,
         "metal": False, "transitional": "none"}


@pytest.fixture(scope="module")
def pair():
    """The same seed and grid, plain and clinical."""
    return make_spine_phantom(7, **SMALL), make_spine_phantom(7, clinical=True, **SMALL)


def test_clinical_keeps_the_levels_and_sizes_and_may_only_thin_the_discs(pair):
    plain, clinical = pair
    assert plain.centroids.keys() == clinical.centroids.keys()
    factors = []
    for a, b in zip(plain.anatomy.dims, clinical.anatomy.dims):
        assert (a.name, a.height, a.width, a.depth) == (b.name, b.height, b.width, b.depth)
        factors.append(b.disc / a.disc)
    # one factor per scan, within its range; this seed draws a clearly thinner one
    np.testing.assert_allclose(factors, factors[0])
    assert 0.45 <= factors[0] <= 0.9
    # thinner discs bring neighbouring centroids closer, never further apart
    gaps = [np.diff(np.array(list(ph.centroids.values())), axis=0) for ph in pair]
    ratio = np.linalg.norm(gaps[1], axis=1) / np.linalg.norm(gaps[0], axis=1)
    assert np.all((ratio > 0.7) & (ratio < 1.05))
    assert not np.array_equal(plain.ct.data, clinical.ct.data)


@pytest.mark.parametrize("levels", [("T6", "L2"), ("C2", "C6")])
def test_sclerotic_endplates_brighten_only_the_bodies_top_and_bottom(levels):
    ph = make_spine_phantom(7, **{**SMALL, "levels": levels})  # canonical: grid = array
    hu, lab = ph.ct.data.copy(), ph.labels.data
    sclerotic_endplates(hu, lab, ph.anatomy, ph.ct.origin, ph.ct.spacing,
                        np.random.default_rng(0))
    added = hu - ph.ct.data
    assert np.all(added >= 0) and np.all(added[lab == 0] == 0)
    assert added.max() >= 80 * 0.6
    k, j, i = np.nonzero(added > 0)
    world = ph.ct.origin + np.stack([i, j, k], axis=1) * ph.ct.spacing
    owner = lab[k, j, i]
    for d, c, f in zip(ph.anatomy.dims, ph.anatomy.centres, ph.anatomy.frames):
        local = (world[owner == vlabels.by_name(d.name).verse_id] - c) @ f
        if d.name == "C1":
            assert not len(local)  # the atlas has no body
            continue
        # within 3.5 mm (the deepest band) of a plane of the body, in front of its back
        assert np.all(np.abs(local[:, 2]) > d.height / 2 - 3.5 - 1e-6)
        assert np.all(local[:, 1] < 0.45 * d.depth + 1e-6)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_scanner_blur_keeps_a_constant_and_never_sharpens(seed):
    flat = np.full((9, 10, 11), 37.0, dtype=np.float32)
    scanner_blur(flat, np.random.default_rng(seed))
    np.testing.assert_allclose(flat, 37.0, rtol=1e-5)
    noisy = np.random.default_rng(seed).normal(0.0, 100.0, (12, 12, 12)).astype(np.float32)
    before = noisy.std()
    scanner_blur(noisy, np.random.default_rng(seed))
    assert noisy.std() <= before + 1e-3


def _spread(image, axis):
    """Standard deviation (voxels) of an image's mass along one axis."""
    mass = image.sum(axis=tuple(a for a in range(3) if a != axis))
    x = np.arange(len(mass))
    mean = (x * mass).sum() / mass.sum()
    return float(np.sqrt(((x - mean) ** 2 * mass).sum() / mass.sum()))


@pytest.mark.parametrize("seed", [1, 4])
def test_scanner_blur_spreads_each_axis_by_its_own_draw(seed):
    # seed 1 draws 0.23 voxel in plane and 0.58 along the slices, seed 4 0.42 and 0.36
    rng = np.random.default_rng(seed)
    in_plane, along = rng.uniform(0.0, 0.45), rng.uniform(0.1, 0.6)
    point = np.zeros((15, 15, 15), dtype=np.float32)
    point[7, 7, 7] = 1.0
    scanner_blur(point, np.random.default_rng(seed))
    assert point.sum() == pytest.approx(1.0, rel=1e-5)
    for axis, sigma in ((0, along), (1, in_plane), (2, in_plane)):
        # closed form: the kernel is exp(-i^2 / 2 sigma^2) sampled at |i| <= 3 sigma + 0.5
        taps = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
        weights = np.exp(-0.5 * (taps / sigma) ** 2)
        expected = np.sqrt((taps**2 * weights).sum() / weights.sum())
        assert _spread(point, axis) == pytest.approx(expected, abs=1e-4)
    assert _spread(point, 0) != pytest.approx(_spread(point, 1), abs=0.02)



def test_clinical_adds_soft_tissue_structures_and_is_reproducible(pair):
    plain, clinical = pair
    again = make_spine_phantom(7, clinical=True, **SMALL)
    np.testing.assert_array_equal(clinical.ct.data, again.ct.data)

    def varied(ph):  # share of soft voxels more than 60 HU from the trunk's median
        soft = ph.ct.data[(ph.labels.data == 0) & (ph.ct.data > -150) & (ph.ct.data < 600)]
        return np.mean(np.abs(soft - np.median(soft)) > 60)

    # organs, vessels and fat at their own CT numbers instead of a uniform trunk
    assert varied(clinical) > varied(plain) + 0.05


def test_clinical_bone_density_varies_between_scans():
    cores = []
    for seed in range(6):
        ph = make_spine_phantom(seed, clinical=True, **SMALL)
        lab = ph.labels.data
        inner = (lab > 0) & (lab < 26)
        cores.append(np.median(ph.ct.data[inner]))
    assert np.ptp(cores) > 60  # HU: dense to osteoporotic


def test_wide_field_of_view_holds_the_trunk_within_the_size_cap():
    ph = make_spine_phantom(11, clinical=True, size="small")
    assert len(ph.centroids) >= 2
    width = np.sort(np.asarray(ph.ct.data.shape) * ph.ct.spacing)[-1]
    assert width >= 330 - 3 * ph.ct.spacing.max()


def test_a_share_of_clinical_scans_has_a_spine_protocols_small_field_of_view():
    small, small_seeds = 0, []
    for seed in range(12):
        ph = make_spine_phantom(seed, clinical=True, size="small")
        corners = ph.ct.corners
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        width = float(min(hi[0] - lo[0], hi[1] - lo[1]))  # world x, y extents, mm
        if width >= 330 - 3 * ph.ct.spacing.max():
            continue  # the whole trunk
        small += 1
        # centred on the spine: every covered vertebral body's centre lies inside, 20 mm
        # or more from the sides, and each keeps its ground truth
        covered = [vlabels.by_name(n).verse_id for n in ph.levels]
        for d, c in zip(ph.anatomy.dims, ph.anatomy.centres):
            if vlabels.by_name(d.name).verse_id in covered:
                assert np.all(c[:2] - lo[:2] >= 20) and np.all(hi[:2] - c[:2] >= 20)
        assert len(ph.centroids) >= 2
        # the same seed at share 0 is the whole-trunk scan, the others stay as they are
        whole = make_spine_phantom(seed, clinical=True, size="small", spine_fov_share=0.0)
        extent = np.ptp(whole.ct.corners, axis=0)
        assert min(extent[0], extent[1]) >= 330 - 3 * whole.ct.spacing.max()
        small_seeds.append(seed)
    assert 2 <= small <= 7  # about SPINE_FOV_SHARE of 12
    for seed in set(range(4)) - set(small_seeds):  # not drawn as spine protocols
        np.testing.assert_array_equal(
            make_spine_phantom(seed, clinical=True, size="small", spine_fov_share=0.0).ct.data,
            make_spine_phantom(seed, clinical=True, size="small").ct.data)
    with pytest.raises(DrrkitError, match="spine_fov_share"):
        make_spine_phantom(0, clinical=True, size="small", spine_fov_share=1.5)


def test_ribless_scans_lose_only_the_ribs():
    """``ribless_share=1``: the same scan with its ribs as faint as muscle; share 0 and
    plain phantoms are bit-identical to the default (a stream of its own)."""
    opts = {"clinical": True, "size": "small", "levels": "T4:T9", "spine_fov_share": 0.0}
    base = make_spine_phantom(3, **opts)
    np.testing.assert_array_equal(make_spine_phantom(3, ribless_share=0.0, **opts).ct.data,
                                  base.ct.data)
    ribless = make_spine_phantom(3, ribless_share=1.0, **opts)
    np.testing.assert_array_equal(ribless.labels.data, base.labels.data)
    assert ribless.centroids.keys() == base.centroids.keys()
    for k in base.centroids:
        np.testing.assert_allclose(ribless.centroids[k], base.centroids[k])
    changed, spine = ribless.ct.data != base.ct.data, base.labels.data > 0
    diff = ribless.ct.data - base.ct.data
    assert diff[changed & ~spine].mean() < -50  # the ribs' bone is gone
    # the vertebrae only where the scanner's blur reaches from the rib heads
    assert (changed & spine).sum() < 0.05 * changed.sum()
    assert np.abs(diff[changed & spine]).mean() < 50
    plain = {"size": "small", "levels": "T4:T9"}
    np.testing.assert_array_equal(make_spine_phantom(3, ribless_share=1.0, **plain).ct.data,
                                  make_spine_phantom(3, **plain).ct.data)
    with pytest.raises(DrrkitError, match="ribless_share"):
        make_spine_phantom(0, ribless_share=-0.5, **opts)
    from vertebra.demo import DemoConfig

    assert DemoConfig(identifier_ribless_share=0.3).phantom_options("identification")[
        "ribless_share"] == 0.3
    assert "ribless_share" not in DemoConfig(
        identifier_ribless_share=0.3).phantom_options("localization")
    with pytest.raises(DrrkitError, match="identifier_ribless_share"):
        DemoConfig(identifier_ribless_share=2.0)


def test_thick_slice_share_one_thickens_every_clinical_scan():
    """``thick_slice_share=1``: a seed in thin slices becomes its thick-slice scan (labels
    and truth as they were, the CT smoother along the slices); the default share is
    bit-identical to passing it, share 0 keeps it, and plain phantoms do not change."""
    from vertebra.data._clinical import THICK_SLICE_SHARE

    opts = {"clinical": True, "size": "small", "levels": "T8:L3", "spine_fov_share": 0.0,
            "spacing": (2.0, 2.0, 1.0), "noise": False}
    for seed in range(8):  # a seed the default share leaves in thin slices
        base = make_spine_phantom(seed, **opts)
        if np.array_equal(make_spine_phantom(seed, thick_slice_share=0.0, **opts).ct.data,
                          base.ct.data):
            break
    else:
        raise AssertionError("no thin-slice seed among 8")
    np.testing.assert_array_equal(
        make_spine_phantom(seed, thick_slice_share=THICK_SLICE_SHARE, **opts).ct.data,
        base.ct.data)
    thick = make_spine_phantom(seed, thick_slice_share=1.0, **opts)
    np.testing.assert_array_equal(thick.labels.data, base.labels.data)
    for k in base.centroids:
        np.testing.assert_allclose(thick.centroids[k], base.centroids[k])
    # the array axis along world z (the direction's columns follow ITK's index order)
    axis = 2 - int(np.argmax(np.abs(thick.ct.direction[2])))
    step = [np.abs(np.diff(v.ct.data.astype(np.float64), axis=axis)).mean()
            for v in (thick, base)]
    assert step[0] < 0.95 * step[1]
    plain = {"size": "small", "levels": "T8:L3"}
    np.testing.assert_array_equal(make_spine_phantom(seed, thick_slice_share=1.0, **plain).ct.data,
                                  make_spine_phantom(seed, **plain).ct.data)
    with pytest.raises(DrrkitError, match="thick_slice_share"):
        make_spine_phantom(0, thick_slice_share=1.5, **opts)


def test_calcified_discs_brighten_only_discs():
    """``calcified_disc_share=1``: some discs as dense as bone, the vertebrae and their
    ground truth as they were; share 0 is bit-identical to the default."""
    from vertebra.data.phantom import _calcified_discs

    opts = {"clinical": True, "size": "small", "levels": "T8:L3", "spine_fov_share": 0.0}
    base = make_spine_phantom(3, **opts)
    np.testing.assert_array_equal(
        make_spine_phantom(3, calcified_disc_share=0.0, **opts).ct.data, base.ct.data)
    calc = make_spine_phantom(3, calcified_disc_share=1.0, **opts)
    np.testing.assert_array_equal(calc.labels.data, base.labels.data)
    for k in base.centroids:
        np.testing.assert_allclose(calc.centroids[k], base.centroids[k])
    diff = calc.ct.data - base.ct.data
    assert diff.max() > 100 and (diff > 50).sum() > 20  # bright discs
    assert (diff[base.labels.data > 0] > 50).mean() < 0.05  # the bodies barely change
    with pytest.raises(DrrkitError, match="calcified_disc_share"):
        make_spine_phantom(0, calcified_disc_share=1.5, **opts)
    # the draw: only discs between vertebrae (none above C2), within the HU range
    spine = base.anatomy
    for seed in range(20):
        discs = _calcified_discs(spine, np.random.default_rng(seed))
        assert all(spine.dims[i - 1].name != "C1" for i in discs)
        assert all(0 < i < len(spine.dims) for i in discs)
        assert all(150 * 0.7 <= hu <= 600 * 1.3 for hu in discs.values())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), nx=st.integers(8, 40), ny=st.integers(8, 40))
def test_fov_cut_blanks_exactly_outside_its_circle(seed, nx, ny):
    hu = np.zeros((2, ny, nx), dtype=np.float32)
    spacing = np.array([1.5, 1.0, 2.0])
    fov_cut(hu, np.zeros(3), spacing, np.random.default_rng(seed))
    outside = hu[0] == OUTSIDE_FOV_HU
    assert np.array_equal(outside, hu[1] == OUTSIDE_FOV_HU)  # the same circle on every slice
    if not outside.any():
        return
    x = (np.arange(nx) - 0.5 * (nx - 1)) * spacing[0]
    y = (np.arange(ny) - 0.5 * (ny - 1)) * spacing[1]
    r = np.hypot(x[None, :], y[:, None])
    # a disc about the centre: every blanked voxel lies farther out than every kept one
    assert r[outside].min() > r[~outside].max() - 1e-9 if (~outside).any() else True
    assert r[~outside].max() <= 0.5 * min(nx * spacing[0], ny * spacing[1]) + 1e-9


@given(seed=st.integers(0, 2**16), cell=st.floats(0.4, 3.0))
@settings(max_examples=15, deadline=None)
def test_bone_texture_touches_only_its_voxels_at_its_drawn_strength(seed, cell):
    rng = np.random.default_rng(seed)
    hu = np.full((30, 40, 50), 100.0, np.float32)
    inside = np.zeros(hu.shape, bool)
    inside[5:25, 8:30, 10:45] = True
    twin = np.random.default_rng(seed)
    twin.uniform(2.0, 5.0)  # the cell size, drawn first
    amp = twin.uniform(20.0, 90.0)
    bone_texture(hu, inside, (cell, cell, 1.5 * cell), rng)
    assert np.all(hu[~inside] == 100.0)
    # scaled to the drawn standard deviation over the textured voxels, and not constant
    assert np.std(hu[inside]) == pytest.approx(amp, rel=1e-3)
    assert len(np.unique(hu[inside])) > 100


def test_clinical_lungs_are_larger_than_the_plain_phantoms():
    options = {**SMALL, "noise": False}
    plain = make_spine_phantom(11, **options)
    clinical = make_spine_phantom(11, clinical=True, **options)

    def lung(ph):  # voxels at lung CT numbers (the lung material is -880 .. -800 HU)
        return int(np.sum((ph.ct.data > -950) & (ph.ct.data < -700)))
    assert lung(clinical) > lung(plain)


def test_default_augmentation_is_scale_offset_noise():
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    config = AugmentConfig()
    out = augment_image(image, np.random.default_rng(5), config)
    rng = np.random.default_rng(5)
    scale, offset, sigma = (rng.uniform(*config.scale), rng.uniform(*config.offset),
                            rng.uniform(*config.noise))
    expect = (image * np.float32(scale) + np.float32(offset)
              + rng.normal(0.0, sigma, size=image.shape).astype(np.float32))
    np.testing.assert_array_equal(out, expect)


def test_strong_augmentation_steps():
    image = np.zeros((32, 32), dtype=np.float32)
    image[16, 16] = 1.0
    blur = AugmentConfig.none()
    blur = AugmentConfig(**{**blur.__dict__, "blur_px": (1.0, 1.0)})
    out = augment_image(image, np.random.default_rng(0), blur)
    assert out.sum() == pytest.approx(1.0, rel=1e-4) and out.max() < 0.2  # mass kept, spread
    gamma = AugmentConfig(**{**AugmentConfig.none().__dict__, "gamma": (2.0, 2.0)})
    ramp = np.linspace(0, 1, 9, dtype=np.float32)[None]
    np.testing.assert_allclose(augment_image(ramp, np.random.default_rng(0), gamma), ramp ** 2,
                               rtol=1e-6)
    bright = AugmentConfig(**{**AugmentConfig.none().__dict__, "distractors": 6})
    outs = [augment_image(np.zeros((40, 40), np.float32), np.random.default_rng(s), bright)
            for s in range(8)]
    assert all(o.min() >= 0 for o in outs) and max(o.max() for o in outs) > 0.05
    strong = augment_image(image, np.random.default_rng(1), AugmentConfig.strong())
    assert strong.dtype == np.float32 and np.isfinite(strong).all()
    with pytest.raises(DrrkitError):
        AugmentConfig(gamma=(0.0, 1.0))


def test_recipes_registry_and_schedule():
    from vertebra.demo import RECIPES, DemoConfig, _train_config, recipe_config

    assert recipe_config("cpu-demo") == DemoConfig()
    real = recipe_config("real-ct")
    assert real.recipe == "real-ct" and 0 < real.clinical_share <= 1
    assert real.augment == "strong"
    assert real.train_changes()["augment"] == AugmentConfig.strong()
    with pytest.raises(DrrkitError, match="clinical_share"):
        DemoConfig(clinical_share=1.5)
    # the localizer's clinical phantoms show the whole trunk, the identifier's the
    # generator's share of spine protocols; both see steeper upper spines and more
    # thick-slice scans than the generator's defaults
    assert real.phantom_options("localization") == {
        "spine_fov_share": 0.0, "max_t1_lean": 50.0, "thick_slice_share": 0.5}
    assert "spine_fov_share" not in real.phantom_options("identification")
    assert real.phantom_options("identification")["max_t1_lean"] == 50.0
    with pytest.raises(DrrkitError, match="identifier_spine_fov_share"):
        DemoConfig(identifier_spine_fov_share=-0.1)
    assert set(RECIPES) >= {"cpu-demo", "real-ct"}
    with pytest.raises(DrrkitError, match="unknown recipe"):
        recipe_config("nope")
    with pytest.raises(DrrkitError, match="augment"):
        DemoConfig(augment="wild")
    preset = _train_config("localization", None, "none")
    longer = _train_config("localization", 2 * preset.iterations, "none")
    assert longer.lr_step == 2 * preset.lr_step  # the decay keeps its place in the schedule
    # a long run saves a checkpoint as often as the preset does, so a stopped run resumes
    # near where it stopped; a short one saves once, at its end
    assert longer.checkpoint_every == preset.checkpoint_every < longer.iterations
    assert _train_config("localization", 7, "none").checkpoint_every == 7


def test_demo_cli_refuses_an_unknown_recipe(tmp_path):
    from typer.testing import CliRunner

    from vertebra.cli import app

    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--recipe", "nope"])
    assert res.exit_code == 2
    assert "unknown recipe" in res.output and "Traceback" not in res.output


def test_phantom_source_clinical_share_draws_per_seed():
    from vertebra.training.sources import PhantomSource

    source = PhantomSource(range(200), clinical_share=0.6)
    drawn = [source.clinical(i) for i in range(200)]
    assert 0.45 < np.mean(drawn) < 0.75
    assert drawn == [PhantomSource(range(200), clinical_share=0.6).clinical(i)
                     for i in range(200)]
    assert source.describe()["clinical_share"] == 0.6
    assert "clinical_share" not in PhantomSource(range(3)).describe()  # older caches match
    assert not any(PhantomSource(range(5)).clinical(i) for i in range(5))
    assert all(PhantomSource(range(5), clinical=True).clinical(i) for i in range(5))
    with pytest.raises(DrrkitError):
        PhantomSource(range(3), clinical_share=0.5, clinical=True)
    with pytest.raises(DrrkitError):
        PhantomSource(range(3), clinical_share=1.5)
    small = PhantomSource([1, 2, 3, 4], clinical_share=1.0, size="small", levels=("T6", "L2"))
    ct = small.load(0)
    assert ct.volume.data.max() > 0


def test_train_default_refuses_bad_input_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from vertebra.cli import app

    for extra, message in ((["--recipe", "nope"], "unknown recipe"),
                           (["--threads", "0"], "--threads"),
                           (["--members", "0"], "members")):
        res = CliRunner().invoke(app, ["train-default", "--out", str(tmp_path / "t"),
                                       "--weights-out", str(tmp_path / "w"), *extra])
        assert res.exit_code == 2 and message in res.output
        assert not (tmp_path / "t").exists() and not (tmp_path / "w").exists()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_clinical_ribs_range_from_fainter_to_denser_than_the_vertebrae(seed):
    from vertebra.data._clinical import restyle_bone
    from vertebra.data._scene import Objects

    objs = Objects()
    vertebrae = {v: objs.add(200.0, 900.0, 1.5, v) for v in (8, 9, 10)}
    names = ("disc", "rib", "bone", "sacrum", "coccyx", "femur_head")
    m = {name: objs.add(100.0, 500.0, 1.2, 0) for name in names}
    restyle_bone(objs, vertebrae, m, np.random.default_rng(seed))
    rib = m["rib"]
    trab = objs.core[m["sacrum"]]  # the scan's trabecular density (the sacrum's core)
    cortex = np.mean([objs.shell[o] for o in vertebrae.values()])
    # core 40-200 HU above the scan's trabecular bone, cortex 0.7-1.6 times the scan's,
    # 1.2-2.2 mm thick, all three rising together with one draw
    u = (objs.core[rib] - trab - 40.0) / 160.0
    assert 0.0 <= u <= 1.0
    assert objs.thick[rib] == pytest.approx(1.2 + u)
    assert 0.7 * 0.85 <= objs.shell[rib] / cortex <= 1.6 / 0.85
    assert objs.shell[rib] == pytest.approx(objs.shell[m["bone"]] * (0.7 + 0.9 * u))


def test_rib_heads_lie_at_the_disc_above_except_the_first_and_floating_ribs():
    from vertebra.data._scene import _Local, _rib_path
    from vertebra.data.anatomy import build_spine, level_names

    names = level_names()
    spine = build_spine(names, np.random.default_rng(3))
    frame = _Local(np.zeros(3), np.eye(3))
    for d in spine.dims:
        if d.ribs == "none":
            continue
        for side in (-1, 1):
            pts, _ = _rib_path(frame, d, side, 1.0, np.random.default_rng(0))
            head_z, neck_z = pts[0, 2], pts[1, 2]  # local mm above the body's centre
            if d.rib_index == 1 or d.ribs == "floating":
                assert head_z < d.height / 2  # on its own body
            else:
                assert d.height / 2 < head_z < d.height / 2 + d.disc  # in the disc above
                assert neck_z > 0.25 * d.height  # the neck runs level, in the upper half


class _BolusPatient:
    """What :func:`_bolus` reads of a patient: its stream, blood, vessels, heart frame."""

    def __init__(self, seed: int, bolus: float) -> None:
        from vertebra.data import _sdf
        from vertebra.data._scene import _Local

        self.rng = np.random.default_rng(seed)
        self.blood = {"bolus": bolus}
        self.vessels = _sdf.Shapes()
        self.mid = _Local(np.array([0.0, 0.0, -100.0]), np.eye(3))
        self.hw = 1.0
        self.hu = []

    def add(self, core):
        self.hu.append(core)
        return len(self.hu) - 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bolus=st.floats(400.0, 2500.0))
def test_bolus_dilutes_from_the_arm_to_the_vena_cava_without_touching_the_scans_stream(
        seed, bolus):
    from vertebra.data._clinical import BOLUS_CEILING_HU, _bolus

    p = _BolusPatient(seed, bolus)
    before = p.rng.bit_generator.state
    path = np.array([[150.0, -40, 0], [75, -40, 0], [30, -45, 5], [-20, -60, 0],
                     [-20, -85, -60]])  # shoulder, brachiocephalic vein, vena cava
    _bolus(p, path, np.array([6.0, 7, 8, 10, 10]))
    assert p.rng.bit_generator.state == before  # the scan's other draws do not move
    segments, jet = p.hu[:4], p.hu[4:]
    assert len(p.vessels) == len(p.hu) and len(jet) <= 1
    assert all(0 < hu <= BOLUS_CEILING_HU for hu in p.hu)
    # densest at the shoulder, at least the drawn bolus there (within the 10 % jitter),
    # and diluted to at most 0.8 of it (jitter included: 0.88) in the vena cava
    assert segments[0] >= 0.9 * min(bolus, BOLUS_CEILING_HU)
    assert segments[-1] <= 0.88 * bolus < segments[0]
    if jet:
        assert jet[0] <= segments[-1] / 0.9


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), raised=st.booleans(), side=st.sampled_from([-1, 1]))
def test_bolus_fills_the_injected_arms_veins_first_when_the_arm_is_in_the_scan(
        seed, raised, side):
    from vertebra.data._clinical import _arm_direction, _bolus
    from vertebra.data._scene import ShoulderPose

    pose = ShoulderPose(raised=raised, arms_shown=True, turn_deg=0.0, shrug_mm=0.0)
    arm = _arm_direction(pose, side)
    assert np.isclose(np.linalg.norm(arm), 1.0)
    assert (arm[2] > 0.9) == raised and (arm[2] < -0.9) != raised  # up or down the arm
    assert np.sign(arm[0]) == side  # away from the midline, on the injected side
    assert _arm_direction(replace(pose, arms_shown=False), side) is None
    path = np.array([[150.0 * side, -40, 0], [75 * side, -40, 0], [30 * side, -45, 5],
                     [-20, -60, 0], [-20, -85, -60]])
    radii = np.array([6.0, 7, 8, 10, 10])
    without, with_arm = _BolusPatient(seed, 1500.0), _BolusPatient(seed, 1500.0)
    _bolus(without, path, radii)
    _bolus(with_arm, path, radii, arm=arm)
    # the shoulder-to-cava segments, two segments of arm vein before them, and maybe the
    # jet into the atrium
    assert len(without.hu) in (4, 5) and len(with_arm.hu) in (6, 7)
    # the injection reaches the scan undiluted in the arm (within the 10 % jitter)
    assert with_arm.hu[0] >= 0.9 * 1500.0
    assert with_arm.rng.bit_generator.state == without.rng.bit_generator.state


# ------------------------------------------------------------------ the shoulder girdle
def _girdle(pose, seed: int = 0):
    """(humeral heads (2, 3), every bone primitive row) of ``_chest`` for one spine."""
    from vertebra.data import _scene, _sdf
    from vertebra.data.anatomy import build_spine, level_names

    spine = build_spine(level_names(), np.random.default_rng(seed), 1.0)
    objs, bone = _scene.Objects(), _sdf.Shapes()
    m = {k: objs.add(0.0) for k in ("rib", "cartilage", "bone", "femur_head")}
    locs = [_scene._Local(spine.centres[i], spine.frames[i]) for i in range(len(spine.dims))]
    _, heads = _scene._chest(bone, m, spine, locs, 1.0, np.random.default_rng(5), pose)
    return spine, heads, bone.arrays()[0]


def test_scapular_turn_is_a_rotation_in_the_scapulas_plane():
    """Closed form: lateral turns towards up by the angle, the plane's normal stays."""
    from vertebra.data._scene import _scapular_turn

    u = np.array([0.8, -0.6, 0.0])
    frame = np.column_stack([u, [0.0, 0.0, 1.0], np.cross(u, [0.0, 0.0, 1.0])])
    turn = _scapular_turn(frame, np.radians(30.0))
    np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(turn) == pytest.approx(1.0)
    np.testing.assert_allclose(turn @ u, np.cos(np.radians(30)) * u
                               + np.sin(np.radians(30)) * frame[:, 1], atol=1e-12)
    np.testing.assert_allclose(turn @ frame[:, 2], frame[:, 2], atol=1e-12)
    np.testing.assert_allclose(_scapular_turn(frame, 0.0), np.eye(3), atol=1e-15)


def test_a_still_pose_keeps_the_girdle_and_raised_arms_lift_the_humeral_heads():
    from vertebra.data._scene import ShoulderPose

    spine, heads, rows = _girdle(None)
    _, still_heads, still_rows = _girdle(ShoulderPose(False, True, 0.0, 0.0))
    np.testing.assert_allclose(still_heads, heads, atol=1e-9)
    np.testing.assert_allclose(still_rows, rows, atol=1e-9)
    z = {n: spine.centres[i][2] for i, n in enumerate(spine.names)}
    # at the sides the heads lie level with T2-T3 (between the centroids of T1 and T4)
    assert np.all((heads[:, 2] < z["T1"]) & (heads[:, 2] > z["T4"]))
    _, raised, raised_rows = _girdle(ShoulderPose(True, True, 20.0, 0.0))
    assert np.all(raised[:, 2] > z["T1"])  # raised arms: above T1
    assert np.all(raised[:, 2] < z["C4"])
    # the sternoclavicular joints (the clavicles' first capsule's start) stay in place
    assert np.all(raised[:, 2] - heads[:, 2] > 30.0)
    shrugged = _girdle(ShoulderPose(True, True, 20.0, 10.0))[1]
    np.testing.assert_allclose(shrugged - raised, [[0, 0, 10.0]] * 2, atol=1e-9)
    assert rows.shape == raised_rows.shape  # the same primitives, moved


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_drawn_poses_stay_in_their_ranges(seed):
    from vertebra.data._scene import draw_shoulder_pose

    pose = draw_shoulder_pose(np.random.default_rng(seed))
    lo, hi = (10.0, 30.0) if pose.raised else (-5.0, 5.0)
    assert lo <= pose.turn_deg <= hi and -5.0 <= pose.shrug_mm <= 15.0
    assert pose.arms_shown or pose.raised  # only raised arms lie wholly above the scan


def test_drawn_poses_raise_the_arms_on_their_share():
    from vertebra.data._scene import ARMS_OUT_OF_VIEW, ARMS_RAISED, draw_shoulder_pose

    rng = np.random.default_rng(0)
    poses = [draw_shoulder_pose(rng) for _ in range(4000)]
    raised = np.mean([p.raised for p in poses])
    hidden = np.mean([not p.arms_shown for p in poses])
    assert abs(raised - ARMS_RAISED) < 0.03
    assert abs(hidden - ARMS_RAISED * ARMS_OUT_OF_VIEW) < 0.03


def test_the_pose_moves_only_a_clinical_scenes_girdle():
    """A plain scene ignores the pose (plain phantoms keep their skeleton); a clinical
    scene's girdle, and the arms hung from it, follow the pose."""
    from vertebra.data._scene import ShoulderPose, build_scene
    from vertebra.data.anatomy import build_spine, level_names

    spine = build_spine(level_names(), np.random.default_rng(0), 1.0)
    raised = ShoulderPose(True, True, 25.0, 5.0)

    def bone(pose, clinical):
        scene = build_scene(spine, np.random.default_rng(1), shoulder_pose=pose,
                            clinical_rng=np.random.default_rng(2) if clinical else None)
        return scene.bone.arrays()[0], scene.clinical

    np.testing.assert_array_equal(bone(raised, False)[0], bone(None, False)[0])
    moved, clinical = bone(raised, True)
    still, _ = bone(ShoulderPose(False, True, 0.0, 0.0), True)
    assert moved.shape == still.shape and not np.array_equal(moved, still)
    hidden = build_scene(spine, np.random.default_rng(1), clinical_rng=np.random.default_rng(2),
                         shoulder_pose=ShoulderPose(True, False, 25.0, 5.0)).clinical
    # arms out of view: fewer vessel-pass primitives (no bones of the arm), same organs
    assert len(hidden.vessels.rows) < len(clinical.vessels.rows)


# ------------------------------------------------------------------ thick slices
def test_slice_profile_closed_form():
    from vertebra.data._clinical import slice_profile

    np.testing.assert_allclose(slice_profile(5.0, 2.5), [0.25, 0.5, 0.25])  # 1.25+2.5+1.25
    np.testing.assert_allclose(slice_profile(3.0, 1.0), [1 / 3] * 3)
    np.testing.assert_allclose(slice_profile(4.0, 1.0), [0.125, 0.25, 0.25, 0.25, 0.125])
    np.testing.assert_allclose(slice_profile(2.0, 2.5), [1.0])  # thinner than the spacing
    with pytest.raises(DrrkitError, match="positive"):
        slice_profile(0.0, 1.0)


@given(st.floats(0.5, 8.0), st.floats(0.4, 3.0))
@settings(max_examples=60, deadline=None)
def test_slice_profile_is_a_box_of_the_thickness(thickness, spacing):
    """Properties: symmetric, sums to 1, and its second moment is the box's, T^2/12,
    within a quarter voxel squared (the profile is read at the voxel centres), for T >= s."""
    from vertebra.data._clinical import slice_profile

    w = slice_profile(thickness, spacing)
    assert len(w) % 2 == 1 and np.all(w >= 0)
    np.testing.assert_allclose(w, w[::-1])
    assert w.sum() == pytest.approx(1.0)
    if thickness >= spacing:
        x = (np.arange(len(w)) - len(w) // 2) * spacing
        var = float(np.sum(w * x**2))
        assert abs(var - thickness**2 / 12) <= spacing**2 / 4 + 1e-9


def test_thick_slices_average_a_step_over_the_slab():
    """A step along the slices becomes the box-averaged ramp; a constant stays."""
    from vertebra.data import _clinical

    class Always:  # a generator that always asks for thick slices of 5 mm
        def random(self):
            return 0.0

        def uniform(self, lo, hi):
            return 5.0

    hu = np.zeros((9, 2, 2), np.float32)
    hu[4:] = 1000.0
    assert _clinical.thick_slices(hu, 2.5, Always()) == 5.0
    np.testing.assert_allclose(hu[:, 0, 0], [0, 0, 0, 250, 750, 1000, 1000, 1000, 1000])
    flat = np.full((6, 3, 3), 40.0, np.float32)
    _clinical.thick_slices(flat, 1.0, Always())
    np.testing.assert_allclose(flat, 40.0, rtol=1e-6)

    class Never(Always):
        def random(self):
            return 0.99

    kept = np.arange(8, dtype=np.float32).reshape(8, 1, 1).copy()
    assert _clinical.thick_slices(kept, 1.0, Never()) is None
    np.testing.assert_array_equal(kept[:, 0, 0], np.arange(8))


def test_sagittal_slabs_average_along_x_only():
    """Along axis 2 (world x) a step becomes the box-averaged ramp of a 2-4 mm slab, and
    a CT that varies only along z and y is left as it was."""
    from vertebra.data import _clinical

    class Always:  # a generator that always asks for slabs of 3 mm
        def random(self):
            return 0.0

        def uniform(self, lo, hi):
            assert (lo, hi) == _clinical.SAGITTAL_SLICE_MM
            return 3.0

    hu = np.zeros((2, 2, 7), np.float32)
    hu[..., 3:] = 900.0
    assert _clinical.thick_slices(hu, 1.0, Always(), axis=2,
                                  mm=_clinical.SAGITTAL_SLICE_MM) == 3.0
    np.testing.assert_allclose(hu[1, 1], [0, 0, 300, 600, 900, 900, 900], rtol=1e-6)
    layered = np.arange(4 * 3, dtype=np.float32).reshape(4, 3, 1) * np.ones((1, 1, 5),
                                                                              np.float32)
    expected = layered.copy()
    _clinical.thick_slices(layered, 1.0, Always(), axis=2, mm=_clinical.SAGITTAL_SLICE_MM)
    np.testing.assert_allclose(layered, expected, rtol=1e-6)


def test_sagittal_share_one_blurs_a_clinical_scan_across_x_only():
    """``sagittal_share=1``: a clinical scan in thin voxels becomes smoother from left to
    right, its labels and truth as they were; share 0 is bit-identical to the default,
    and plain phantoms do not change."""
    opts = {"clinical": True, "levels": "L1:L2", "fov": 150.0, "spine_fov_share": 0.0,
            "spacing": (0.8, 0.8, 2.0), "noise": False, "orientation": "canonical"}
    base = make_spine_phantom(1, **opts)
    np.testing.assert_array_equal(make_spine_phantom(1, sagittal_share=0.0, **opts).ct.data,
                                  base.ct.data)
    sag = make_spine_phantom(1, sagittal_share=1.0, **opts)
    np.testing.assert_array_equal(sag.labels.data, base.labels.data)
    for k in base.centroids:
        np.testing.assert_allclose(sag.centroids[k], base.centroids[k])
    step = {axis: [np.abs(np.diff(v.ct.data.astype(np.float64), axis=axis)).mean()
                   for v in (sag, base)] for axis in (0, 2)}  # canonical: (z, y, x)
    assert step[2][0] < 0.9 * step[2][1]  # smoother across x
    assert step[0][0] > 0.9 * step[0][1]  # barely along z
    plain = {"size": "small", "levels": "T8:L3"}
    np.testing.assert_array_equal(make_spine_phantom(1, sagittal_share=1.0, **plain).ct.data,
                                  make_spine_phantom(1, **plain).ct.data)
    with pytest.raises(DrrkitError, match="sagittal_share"):
        make_spine_phantom(0, sagittal_share=2.0, **opts)


@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
@settings(max_examples=60, deadline=None)
def test_a_larger_thick_slice_share_keeps_every_thick_scan(seed, a, b):
    """Property: a scan thickened at one share is thickened at any larger share, to the
    same thickness, and the generator leaves in the same state either way."""
    from vertebra.data import _clinical

    small, large = min(a, b), max(a, b)
    out = {}
    for share in (small, large):
        rng = np.random.default_rng(seed)
        hu = np.zeros((12, 1, 1), np.float32)
        hu[6:] = 1000.0
        out[share] = (_clinical.thick_slices(hu, 0.5, rng, share), hu, rng.random())
    if out[small][0] is not None:
        assert out[large][0] == out[small][0]
        np.testing.assert_array_equal(out[large][1], out[small][1])
    assert out[small][2] == out[large][2]
    never = _clinical.thick_slices(np.zeros((4, 1, 1), np.float32), 0.5,
                                   np.random.default_rng(seed), 0.0)
    always = _clinical.thick_slices(np.zeros((4, 1, 1), np.float32), 0.5,
                                    np.random.default_rng(seed), 1.0)
    assert never is None and 3.0 <= always <= 5.0


def test_a_deep_diaphragm_gives_the_last_rib_level_a_lung_lobe_too():
    """Lobes per rib level: the last two left out of a plain scene, the last one of a
    clinical scene whose diaphragm drops up to LAST_LOBE_DROP mm, none beyond; the drop
    range reaches past that bound."""
    from vertebra.data._scene import LAST_LOBE_DROP, build_scene
    from vertebra.data.anatomy import build_spine, level_names
    from vertebra.data.phantom import LUNG_DROP_MM

    spine = build_spine(level_names(), np.random.default_rng(0), 1.0)

    def soft(drop):
        return len(build_scene(spine, np.random.default_rng(1), lungs=(1.0, 1.0, drop)).soft)

    plain, shallow, deep = soft(0.0), soft(LAST_LOBE_DROP), soft(LAST_LOBE_DROP + 1.0)
    assert shallow == plain + 2 and deep == shallow + 2  # one lobe on each side per level
    assert LUNG_DROP_MM[0] > 0 and LUNG_DROP_MM[1] > LAST_LOBE_DROP
