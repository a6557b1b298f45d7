"""Training: data items, Sequence Loss plumbing, a short run whose loss falls, resume, CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from drrkit.errors import DrrkitError
from vertebra import labels as L
from vertebra.sequence import SequenceDP, sequence_loss
from vertebra.training.config import AugmentConfig, TrainConfig, parse_init
from vertebra.training.dataset import (
    PairDataset,
    StreamSampler,
    ViewDataset,
    crop,
    crop_corner,
)
from vertebra.training.losses import heatmap_loss, identification_loss, sequence_term, square_rows
from vertebra.training.rendered import RenderedCache, RenderedViews, render_all
from vertebra.training.sources import PhantomSource, open_data, parse_phantoms
from vertebra.views import ViewConfig

ENC = "resnet10t"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def tiny_config(task="identification", **changes):
    base = {"encoder": ENC, "crop_size": 64, "batch_size": 4, "iterations": 4, "log_every": 2,
            "checkpoint_every": 2, "sigma_mm": 6.0,
            "views": ViewConfig(views=4, mm_per_pixel=4.0)}
    base.update(changes)
    return TrainConfig(task=task, **base)


@pytest.fixture(scope="module")
def phantoms():
    return PhantomSource([0, 1], size="small", levels=("T10", "L3"), orientation="random")


@pytest.fixture(scope="module")
def rendered(phantoms):
    cfg = tiny_config()
    return render_all(phantoms, cfg.views, orbits=2, sigma_mm=cfg.sigma_mm)


# ---------------------------------------------------------------------- labels chain
def test_chain_classes():
    with_t13, without = L.chain_classes(True), L.chain_classes(False)
    assert with_t13.tolist() == list(range(1, 27))
    assert len(without) == 25 and L.by_name("T13").class_index not in without
    i = without.tolist().index(L.by_name("T12").class_index)
    assert without[i + 1] == L.by_name("L1").class_index  # T12 -> L1 consecutive
    assert without[-1] == with_t13[-1] == L.by_name("L6").class_index


# ---------------------------------------------------------------------- config
def test_config_round_trip_and_validation():
    cfg = TrainConfig.cpu_demo("identification", iterations=7)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig().iterations == 15000 and TrainConfig().lr_step == 4000
    assert parse_init("simsiam:/x.pt") == ("simsiam", "/x.pt")
    for bad in ({"task": "segment"}, {"crop_size": 100}, {"init": "bogus:"}, {"lr": 0},
                {"background_weight": 0}):
        with pytest.raises(DrrkitError):
            TrainConfig(**bad)
    with pytest.raises(DrrkitError):
        AugmentConfig(noise=(0.1, 0.0))


def test_config_decoder_channels_build_that_decoder():
    from vertebra.training.trainer import build_model

    cfg = TrainConfig.cpu_demo("localization", decoder_channels=[32, 16, 16, 8, 8])
    assert cfg.decoder_channels == (32, 16, 16, 8, 8)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = build_model(replace(cfg, init="none"))
    assert model.config["decoder_channels"] == [32, 16, 16, 8, 8]
    assert build_model(TrainConfig.cpu_demo("localization")).config["decoder_channels"] == [
        256, 128, 64, 32, 16]
    with pytest.raises(DrrkitError, match="decoder_channels"):
        TrainConfig(decoder_channels=(64, 0))


def test_phantom_specs():
    assert parse_phantoms("phantoms:3") == [0, 1, 2]
    assert parse_phantoms("phantoms:5:7") == [5, 6]
    assert parse_phantoms("/some/folder") is None
    for bad in ("phantoms:", "phantoms:x", "phantoms:4:2"):
        with pytest.raises(DrrkitError):
            parse_phantoms(bad)
    with pytest.raises(DrrkitError):
        open_data("/no/such/folder")


# ---------------------------------------------------------------------- data
def test_crop_and_corner():
    a = np.arange(12.0).reshape(3, 4)
    c = crop(a, -1, 2, 3)
    assert c.tolist() == [[0, 0, 0], [2, 3, 0], [6, 7, 0]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left = crop_corner(rng, (100, 40), 64, np.array([[20.0, 50.0]]), 0.5)
        assert 0 <= top <= 36 and -24 <= left <= 0  # crop inside the image / image inside crop


def _check_item(item, size):
    assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
    assert item["heatmap"].shape == (1, size, size)
    assert item["id_map"].shape == (size, size) and item["id_map"].dtype == torch.int64
    pts = item["pixels"].numpy()
    pts = pts[~np.isnan(pts[:, 0])]
    heat, ids = item["heatmap"][0].numpy(), item["id_map"].numpy()
    inside = [(c, r) for c, r in pts if 0 <= round(r) < size and 0 <= round(c) < size]
    for c, r in inside:  # targets sit on the projected centroids
        assert heat[round(r), round(c)] > 0.8
        assert ids[round(r), round(c)] > 0
    return len(inside)


def test_view_dataset_items_on_the_fly_and_cached(phantoms, rendered):
    cfg = tiny_config()
    seen = 0
    for data in (phantoms, RenderedCache.from_views(rendered)):
        ds = ViewDataset(data, cfg)
        for i in range(4):
            seen += _check_item(ds[i], 64)
        # an item is a pure function of (seed, index)
        assert torch.equal(ds[3]["image"], ds[3]["image"])
        assert not torch.equal(ds[3]["image"], ds[4]["image"])
    assert seen > 0
    x1, x2 = PairDataset(RenderedCache.from_views(rendered), cfg)[0]
    assert x1.shape == x2.shape == (1, 64, 64)


def test_rendered_views_targets_and_npz_round_trip(rendered, tmp_path):
    rv = rendered[0]
    assert len(rv) == 8 and rv.images.shape == rv.heatmaps.shape == rv.id_maps.shape
    v, n = np.nonzero(rv.visible)
    r, c = np.round(rv.pixels[v, n, 1]).astype(int), np.round(rv.pixels[v, n, 0]).astype(int)
    assert np.all(rv.id_maps[v, r, c] == L.classes_of(rv.labels[n]))
    back = RenderedViews.load(rv.save(tmp_path / "a.npz"))
    for name in ("images", "heatmaps", "id_maps", "pixels", "visible", "labels"):
        assert np.array_equal(getattr(back, name), getattr(rv, name))
    assert np.allclose(back.geometry.projection_matrices, rv.geometry.projection_matrices)
    assert back.view_config == rv.view_config and back.t13 == rv.t13


def test_crop_z_keeps_the_chosen_vertebrae_with_exact_geometry(phantoms):
    from vertebra.training.sources import crop_z

    ct = phantoms.load(1)  # random orientation: the spine need not run along array axis 0
    keys = sorted(ct.centroids)
    cut = crop_z(ct, 1, 3, reach=(0.4, 0.6))
    assert sorted(cut.centroids) == keys[1:4]
    vol, small = ct.volume, cut.volume
    axis = int(np.argmax(np.abs(vol.direction[2])))
    assert small.shape_xyz[axis] < vol.shape_xyz[axis]
    assert [small.shape_xyz[a] for a in range(3) if a != axis] == \
        [vol.shape_xyz[a] for a in range(3) if a != axis]
    # a voxel of the crop holds the value of the original voxel at the same world point
    ijk = np.array([1, 2, 3])
    src = np.round(vol.world_to_voxel(small.voxel_to_world(ijk))).astype(int)
    assert small.data[3, 2, 1] == vol.data[src[2], src[1], src[0]]
    # the cuts lie 0.4 and 0.6 of the way to the outside neighbours
    z = {k: ct.centroids[k][2] for k in keys}
    top, bottom = small.corners[:, 2].max(), small.corners[:, 2].min()
    dz = abs(small.spacing[axis])
    assert abs(top - (z[keys[1]] + 0.4 * (z[keys[0]] - z[keys[1]]))) <= dz
    assert abs(bottom - (z[keys[3]] + 0.6 * (z[keys[4]] - z[keys[3]]))) <= dz
    whole = crop_z(ct, 0, len(keys) - 1)  # no neighbour outside: nothing is cut
    assert whole.volume.shape_xyz == vol.shape_xyz and sorted(whole.centroids) == keys
    for bad in ((2, 1), (0, len(keys))):
        with pytest.raises(DrrkitError, match="first <= last"):
            crop_z(ct, *bad)
    with pytest.raises(DrrkitError, match="reach"):
        crop_z(ct, 1, 2, reach=(0.0, 0.5))


@settings(max_examples=40, deadline=None)
@given(first=st.integers(0, 7), length=st.integers(1, 8), reach=st.tuples(
    st.floats(0.05, 0.95), st.floats(0.05, 0.95)), perm=st.permutations([0, 1, 2]),
    flip=st.tuples(st.booleans(), st.booleans(), st.booleans()), spacing=st.floats(0.5, 3))
def test_crop_z_keeps_exactly_the_run(first, length, reach, perm, flip, spacing):
    """Eight vertebrae 30 mm apart along world z, any axis order and sign, any slice
    spacing: the crop keeps exactly vertebrae first .. first + length - 1."""
    import drrkit
    from vertebra.training.sources import TrainingCT, crop_z

    last = min(first + length - 1, 7)
    direction = np.eye(3)[:, list(perm)] * np.where(flip, -1.0, 1.0)
    n = np.full(3, 8)
    n[list(perm).index(2)] = int(np.ceil(260 / spacing))
    vol = drrkit.Volume(np.zeros(n[::-1], np.float32), spacing=np.full(3, spacing),
                        direction=direction)
    vol = drrkit.Volume(vol.data, vol.spacing, -vol.voxel_to_world((n - 1) / 2), direction)
    cents = {k: np.array([0.0, 0.0, 105.0 - 30.0 * k]) for k in range(8)}  # id 0 on top
    cut = crop_z(TrainingCT("c", vol, cents, False), first, last, reach)
    assert sorted(cut.centroids) == list(range(first, last + 1))


def test_phantom_source_c1_share():
    src = PhantomSource(range(40), size="small", c1_share=0.5)
    starts = [src.levels(i) for i in range(40)]
    at_c1 = [lv for lv in starts if lv is not None]
    assert 10 <= len(at_c1) <= 30 and all(lv[0] == "C1" for lv in at_c1)
    assert starts == [PhantomSource(range(40), c1_share=0.5).levels(i) for i in range(40)]
    first = starts.index(at_c1[0])
    ct = src.load(first)
    assert min(ct.centroids) == 1  # C1
    assert PhantomSource(range(3)).levels(0) is None
    for bad in ({"c1_share": 1.5}, {"c1_share": 0.5, "levels": ("T1", "T4")}):
        with pytest.raises(DrrkitError, match="c1_share"):
            PhantomSource(range(3), **bad)


def test_phantom_source_sacrum_share_keeps_the_c1_draws():
    both = PhantomSource(range(60), size="small", c1_share=0.3, sacrum_share=0.4)
    runs = [both.levels(i) for i in range(60)]
    c1_only = [PhantomSource(range(60), c1_share=0.3).levels(i) for i in range(60)]
    # adding the sacrum share leaves every C1 scan where it was
    assert [lv for lv in runs if lv and lv[0] == "C1"] == [lv for lv in c1_only if lv]
    to_l5 = [lv for lv in runs if lv and lv[1] == "L5"]
    assert 12 <= len(to_l5) <= 36
    assert {lv[0] for lv in to_l5} <= set(PhantomSource.SACRUM_STARTS)
    ct = both.load(runs.index(to_l5[0]))
    assert max(ct.centroids) in (24, 25)  # L5 is the last vertebra (or L6 follows it)
    for bad, word in (({"sacrum_share": -0.1}, "sacrum_share"),
                      ({"sacrum_share": 0.2, "levels": ("T1", "T4")}, "sacrum_share"),
                      ({"c1_share": 0.6, "sacrum_share": 0.6}, "at most 1")):
        with pytest.raises(DrrkitError, match=word):
            PhantomSource(range(3), **bad)


def test_cropped_source_adds_named_deterministic_crops(phantoms):
    from vertebra.training.sources import CroppedSource

    src = CroppedSource(phantoms, crops=2, min_vertebrae=3, seed=5)
    assert len(src) == 6 and [src.name(i) for i in range(3)] == [
        "phantom0000", "phantom0000-z1", "phantom0000-z2"]
    whole, crop = src.load(3), src.load(4)
    assert whole.centroids.keys() == phantoms.load(1).centroids.keys()
    assert 3 <= len(crop.centroids) < len(whole.centroids) and crop.name == "phantom0001-z1"
    keys = sorted(whole.centroids)
    run = sorted(crop.centroids)
    assert run == keys[keys.index(run[0]):keys.index(run[0]) + len(run)]  # consecutive
    again = CroppedSource(phantoms, crops=2, min_vertebrae=3, seed=5).load(4)
    assert again.volume.shape_xyz == crop.volume.shape_xyz
    assert len(CroppedSource(phantoms, crops=0)) == len(phantoms)
    with pytest.raises(DrrkitError, match="crops"):
        CroppedSource(phantoms, crops=-1)


def test_verse_source_reads_ct_numbers_as_attenuation(phantoms, tmp_path):
    """A VerSe folder (CT in HU on disk) gives the phantoms' own attenuation and views."""
    from vertebra.data.phantom import write_phantoms
    from vertebra.training.rendered import render_views
    from vertebra.training.sources import VerseSource

    write_phantoms(tmp_path / "verse", [0], **phantoms.options)
    from_disk, built = VerseSource(tmp_path / "verse").load(0), phantoms.load(0)
    assert from_disk.name == "sub-phantom0000" and from_disk.t13 == built.t13
    assert from_disk.centroids.keys() == built.centroids.keys()
    for k in built.centroids:
        np.testing.assert_allclose(from_disk.centroids[k], built.centroids[k], atol=0.05)
    # int16 HU on disk: 1 HU rounding is 1e-3 of water's attenuation
    np.testing.assert_allclose(from_disk.volume.data, built.volume.data, atol=3e-5)
    view = ViewConfig(views=2, mm_per_pixel=4.0, bone_gain=4.0)
    np.testing.assert_allclose(render_views(from_disk, view).images,
                               render_views(built, view).images, rtol=2e-3, atol=1e-4)


