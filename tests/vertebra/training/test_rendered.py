"""Prerendered views: targets, the npz round trip, caches and their reuse rules."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from drrkit.errors import DrrkitError
from vertebra import labels as L
from vertebra.training.rendered import RenderedCache, RenderedViews
from vertebra.training.sources import PhantomSource
from vertebra.views import ViewConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


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