def test_lazy_collection_keeps_what_fits_its_budget():
    from vertebra.training.sources import LazyCollection

    class Weighed(LazyCollection):
        def __init__(self, cache):
            super().__init__(cache)
            self.loads = []

        def __len__(self):
            return 4

        def _load(self, index):
            self.loads.append(index)
            return index

        def _weight(self, item):
            return 2.0 if item == 3 else 1.0

    c = Weighed(cache=3)
    for i in (0, 1, 2, 0, 1, 2):  # weights 1 + 1 + 1 fit: three loads
        c.load(i)
    assert c.loads == [0, 1, 2]
    c.load(3)  # weight 2 pushes out the two least recently used (0, then 1)
    c.load(2)
    c.load(0)
    assert c.loads == [0, 1, 2, 3, 0]
    big = Weighed(cache=1)
    big.load(3)  # heavier than the whole budget: still kept until the next load
    big.load(3)
    assert big.loads == [3]


def test_verse_source_cache_is_weighed_in_mib(tmp_path):
    """VerSe CTs differ a hundredfold in size: the cache holds MiB of voxels, not CTs."""
    import drrkit
    from vertebra.data import write_centroids
    from vertebra.training.sources import VerseSource

    for name, n in (("sub-big", 64), ("sub-small", 32)):  # 1 MiB and 1/8 MiB of float32
        ct = drrkit.Volume(np.zeros((n, n, n), np.float32), spacing=(2.0, 2.0, 2.0))
        ct.save(tmp_path / f"{name}_ct.nii.gz")
        write_centroids(tmp_path / f"{name}_seg-subreg_ctd.json", {20: ct.center}, ct)

    def counted(source):
        inner, loads = source._load, []
        source._load = lambda i: loads.append(i) or inner(i)
        return source, loads

    src, loads = counted(VerseSource(tmp_path, cache_mib=1.1))
    big = [src.name(i) for i in range(2)].index("sub-big")
    assert src._weight(src.load(big)) == pytest.approx(1.0)
    src.load(1 - big)  # 1 + 1/8 MiB > 1.1 MiB: the big CT leaves
    src.load(1 - big)
    src.load(big)
    assert loads == [big, 1 - big, big]
    roomy, loads = counted(open_data(tmp_path))  # default 2048 MiB: both stay
    for i in (big, 1 - big, big, 1 - big):
        roomy.load(i)
    assert isinstance(roomy, VerseSource) and loads == [big, 1 - big]


def test_rendered_cache_budget_is_in_mib(rendered):
    rv = rendered[0]
    mib = sum(a.nbytes for a in (rv.images, rv.heatmaps, rv.id_maps)) / 2**20
    cache = RenderedCache.from_views(rendered)
    assert cache._weight(rv) == pytest.approx(mib)


class _Counting:
    """A CT source that records which CTs were loaded (in ``loads``)."""

    def __init__(self, source, loads):
        self.source, self.loads = source, loads

    def __len__(self):
        return len(self.source)

    def name(self, i):
        return self.source.name(i)

    def load(self, i):
        self.loads.append(i)
        return self.source.load(i)

    def describe(self):
        return self.source.describe()


def test_prerender_many_builds_each_ct_once(phantoms, tmp_path):
    from vertebra.training.rendered import prerender, prerender_many

    loads = []
    counting = _Counting(phantoms, loads)

    fine, coarse = ViewConfig(views=4, mm_per_pixel=4.0), ViewConfig(views=4, mm_per_pixel=8.0)
    made = prerender_many(counting, {tmp_path / "a": fine, tmp_path / "b": coarse},
                          orbits=2, sigma_mm=6.0)
    assert loads == [0, 1]  # every CT built once for both folders
    alone = prerender(phantoms, tmp_path / "c", coarse, orbits=2, sigma_mm=6.0)
    assert [c.view_config for c in made.values()] == [fine, coarse]
    for i in range(len(phantoms)):
        np.testing.assert_array_equal(made[tmp_path / "b"].load(i).images, alone.load(i).images)
        assert made[tmp_path / "a"].load(i).images.shape[-1] > alone.load(i).images.shape[-1]
    loads.clear()
    prerender_many(counting, {tmp_path / "a": fine, tmp_path / "b": coarse}, orbits=2,
                   sigma_mm=6.0)
    assert loads == []  # complete folders are reused
    with pytest.raises(DrrkitError, match="other settings"):
        prerender_many(counting, {tmp_path / "a": coarse}, orbits=2, sigma_mm=6.0)
    loads.clear()
    fewer = prerender_many(counting, {tmp_path / "d": fine, tmp_path / "b": coarse},
                           orbits=2, sigma_mm=6.0, counts={tmp_path / "d": 1})
    assert loads == [0]  # b is complete; d needs only the first CT
    assert len(fewer[tmp_path / "d"]) == 1 and len(fewer[tmp_path / "b"]) == 2
    np.testing.assert_array_equal(fewer[tmp_path / "d"].load(0).images,
                                  made[tmp_path / "a"].load(0).images)
    with pytest.raises(DrrkitError, match="counts"):
        prerender_many(counting, {tmp_path / "d": fine}, counts={tmp_path / "d": 3},
                       orbits=2, sigma_mm=6.0)


def test_prerender_refuses_another_sources_cts_under_the_same_names(phantoms, tmp_path):
    """Phantom names carry only the seed: a cache records what else made its CTs."""
    from vertebra.training.rendered import prerender
    from vertebra.training.sources import CroppedSource

    vc = ViewConfig(views=2, mm_per_pixel=8.0)
    out = tmp_path / "cache"
    prerender(phantoms, out, vc, sigma_mm=6.0)
    manifest = json.loads((out / "cache.json").read_text())
    assert manifest["source"] == {"kind": "phantoms", "c1_share": 0.0, "sacrum_share": 0.0,
                                  "options": {"size": "small", "levels": ["T10", "L3"],
                                              "orientation": "random"}}
    assert CroppedSource(phantoms, crops=0).describe() == manifest["source"]
    assert CroppedSource(phantoms, crops=2).describe()["source"] == manifest["source"]
    other = PhantomSource([0, 1], size="small", levels=("T10", "L4"), orientation="random")
    with pytest.raises(DrrkitError, match=r"other settings \(source\)"):
        prerender(other, out, vc, sigma_mm=6.0)
    # a cache written before sources were described is reused and gets the description
    del manifest["source"]
    (out / "cache.json").write_text(json.dumps(manifest))
    prerender(phantoms, out, vc, sigma_mm=6.0)
    assert json.loads((out / "cache.json").read_text())["source"]["kind"] == "phantoms"


def _set_npz_meta(path, **changes):
    """Rewrite the ``meta`` of a prerender file (as an older or other run left it)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **changes}))
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def test_prerender_renders_again_what_other_settings_or_versions_made(phantoms, tmp_path):
    """An interrupted run leaves CASE.npz files but no cache.json: a rerun keeps a file only
    when its meta says this run would write the same (settings, orbit angles, version)."""
    import warnings

    from vertebra.cli import app
    from vertebra.training.rendered import CACHE_VERSION, prerender

    loads = []
    counting = _Counting(phantoms, loads)

    out = tmp_path / "cache"
    state = {"view_config": ViewConfig(views=4, mm_per_pixel=8.0), "orbits": 2,
             "sigma_mm": 6.0}

    def rerun(interrupted=True):
        if interrupted:
            (out / "cache.json").unlink()
        loads.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = prerender(counting, out, **state)
        return cache, [str(w.message) for w in caught]

    prerender(counting, out, **state)
    cache, said = rerun()
    assert loads == [] and said == []  # same settings: every file kept
    for change in ({"sigma_mm": 4.0}, {"square_mm": 30.0}, {"seed": 1}, {"orbits": 3},
                   {"view_config": ViewConfig(views=4, mm_per_pixel=6.0)},
                   {"view_config": ViewConfig(views=4, mm_per_pixel=6.0, bone_gain=8.0)}):
        state.update(change)  # one setting differs from the files on disk
        cache, said = rerun()
        assert loads == [0, 1], change
        assert len(said) == 1 and "rendered 2 cached file(s) again" in said[0], said
        views = cache.load(0)
        assert (views.sigma_mm, views.view_config) == (state["sigma_mm"], state["view_config"])
        assert len(views.start_angles) == len(views) // 4 == state.get("orbits")
    angles = cache.load(1).start_angles  # 0 (the inference views), then random
    assert len(angles) == 3 and angles[0] == 0.0 and 0 < abs(angles[1]) <= 45.0
    # a file of an older cache version (e.g. before the session-10 CT-number fix)
    _set_npz_meta(out / "phantom0001.npz", version=1)
    rerun()
    assert loads == [1]
    # an older folder: refused with a one-line error, then rendered again by prerender
    _set_npz_meta(out / "phantom0000.npz", version=1)
    manifest = json.loads((out / "cache.json").read_text())
    (out / "cache.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(DrrkitError, match="version 1, this one reads 2.*prerender again"):
        RenderedCache(out)
    with pytest.raises(DrrkitError, match="version 1.*prerender again"):
        RenderedViews.load(out / "phantom0000.npz")
    r = CliRunner().invoke(app, ["train", str(out), "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "run vertebra prerender again" in r.stderr
    cache, said = rerun(interrupted=False)
    assert loads == [0]  # the manifest is not trusted; phantom0001 was current already
    assert any("version 1" in s and "rendering it again" in s for s in said), said
    assert json.loads((out / "cache.json").read_text())["version"] == CACHE_VERSION == 2
    assert len(RenderedCache(out)) == 2


def test_stream_sampler_resumes_and_splits_ranks():
    it = iter(StreamSampler(2, start=0))
    first = [next(it) for _ in range(6)]
    assert first == [0, 1, 2, 3, 4, 5]
    resumed = iter(StreamSampler(2, start=2))
    assert [next(resumed) for _ in range(2)] == [4, 5]
    r0, r1 = iter(StreamSampler(2, rank=0, world=2)), iter(StreamSampler(2, rank=1, world=2))
    a, b = [next(r0) for _ in range(4)], [next(r1) for _ in range(4)]
    assert not set(a) & set(b)


# ---------------------------------------------------------------------- losses
def test_square_rows_mean_softmax_per_square():
    probs = torch.zeros(1, 27, 2, 4)
    probs[0, 0] = 1.0
    ids = torch.zeros(1, 2, 4, dtype=torch.int64)
    ids[0, :, :2] = 21  # L1 square
    ids[0, :, 2:3] = 19  # T12 square
    probs[0, :, :, :2] = 0
    probs[0, 21, 0, :2] = 1.0
    probs[0, 20, 1, :2] = 1.0  # half of L1's pixels say T13
    rows = square_rows(probs, ids)
    assert rows.lengths.tolist() == [2]
    assert rows.classes.tolist() == [[19, 21]]  # spine order
    assert rows.probs[0, 1, 20].item() == pytest.approx(0.5)  # column of class 21 (L1)
    assert rows.probs[0, 1, 19].item() == pytest.approx(0.5)  # column of class 20 (T13)
    assert rows.probs[0, 0].sum().item() == pytest.approx(0.0)  # T12's pixels: background


def test_sequence_term_uses_the_spines_own_chain():
    """T12 then L1 predicted perfectly: consecutive without T13, a skip with T13."""
    ids = torch.zeros(1, 1, 4, dtype=torch.int64)
    ids[0, 0, :2], ids[0, 0, 2:] = 19, 21
    probs = torch.zeros(1, 27, 1, 4)
    probs[0, 19, 0, :2] = 1.0
    probs[0, 21, 0, 2:] = 1.0
    dp = SequenceDP()
    no_t13 = sequence_term(probs, ids, torch.tensor([False]), dp)
    with_t13 = sequence_term(probs, ids, torch.tensor([True]), dp)
    perfect = sequence_loss(np.eye(2))  # two consecutive one-hot rows
    assert no_t13.item() == pytest.approx(float(perfect))
    assert with_t13.item() > no_t13.item() + 0.3
    # a batch mixing both chains averages the two per-image losses
    both = sequence_term(probs.repeat(2, 1, 1, 1), ids.repeat(2, 1, 1),
                         torch.tensor([False, True]), dp)
    assert both.item() == pytest.approx((no_t13.item() + with_t13.item()) / 2)
    # an image without vertebrae contributes nothing
    empty = sequence_term(probs, torch.zeros_like(ids), torch.tensor([False]), dp)
    assert empty.item() == 0.0


def test_identification_loss_gradients_and_switch():
    torch.manual_seed(0)
    logits = torch.randn(2, 27, 8, 8, requires_grad=True)
    ids = torch.zeros(2, 8, 8, dtype=torch.int64)
    ids[:, 2:5, 2:5], ids[:, 5:8, 2:5] = 8, 9
    t13 = torch.tensor([False, True])
    on = identification_loss(logits, ids, t13, gamma=1.0)
    off = identification_loss(logits, ids, t13, sequence=False)
    assert on.total.item() == pytest.approx(on.ce.item() + on.seq.item())
    assert off.total.item() == pytest.approx(off.ce.item())
    assert off.seq.item() == pytest.approx(on.seq.item()) and not off.seq.requires_grad
    (g_seq,) = torch.autograd.grad(on.seq, logits)
    assert g_seq.abs().sum() > 0
    assert heatmap_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0
    w = heatmap_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), fg_weight=3.0)
    assert w.item() == pytest.approx(4.0 / 2)


def test_focal_heatmap_loss_closed_form_and_gradients():
    from vertebra.training.losses import focal_heatmap_loss

    target = torch.tensor([[[[1.0, 0.95, 0.5, 0.0]]]])  # two positives (>= 0.9)
    x = torch.tensor([[[[0.0, 2.0, -1.0, -3.0]]]], requires_grad=True)
    p = torch.sigmoid(x.detach())
    pos = -((1 - p[..., :2]) ** 2 * torch.log(p[..., :2])).sum()
    neg = -((1 - target[..., 2:]) ** 4 * p[..., 2:] ** 2 * torch.log(1 - p[..., 2:])).sum()
    loss = focal_heatmap_loss(x, target)
    assert loss.item() == pytest.approx(((pos + neg) / 2).item(), rel=1e-6)
    (g,) = torch.autograd.grad(loss, x)
    assert (g[..., :2] < 0).all() and (g[..., 2:] > 0).all()  # raise peaks, lower the rest
    # stable for huge logits, and zero when the logits already say exactly the target
    big = torch.tensor([[[[60.0, 60.0, -60.0, -60.0]]]])
    assert torch.isfinite(focal_heatmap_loss(big, target)) and focal_heatmap_loss(
        big, target).item() < 1e-6
    assert focal_heatmap_loss(-big, target).item() > 10
    with pytest.raises(DrrkitError, match="shapes"):
        focal_heatmap_loss(x, target[..., :2])


def test_focal_heads_are_read_through_a_sigmoid(rendered):
    from vertebra.models import heatmap_values
    from vertebra.training.trainer import build_model
    from vertebra.training.validate import predict

    net = build_model(tiny_config("localization", heatmap_loss="focal"))
    assert net.config["heatmap_activation"] == "sigmoid"
    raw = torch.linspace(-5, 5, 7)
    torch.testing.assert_close(heatmap_values(net, raw), torch.sigmoid(raw))
    plain = build_model(tiny_config("localization"))
    assert heatmap_values(plain, raw) is raw
    heat = predict(net, rendered[0].images[:2])["heatmap"]
    assert heat.min() >= 0 and heat.max() <= 1


def test_a_resumed_focal_run_keeps_its_sigmoid(rendered, tmp_path):
    from vertebra.models import load_model
    from vertebra.training.trainer import train

    cfg = tiny_config("localization", heatmap_loss="focal", iterations=2)
    out = tmp_path / "loc.pt"
    train(replace(cfg, iterations=1), RenderedCache.from_views(rendered), out, progress=False)
    res = train(cfg, RenderedCache.from_views(rendered), out, resume=True, progress=False)
    assert res.model.config["heatmap_activation"] == "sigmoid"
    assert load_model(out).config["heatmap_activation"] == "sigmoid"


# ---------------------------------------------------------------------- training
def test_short_training_run_loss_falls(rendered):
    from vertebra.training.trainer import train

    cfg = tiny_config("identification", iterations=30, lr=3e-3, log_every=10)
    res = train(cfg, RenderedCache.from_views(rendered), None, progress=False)
    assert res.iteration == 30 and len(res.losses) == 30
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert last < 0.7 * first, (first, last)
    assert [h["iteration"] for h in res.history] == [10, 20, 30]
    assert {"ce", "seq", "lr", "it_per_s"} <= set(res.history[-1])


def test_cpu_bfloat16_training(rendered, tmp_path, monkeypatch):
    """``cpu_bf16``: bfloat16 forward passes and channels-last weights where the CPU has
    them, float32 weights and a float32 checkpoint; elsewhere a warning and float32."""
    from vertebra.models import load_model
    from vertebra.training import trainer

    cfg = tiny_config("localization", heatmap_loss="focal", iterations=12, lr=3e-3,
                      cpu_bf16=True, device="cpu")
    data = RenderedCache.from_views(rendered)
    if trainer.cpu_has_bf16():
        res = trainer.train(cfg, data, tmp_path / "loc.pt", progress=False)
        weight = next(res.model.parameters())
        assert weight.dtype == torch.float32
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                   and not p.is_contiguous() for p in res.model.parameters())
        assert np.isfinite(res.losses).all()
        loaded = load_model(tmp_path / "loc.pt")
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        res = trainer.train(replace(cfg, iterations=2), data, None, progress=False)
    assert all(p.is_contiguous() for p in res.model.parameters())


def test_checkpoint_resume_continues_the_same_run(rendered, tmp_path):
    from vertebra.models import load_model
    from vertebra.training.checkpoint import load_trained, read_training_checkpoint
    from vertebra.training.trainer import log_path, train

    data = RenderedCache.from_views(rendered)
    cfg = tiny_config("localization", iterations=4, heatmap_fg_weight=5.0)
    straight = train(cfg, data, None, progress=False)
    out = tmp_path / "loc.pt"
    part = train(replace(cfg, iterations=2), data, out, progress=False)
    assert part.iteration == 2
    with pytest.raises(DrrkitError, match="exists"):
        train(cfg, data, out, progress=False)
    with pytest.raises(DrrkitError, match="task"):
        train(replace(cfg, task="identification"), data, out, resume=True, progress=False)
    rest = train(cfg, data, out, resume=True, progress=False)
    assert rest.iteration == 4 and len(rest.losses) == 2
    assert np.allclose(rest.losses, straight.losses[2:], rtol=1e-4, atol=1e-6)
    for (k, a), b in zip(straight.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), k
    ckpt = read_training_checkpoint(out)
    assert ckpt["iteration"] == 4 and ckpt["train_config"]["task"] == "localization"
    assert ckpt["view_config"] == cfg.views.to_dict()
    assert ckpt["labels"][19]["name"] == "T13" and ckpt["code_version"]["drrkit"]
    assert "state" in ckpt["optimizer"]
    model, loaded_cfg = load_trained(out)
    assert loaded_cfg == cfg and not model.training
    assert load_model(out).config["task"] == "localization"
    lines = [json.loads(s) for s in log_path(out).read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4]


# ---------------------------------------------------------------------- CLI
def test_cli_prerender_pretrain_train_and_bad_input(tmp_path):
    from vertebra.cli import app

    runner = CliRunner()
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["prerender", "phantoms:1", str(cache), "--preset", "cpu-demo",
                            "--task", "identification", "--views", "4"])
    assert r.exit_code == 0, r.output
    assert (cache / "cache.json").is_file() and (cache / "phantom0000.npz").is_file()

    enc = tmp_path / "enc.pt"
    r = runner.invoke(app, ["pretrain", str(cache), "--out", str(enc), "--steps", "2",
                            "--batch-size", "2", "--encoder", ENC, "--crop-size", "64",
                            "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert torch.load(enc, weights_only=True)["encoder"] == ENC

    ckpt = tmp_path / "id.pt"
    common = ["--task", "identification", "--preset", "cpu-demo", "--encoder", ENC,
              "--crop-size", "64", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    r = runner.invoke(app, ["train", str(cache), "--out", str(ckpt), "--iterations", "2",
                            "--init", f"simsiam:{enc}", "--no-sequence-loss", *common])
    assert r.exit_code == 0, r.output
    saved = torch.load(ckpt, weights_only=True)
    assert saved["iteration"] == 2 and saved["train_config"]["sequence_loss"] is False
    assert saved["view_config"]["views"] == 4  # the cache's views were recorded
    assert saved["view_config"]["mm_per_pixel"] == 4.0  # the cpu-demo identifier's pixels
    assert saved["view_config"]["bone_gain"] == 8.0  # and its bone-enhanced views
    r = runner.invoke(app, ["train", str(cache), "--out", str(ckpt), "--iterations", "3",
                            "--resume", "--no-sequence-loss", *common])
    assert r.exit_code == 0, r.output
    assert torch.load(ckpt, weights_only=True)["iteration"] == 3

    bad = [
        ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")],
        ["train", "phantoms:0", "--out", str(tmp_path / "x.pt")],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--task", "segment"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--init", "weights.pt"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--init",
         f"simsiam:{tmp_path / 'none.pt'}"],
        ["train", str(cache), "--out", str(ckpt), *common],  # exists, no --resume
        ["train", str(tmp_path), "--out", str(tmp_path / "x.pt")],  # no CTs in folder
        ["pretrain", "phantoms:x", "--out", str(tmp_path / "e.pt")],
        ["prerender", str(cache), str(tmp_path / "c2")],  # already a cache
        ["prerender", "phantoms:1", str(tmp_path / "c3"), "--task", "segment"],
        ["prerender", "phantoms:1", str(tmp_path / "c4"), "--bone-gain", "0.5"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--heatmap-loss", "l1"],
    ]
    for args in bad:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------- validation scores
class _Oracle(torch.nn.Module):
    """Returns the ground truth of one RenderedViews as its output (padded like the input)."""

    def __init__(self, rv, shift_rows=0):
        super().__init__()
        self.heat = torch.from_numpy(np.roll(rv.heatmaps, shift_rows, axis=1))
        ids = torch.from_numpy(rv.id_maps.astype(np.int64))
        self.logits = 10.0 * torch.nn.functional.one_hot(ids, 27).permute(0, 3, 1, 2).float()

    def forward(self, x):
        from vertebra.models import UNetOutput

        h, w = self.heat.shape[1:]
        pad = (0, x.shape[-1] - w, 0, x.shape[-2] - h)
        return UNetOutput(torch.nn.functional.pad(self.heat, pad)[:, None],
                          torch.nn.functional.pad(self.logits, pad))


def test_confusion_of_a_network_one_level_low(rendered):
    from vertebra.training.validate import identification_scores

    rv = rendered[0]
    oracle = _Oracle(rv)
    ids = torch.from_numpy(rv.id_maps.astype(np.int64))
    low = torch.where(ids > 0, (ids + 1).clamp(max=26), ids)  # every square called the next level
    oracle.logits = 10.0 * torch.nn.functional.one_hot(low, 27).permute(0, 3, 1, 2).float()
    conf = identification_scores(oracle, [rv], batch_size=len(rv))["confusion"]
    classes = np.unique(rv.id_maps[rv.id_maps > 0])
    assert np.trace(conf) == 0 and conf.sum() == rv.visible.sum()
    for c in classes:  # row = true class, column = predicted
        assert conf[c].sum() == conf[c, min(c + 1, 26)] > 0


def test_validation_scores_of_an_oracle(rendered):
    from vertebra.training.validate import identification_scores, localization_scores

    rv = rendered[0]
    ident = identification_scores(_Oracle(rv), [rv], batch_size=len(rv))
    assert ident["pixel_accuracy"] == ident["square_accuracy"] == 1.0
    assert ident["sequence_accuracy"] == 1.0 and ident["squares"] == rv.visible.sum()
    conf = ident["confusion"]
    assert conf.shape == (27, 27) and conf.sum() == ident["squares"]
    assert np.count_nonzero(conf - np.diag(np.diag(conf))) == 0
    assert set(np.flatnonzero(np.diag(conf))) == set(np.unique(rv.id_maps[rv.id_maps > 0]))
    loc = localization_scores(_Oracle(rv), [rv], batch_size=len(rv))
    assert loc["detection_rate"] == 1.0 and loc["false_positives_per_view"] == 0.0
    assert loc["median_error_mm"] < 0.5  # peak extraction on exact Gaussians, 4 mm pixels
    off = localization_scores(_Oracle(rv, shift_rows=1), [rv], batch_size=len(rv))
    assert off["median_error_mm"] == pytest.approx(float(rv.pixel_mm[:, 1].mean()), rel=0.05)
