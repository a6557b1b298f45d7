"""Oracle tests of the labelling pipeline: the networks are replaced by maps made from the
phantom's ground truth with vertebra.targets (plus noise and deliberate faults), so these
tests check the geometry and the fusion (peaks, correspondence, triangulation, squares,
voting, correction) independently of any learning."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import drrkit
from drrkit.errors import DrrkitError
from vertebra import labels as vl
from vertebra.data.phantom import make_spine_phantom
from vertebra.errors import VertebraError
from vertebra.pipeline import (
    NO_SPINE,
    MirroredNetwork,
    PipelineConfig,
    extend_ends,
    label_ct,
    square_means,
)
from vertebra.report import write_outputs
from vertebra.targets import make_targets
from vertebra.views import ViewConfig

VIEWS = ViewConfig(views=10, mm_per_pixel=2.0)


def mu(phantom):
    return phantom.ct.with_data(drrkit.hu_to_mu(phantom.ct.data))


def one_hot(id_maps):
    return np.eye(vl.NUM_CLASSES, dtype=np.float32)[id_maps].transpose(0, 3, 1, 2).copy()


def oracle(volume, centroids, views=VIEWS, *, heat_noise=0.0, prob_noise=0.0, seed=0,
           heat_centroids=None):
    """Localizer and identifier callables returning target maps of the ground truth."""
    geometry = views.geometry(volume)
    targets = make_targets(centroids, geometry, volume)
    heat_targets = targets if heat_centroids is None else make_targets(
        heat_centroids, geometry, volume)
    rng = np.random.default_rng(seed)
    heat = heat_targets.heatmaps + heat_noise * rng.standard_normal(
        targets.heatmaps.shape).astype(np.float32)
    probs = one_hot(targets.id_maps)
    if prob_noise:
        noise = rng.dirichlet(np.full(vl.NUM_CLASSES, 0.5),
                              size=probs.shape[:1] + probs.shape[2:]).astype(np.float32)
        probs = (1 - prob_noise) * probs + prob_noise * noise.transpose(0, 3, 1, 2)
    return heat, probs, targets


def run(volume, heat, probs, config=None, views=VIEWS):
    return label_ct(volume, lambda x: heat, lambda x: probs, views=views, config=config,
                    backend="cpu")


def check(result, centroids, tol_mm=1.0):
    got = result.centroids()
    assert list(got) == list(centroids), ([vl.name_of(i) for i in got],
                                          [vl.name_of(i) for i in centroids])
    err = [np.linalg.norm(got[k] - centroids[k]) for k in centroids]
    assert max(err) < tol_mm, err


@pytest.fixture(scope="module")
def thoracic():
    ph = make_spine_phantom(0, size="small")  # T1..T6
    assert len(ph.centroids) >= 5
    return ph


@pytest.fixture(scope="module")
def thoracic_maps(thoracic):
    vol = mu(thoracic)
    return vol, oracle(vol, thoracic.centroids)


def test_localizer_views_change_only_the_localizers_orbit(thoracic, thoracic_maps):
    """``localizer_views=20``: the localizer gets 20 views, the identifier its own 10."""
    vol, (_, probs, _) = thoracic_maps
    heat, _, _ = oracle(vol, thoracic.centroids, ViewConfig(views=20, mm_per_pixel=2.0))
    r = run(vol, heat, probs, PipelineConfig(localizer_views=20))
    check(r, thoracic.centroids, tol_mm=0.5)
    assert r.n_views.max() == 20
    for bad in (1, 2.5):
        with pytest.raises(DrrkitError, match="localizer_views"):
            PipelineConfig(localizer_views=bad)


def test_exact_maps_give_exact_centroids_and_labels(thoracic, thoracic_maps):
    vol, (heat, probs, _) = thoracic_maps
    r = run(vol, heat, probs)
    assert r.status == "ok"
    check(r, thoracic.centroids, tol_mm=0.5)
    assert set(r.timings) == {"render", "localize", "peaks", "match", "identify", "vote",
                              "correct"}
    assert r.inputs.shape == r.heatmaps.shape == r.geometry.shape
    assert all(v.n_views >= 9 and v.confidence > 0.8 for v in r.vertebrae)
    np.testing.assert_allclose(r.weights.sum(), 1.0)


def test_noisy_maps(thoracic):
    vol = mu(thoracic)
    heat, probs, _ = oracle(vol, thoracic.centroids, heat_noise=0.08, prob_noise=0.5, seed=3)
    r = run(vol, heat, probs)
    check(r, thoracic.centroids, tol_mm=1.5)


def test_a_view_without_detections_and_a_spurious_peak(thoracic, thoracic_maps):
    vol, (heat, probs, _) = thoracic_maps
    heat = heat.copy()
    heat[3] = 0.0  # view 3 sees nothing
    _, h, w = heat.shape
    rr, cc = np.mgrid[:h, :w]
    heat[6] = np.maximum(heat[6], np.exp(-((rr - 10) ** 2 + (cc - 12) ** 2) / 4.0))  # stray
    r = run(vol, heat, probs)
    assert len(r.detections[3]) == 0
    assert len(r.detections[6]) == len(thoracic.centroids) + 1
    check(r, thoracic.centroids)
    assert all(v.n_views == 9 for v in r.vertebrae)


def test_heatmap_refinement_undoes_lopsided_peaks(thoracic, thoracic_maps):
    """Every blob gets a weaker shoulder 8 mm below it: the 2-D cluster means (and the
    least-squares points) are pulled down, the heatmaps' maxima stay on the vertebrae."""
    vol, (heat, probs, _) = thoracic_maps
    below = {k: c - np.array([0.0, 0.0, 8.0]) for k, c in thoracic.centroids.items()}
    shoulder = make_targets(below, VIEWS.geometry(vol), vol).heatmaps * 0.6
    heat = np.maximum(heat, shoulder)
    plain = run(vol, heat, probs, PipelineConfig(refine_mm=None))
    refined = run(vol, heat, probs)
    check(plain, thoracic.centroids, tol_mm=5.0)
    errors = [np.linalg.norm(plain.centroids()[k] - c) for k, c in thoracic.centroids.items()]
    assert min(errors) > 1.0  # the shoulder does pull the plain points
    check(refined, thoracic.centroids, tol_mm=0.5)


def test_a_second_track_at_a_vertebra_level_is_dropped(thoracic, thoracic_maps):
    """A consistent 3-D structure 25 mm beside a vertebra, seen in 6 of the 10 views."""
    vol, (heat, probs, _) = thoracic_maps
    key = list(thoracic.centroids)[2]
    fake = {key: thoracic.centroids[key] + np.array([25.0, 0.0, 1.0])}
    blobs = make_targets(fake, VIEWS.geometry(vol), vol).heatmaps * 0.7
    heat = heat.copy()
    seen = [0, 1, 4, 5, 6, 9]  # the views where it lies 20 mm or more from the vertebra
    heat[seen] = np.maximum(heat[seen], blobs[seen])
    r = run(vol, heat, probs)
    check(r, thoracic.centroids)
    assert len(r.correspondence.points) == len(thoracic.centroids) + 1  # found, then dropped
    kept_all = run(vol, heat, probs, PipelineConfig(min_separation_mm=0))
    assert len(kept_all.points) == len(thoracic.centroids) + 1
    assert list(kept_all.centroids()) != list(thoracic.centroids)  # kept, it shifts labels


def test_wrong_label_views_are_outvoted_and_scrambled_views_downweighted(thoracic,
                                                                         thoracic_maps):
    vol, (heat, probs, targets) = thoracic_maps
    probs = probs.copy()
    ids = targets.id_maps
    # view 2: every vertebra one class too low (a consistent but wrong sequence)
    probs[2] = one_hot(np.where(ids[2] > 1, ids[2] - 1, ids[2])[None])[0]
    # view 5: classes scrambled (not a sequence at all)
    rng = np.random.default_rng(1)
    perm = np.concatenate([[0], rng.permutation(np.arange(1, vl.NUM_CLASSES))])
    probs[5] = one_hot(perm[ids[5]][None])[0]
    r = run(vol, heat, probs)
    check(r, thoracic.centroids)
    others = np.delete(r.weights, [2, 5])
    assert r.weights[5] < 0.5 * others.min()
    # with plain averaging the scrambled view weighs as much as the others
    mean = run(vol, heat, probs, PipelineConfig(voting="mean"))
    np.testing.assert_allclose(mean.weights, 0.1)


@pytest.mark.parametrize("transitional, levels", [("t13", ("T11", "L2")),
                                                  ("l6", ("L2", "L6"))])
@pytest.mark.filterwarnings("ignore:labels uncertain")  # T13 labels are less sure
def test_transitional_spines(transitional, levels):
    ph = make_spine_phantom(5, size="small", levels=levels, transitional=transitional)
    assert ph.transitional == transitional
    vol = mu(ph)
    heat, probs, _ = oracle(vol, ph.centroids, heat_noise=0.03, prob_noise=0.3)
    r = run(vol, heat, probs)
    check(r, ph.centroids)
    if transitional == "t13":
        assert r.correction.t13 and 28 in r.centroids()
        paper = run(vol, heat, probs, PipelineConfig(correction="paper"))
        assert list(paper.centroids()) != list(ph.centroids)  # the paper's rule cannot
    else:
        assert 25 in r.centroids()


def test_a_missed_vertebra_leaves_the_others_right(thoracic):
    vol = mu(thoracic)
    missing = list(thoracic.centroids)[2]
    seen = {k: v for k, v in thoracic.centroids.items() if k != missing}
    heat, probs, _ = oracle(vol, thoracic.centroids, heat_centroids=seen)
    r = run(vol, heat, probs)
    check(r, seen)
    no_fill = run(vol, heat, probs, PipelineConfig(fill_gaps=False))
    assert missing in no_fill.centroids()  # without the gap rows the labels shift


def test_the_chain_adds_a_vertebra_missed_in_the_middle(thoracic, tmp_path):
    """The third vertebra's heatmap peaks at 0.6, below the detection threshold: matching
    leaves a gap there; the chain placement adds a track at its heatmap, labelled."""
    vol = mu(thoracic)
    keys = list(thoracic.centroids)
    weak = keys[2]
    strong = {k: v for k, v in thoracic.centroids.items() if k != weak}
    heat, probs, _ = oracle(vol, thoracic.centroids, heat_centroids=strong)
    weak_heat = make_targets({weak: thoracic.centroids[weak]}, VIEWS.geometry(vol), vol)
    heat = np.maximum(heat, 0.6 * weak_heat.heatmaps)
    config = PipelineConfig(peak_threshold=0.7)
    check(run(vol, heat, probs, config), strong)
    r = run(vol, heat, probs, dataclasses.replace(config, chain_weight=3.0))
    check(r, thoracic.centroids, tol_mm=2.0)
    assert r.added.tolist() == [k == weak for k in keys]
    assert r.n_views[r.added].tolist() == [0]
    write_outputs(r, vol, tmp_path, "ct", pictures=False)  # NaN-free files, marked added
    rows = json.loads((tmp_path / "ct_label.json").read_text())["vertebrae"]
    assert [(v["added"], v["rms_mm"] is None) for v in rows] == [(k == weak,) * 2 for k in keys]
    csv_rows = (tmp_path / "ct_centroids.csv").read_text().splitlines()[1:]
    assert [row.endswith(",") for row in csv_rows] == [k == weak for k in keys]
    for bad in ({"chain_weight": -1.0}, {"chain_plateau": 0.0}, {"chain_cost": np.nan}):
        with pytest.raises(DrrkitError, match="chain_"):
            PipelineConfig(**bad)


def test_an_added_vertebra_is_kept_against_a_shifted_reading(thoracic):
    """The chain placement adds the weak third vertebra, whose square the identifier
    reads as nothing, and the identifier reads the two above it a level low (as real
    identifiers read the top of a chest with the shoulder girdle in view). Dropping the
    added track would let those two read consecutively with the rest across the reopened
    gap; kept, it holds the gap and the majority's labels stand. With ``drop_added`` the
    correction drops it and the top two take the low labels."""
    vol = mu(thoracic)
    keys = list(thoracic.centroids)
    c = thoracic.centroids
    weak = keys[2]
    strong = {k: v for k, v in c.items() if k != weak}
    geometry = VIEWS.geometry(vol)
    heat, _, _ = oracle(vol, c, heat_centroids=strong)
    heat = np.maximum(heat, 0.6 * make_targets({weak: c[weak]}, geometry, vol).heatmaps)
    read = {keys[1]: c[keys[0]], keys[2]: c[keys[1]], **{k: c[k] for k in keys[3:]}}
    probs = one_hot(make_targets(read, geometry, vol).id_maps)
    config = PipelineConfig(peak_threshold=0.7, chain_weight=3.0)
    r = run(vol, heat, probs, config)
    check(r, c, tol_mm=2.0)
    assert r.added.tolist() == [k == weak for k in keys] and not r.dropped.any()
    dropping = run(vol, heat, probs, dataclasses.replace(config, drop_added=True))
    assert dropping.dropped.tolist() == [k == weak for k in keys]
    assert list(dropping.centroids()) == [keys[1], keys[2], *keys[3:]]


@pytest.mark.parametrize("end", [0, -1])
def test_a_weak_vertebra_at_either_end_is_added(thoracic, end):
    """The vertebra at one end gives a heatmap peak of 0.3, below the 0.4 threshold (as
    vertebrae cut by the scan's edge do); a weak blob beside the spine is not added."""
    vol = mu(thoracic)
    keys = list(thoracic.centroids)
    weak = keys[end]
    strong = {k: v for k, v in thoracic.centroids.items() if k != weak}
    geometry = VIEWS.geometry(vol)
    heat, probs, _ = oracle(vol, thoracic.centroids, heat_centroids=strong)
    beside = {keys[2]: thoracic.centroids[keys[2]] + np.array([30.0, 0.0, 0.0])}
    for extra in ({weak: thoracic.centroids[weak]}, beside):
        heat = np.maximum(heat, 0.3 * make_targets(extra, geometry, vol).heatmaps)
    r = run(vol, heat, probs)
    check(r, thoracic.centroids)
    assert r.extended.tolist() == [k == weak for k in keys]
    assert r.kept[r.extended].tolist() == [-1]
    check(run(vol, heat, probs, PipelineConfig(extend_threshold=None)), strong)


def test_a_weak_track_the_identifier_disowns_is_dropped(thoracic):
    """The bottom vertebra gives a weak peak, so the end extension adds it, but the
    identifier calls it L3 (not the T6 its place calls for): it is dropped."""
    vol = mu(thoracic)
    keys = list(thoracic.centroids)
    bottom = thoracic.centroids[keys[-1]]
    rest = {k: v for k, v in thoracic.centroids.items() if k != keys[-1]}
    geometry = VIEWS.geometry(vol)
    heat, _, _ = oracle(vol, thoracic.centroids, heat_centroids=rest)
    heat = np.maximum(heat, 0.3 * make_targets({22: bottom}, geometry, vol).heatmaps)
    probs = one_hot(make_targets({**rest, 22: bottom}, geometry, vol).id_maps)
    r = run(vol, heat, probs)
    check(r, rest)
    assert r.extended.tolist() == r.dropped.tolist() == [False] * len(rest) + [True]
    kept = run(vol, heat, probs, PipelineConfig(max_drops=0))
    assert 22 not in kept.centroids() and len(kept.vertebrae) == len(keys)


def _chain(n, spacing, bend):
    """(n, 3) points spaced ``spacing`` mm on a curve bending ``bend`` rad per step."""
    angles = bend * np.arange(n)
    steps = spacing * np.stack([np.sin(angles), 0.3 * np.sin(angles), -np.cos(angles)], 1)
    steps *= spacing / np.linalg.norm(steps, axis=1, keepdims=True)
    return np.cumsum(steps, axis=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(6, 12), spacing=st.floats(12, 40), bend=st.floats(-0.1, 0.1),
       cut=st.integers(2, 4), seed=st.integers(0, 2**16))
@example(n=8, spacing=12.0, bend=0.09375, cut=3, seed=1714)  # the old clutter lay on the path
def test_extend_ends_recovers_the_continuation(n, spacing, bend, cut, seed):
    """A chain with its ``cut`` first and last points removed gets them back, in order,
    from candidates jittered by up to 0.1 spacing; clutter half a spacing or more to the
    side of the chain is never added."""
    rng = np.random.default_rng(seed)
    full = _chain(n + 2 * cut, spacing, bend)
    jitter = rng.uniform(-1, 1, (2 * cut, 3)) * 0.1 * spacing / np.sqrt(3)
    ends = np.concatenate([full[:cut], full[-cut:]]) + jitter
    # clutter 0.6 spacing sideways of chain points (across the chain's direction there,
    # so never on the continuation of a bending chain)
    at = rng.integers(0, len(full) - 1, 5)
    across = np.cross(full[at + 1] - full[at], [0.0, 1.0, 0.0])
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    clutter = full[at] + 0.6 * spacing * across * rng.choice([-1, 1], (5, 1))
    cands = np.concatenate([clutter, ends])
    order = rng.permutation(len(cands))
    above, below = extend_ends(full[cut:-cut], cands[order])
    np.testing.assert_array_equal(order[above], 5 + np.arange(cut)[::-1])
    np.testing.assert_array_equal(order[below], 5 + cut + np.arange(cut))


def test_separation_is_measured_along_the_spine():
    """A spine leaning 70 degrees (vertebrae 20 mm apart, under 7 mm apart in z) keeps
    every vertebra; a point 25 mm beside one at its level, and a second detection 3 mm
    from another, are dropped (both seen in fewer views)."""
    from vertebra.pipeline import _separated

    lean = np.deg2rad(70.0)
    spine = np.outer(np.arange(6) * 20.0, [0.0, -np.sin(lean), np.cos(lean)])
    assert np.diff(spine[:, 2]).max() < 7.0
    views = np.full(6, 10)
    np.testing.assert_array_equal(_separated(spine, views, np.ones(6), 8.0), np.arange(6))
    extra = np.vstack([spine, spine[2] + [25.0, 0, 0], spine[4] + [1.0, 2.0, 2.0]])
    kept = _separated(extra, np.r_[views, 6, 7], np.ones(8), 8.0)
    np.testing.assert_array_equal(kept, np.arange(6))
    assert len(_separated(extra, np.r_[views, 6, 7], np.ones(8), 0.0)) == 8


def test_a_steeply_leaning_spine_keeps_every_vertebra():
    """A spine leaning 50-70 degrees forward at C7-T2 (``max_t1_lean=50``; C7 and T1 under
    7 mm apart in world z): exact maps give every vertebra and its label. Where C7 and T1
    overlap in a frontal view one of them goes undetected there, and their squares mix
    labels, so views and confidence are lower there than on an upright spine."""
    ph = make_spine_phantom(0, size="small", max_t1_lean=50)
    c7, t1 = ph.centroids[7], ph.centroids[8]
    # closer in z than min_separation_mm: a height rule would drop one of them
    assert abs(c7[2] - t1[2]) < PipelineConfig().min_separation_mm < np.linalg.norm(c7 - t1)
    vol = mu(ph)
    heat, probs, _ = oracle(vol, ph.centroids)
    r = run(vol, heat, probs)
    check(r, ph.centroids, tol_mm=0.5)
    assert r.n_views.min() >= 8 and r.confidence.min() > 0.7


def test_extend_ends_edge_cases():
    chain = np.array([[0, 0, 30.0], [0, 0, 0]])
    empty = np.zeros((0, 3))
    for c in (chain[:1], empty):
        a, b = extend_ends(c, np.array([[0, 0, 60.0]]))
        assert len(a) == len(b) == 0
    a, b = extend_ends(chain, empty)
    assert len(a) == len(b) == 0
    a, b = extend_ends(chain, np.array([[0, 0, 60 + 12.1], [0, 0, -30 - 11.9]]))
    assert a.tolist() == [] and b.tolist() == [1]  # 0.4 x 30 mm = 12 mm


def test_one_vertebra_visible(thoracic):
    vol = mu(thoracic)
    key = list(thoracic.centroids)[3]
    single = {key: thoracic.centroids[key]}
    heat, probs, _ = oracle(vol, single, prob_noise=0.2)
    r = run(vol, heat, probs)
    check(r, single)
    assert 0 < r.vertebrae[0].confidence <= 1


def test_partial_field_of_view():
    ph = make_spine_phantom(2, size="small")  # L3-L5 with the sacrum cut
    vol = mu(ph)
    heat, probs, _ = oracle(vol, ph.centroids, heat_noise=0.03)
    check(run(vol, heat, probs), ph.centroids)


def test_no_spine_says_so(thoracic, thoracic_maps):
    vol, (heat, probs, _) = thoracic_maps
    with pytest.warns(UserWarning, match="no spine found"):
        r = run(vol, np.zeros_like(heat), probs)
    assert r.status == NO_SPINE and r.centroids() == {} and len(r.points) == 0


def test_views_independent_of_k(thoracic):
    vol = mu(thoracic)
    views = ViewConfig(views=4, mm_per_pixel=2.0)
    heat, probs, _ = oracle(vol, thoracic.centroids, views)
    check(run(vol, heat, probs, views=views), thoracic.centroids)


def test_bad_network_outputs_raise(thoracic, thoracic_maps):
    vol, (heat, probs, _) = thoracic_maps
    with pytest.raises(DrrkitError, match="localizer"):
        run(vol, heat[:, :-1], probs)
    with pytest.raises(DrrkitError, match="identifier"):
        run(vol, heat, probs[:, :5])
    with pytest.raises(DrrkitError):
        PipelineConfig(voting="max")


def test_mirrored_network_closed_form():
    """A network that weighs columns by a ramp: the mirrored mean weighs them by the mean
    of the ramp and its mirror."""
    x = np.random.default_rng(0).random((3, 4, 6)).astype(np.float32)
    ramp = np.arange(6, dtype=np.float32)
    got = MirroredNetwork(lambda v: v * ramp)(x)
    np.testing.assert_allclose(got, x * 2.5, rtol=1e-6)  # (ramp + ramp[::-1]) / 2 = 2.5
    probs = MirroredNetwork(lambda v: np.stack([v, 1 - v], axis=1) * ramp)(x)
    assert probs.shape == (3, 2, 4, 6)
    with pytest.raises(DrrkitError, match="mirrored"):
        MirroredNetwork(lambda v: v if v[0, 0, 0] == x[0, 0, 0] else v[..., 1:])(x)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**16))
def test_mirroring_keeps_an_equivariant_network_and_is_idempotent(k, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((k, h, w)).astype(np.float32)
    weights = rng.random(w).astype(np.float32)

    def blur(v):  # a left-right symmetric filter: mirroring commutes with it
        padded = np.pad(v, ((0, 0), (0, 0), (1, 1)), mode="edge")
        return 0.25 * padded[..., :-2] + 0.5 * v + 0.25 * padded[..., 2:]

    np.testing.assert_allclose(MirroredNetwork(blur)(x), blur(x), rtol=1e-5, atol=1e-6)
    once = MirroredNetwork(lambda v: v * weights)
    np.testing.assert_allclose(MirroredNetwork(once)(x), once(x), rtol=1e-5, atol=1e-6)


def test_mirror_runs_each_network_on_both_views(thoracic, thoracic_maps):
    """With ``mirror``, each network gets the views and their mirror; networks that mirror
    their maps with the views label exactly as without."""
    vol, (heat, probs, _) = thoracic_maps
    seen = {"localizer": [], "identifier": []}

    def equivariant(name, maps):
        def network(x):
            seen[name].append(x)
            return maps if len(seen[name]) % 2 else maps[..., ::-1]
        return network

    r = label_ct(vol, equivariant("localizer", heat), equivariant("identifier", probs),
                 views=VIEWS, config=PipelineConfig(mirror=True), backend="cpu")
    check(r, thoracic.centroids, tol_mm=0.5)
    for first, second in seen.values():
        np.testing.assert_array_equal(second, first[..., ::-1])
    with pytest.raises(DrrkitError, match="mirror"):
        PipelineConfig(mirror="yes")


def test_square_means_exact():
    probs = np.zeros((1, 2, 10, 10), np.float32)
    probs[0, 1, 2:5, 3:6] = 1.0  # a 3x3 block
    probs[0, 0] = 1.0 - probs[0, 1]
    pixels = np.array([[[4.0, 3.0], [-50.0, 3.0], [np.nan, np.nan], [0.0, 0.0]]])
    means, covered = square_means(probs, pixels, np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(means[0, 0], [0.0, 1.0])
    assert covered[0].tolist() == [True, False, False, True]
    np.testing.assert_allclose(means[0, 3], [1.0, 0.0])  # the corner: 2x2 pixels on it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        square_means(probs, pixels[:, :0], np.array([[1.0, 1.0]]))


@pytest.mark.parametrize("loc_gain, id_gain", [(6.0, 6.0), (1.0, 6.0), (6.0, 1.0)])
def test_each_network_sees_its_own_bone_enhancement(thoracic, thoracic_maps, loc_gain,
                                                    id_gain):
    """The CT is enhanced once when both views share the setting, never mixed up."""
    vol, (heat, _, _) = thoracic_maps
    fine = dataclasses.replace(VIEWS, bone_gain=loc_gain)
    coarse = ViewConfig(views=6, mm_per_pixel=4.0, bone_gain=id_gain)
    _, probs_c, _ = oracle(vol, thoracic.centroids, views=coarse)
    seen = {}

    def localizer(x):
        seen["loc"] = x
        return heat

    def identifier(x):
        seen["id"] = x
        return probs_c

    r = label_ct(vol, localizer, identifier, views=fine, identifier_views=coarse,
                 backend="cpu")
    check(r, thoracic.centroids, tol_mm=0.5)
    for key, config in (("loc", fine), ("id", coarse)):
        np.testing.assert_allclose(seen[key], config.render(vol, config.geometry(vol),
                                                             backend="cpu"), rtol=1e-6)


def test_identifier_on_its_own_coarser_views(thoracic, thoracic_maps):
    """The identifier sees 6 views at 4 mm; the centroids are re-projected into them."""
    vol, (heat, _, _) = thoracic_maps
    coarse = ViewConfig(views=6, mm_per_pixel=4.0)
    _, probs_c, _ = oracle(vol, thoracic.centroids, views=coarse)
    seen = []

    def identifier(x):
        seen.append(x.shape)
        return probs_c

    r = label_ct(vol, lambda x: heat, identifier, views=VIEWS, identifier_views=coarse,
                 backend="cpu")
    check(r, thoracic.centroids, tol_mm=0.5)
    assert seen == [coarse.geometry(vol).shape]
    assert r.view_probs.shape[0] == r.weights.shape[0] == 6
    # the fine views' maps given as coarse ones do not fit: a clear error
    with pytest.raises(DrrkitError, match="identifier"):
        label_ct(vol, lambda x: heat, lambda x: thoracic_maps[1][1], views=VIEWS,
                 identifier_views=coarse, backend="cpu")


def test_labels_an_identifier_does_not_recognise_are_flagged_uncertain(thoracic,
                                                                       thoracic_maps):
    from vertebra.pipeline import UNCERTAIN_CONFIDENCE
    from vertebra.report import result_summary

    vol, (heat, probs, _) = thoracic_maps
    sure = run(vol, heat, probs)
    assert not sure.uncertain and sure.median_confidence > 0.8
    assert result_summary(sure)["uncertain"] is False
    # every foreground pixel equally likely to be any vertebra: the vertebrae are still
    # found, but their labels are a guess, and the result says so
    flat = probs.copy()
    fg = probs[:, 1:].sum(axis=1, keepdims=True)
    flat[:, 1:] = fg / (flat.shape[1] - 1)
    with pytest.warns(UserWarning, match="labels uncertain"):
        guess = run(vol, heat, flat)
    assert guess.status == "ok" and len(guess.vertebrae) >= 5
    assert guess.uncertain and guess.median_confidence < UNCERTAIN_CONFIDENCE
    summary = result_summary(guess)
    assert summary["uncertain"] is True
    assert summary["median_confidence"] == pytest.approx(guess.median_confidence, abs=1e-4)
    empty = dataclasses.replace(guess, vertebrae=())
    assert not empty.uncertain and np.isnan(empty.median_confidence)


def test_a_run_without_a_landmark_is_warned_about(thoracic, thoracic_maps):
    """T1-T6 (no C7 above T1: the first rib is not seen as the first) holds no landmark to
    count from and says so; T11-L2 holds the last rib and does not warn."""
    from vertebra.report import result_summary

    vol, (heat, probs, _) = thoracic_maps
    with pytest.warns(UserWarning, match="no landmark in view"):
        short = run(vol, heat, probs)
    assert short.landmarks == () and result_summary(short)["landmarks"] == []
    ph = make_spine_phantom(1, levels=("T11", "L2"), size="small")
    lumbar = mu(ph)
    heat, probs, _ = oracle(lumbar, ph.centroids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run(lumbar, heat, probs)
    check(r, ph.centroids)
    assert r.landmarks == ("last rib",) and result_summary(r)["landmarks"] == ["last rib"]
    assert not any("landmark" in str(w.message) for w in caught)


def test_a_ct_not_in_hu_is_warned_about(thoracic_maps):
    """Closed cases: the phantom read from HU passes; the same CT stored without its
    rescale intercept (HU + 1024) has nothing as dark as fat; with every voxel above
    100 HU set to 100 it has no bone; label_ct warns about either and still labels."""
    from drrkit.volume import MU_WATER, hu_to_mu
    from vertebra.pipeline import hu_scale_problem

    vol, (heat, probs, _) = thoracic_maps
    assert hu_scale_problem(vol) is None
    hu = (np.asarray(vol.data, dtype=np.float64) / MU_WATER - 1.0) * 1000.0
    shifted = vol.with_data(hu_to_mu(hu + 1024.0))
    assert "is the CT in HU" in hu_scale_problem(shifted)
    boneless = vol.with_data(hu_to_mu(np.minimum(hu, 100.0)))
    assert "no bone" in hu_scale_problem(boneless)
    with pytest.warns(UserWarning, match="is the CT in HU"):
        result = run(shifted, heat, probs)
    assert result.status == "ok"


def test_thick_slices_are_warned_about(thoracic, thoracic_maps):
    """Slices more than THICK_SLICE_WARN_MM apart along world z warn (whatever index axis
    holds them); the same CT with thinner slices does not."""
    import warnings

    from vertebra.pipeline import THICK_SLICE_WARN_MM, slice_spacing

    vol, (heat, probs, _) = thoracic_maps
    assert slice_spacing(vol) <= THICK_SLICE_WARN_MM
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        # T1-T6 holds no landmark, which is warned about too; nothing else is
        warnings.filterwarnings("ignore", "no landmark in view")
        run(vol, heat, probs)
    spacing = np.array(vol.spacing, dtype=np.float64)
    along = vol.slice_axis
    spacing[along] = THICK_SLICE_WARN_MM + 1.0
    thick = dataclasses.replace(vol, spacing=spacing)
    assert slice_spacing(thick) == THICK_SLICE_WARN_MM + 1.0
    def nothing(inputs):  # a localizer that finds nothing (its own shape for any CT)
        return np.zeros_like(inputs)

    def background(inputs):
        out = np.zeros((inputs.shape[0], 27, *inputs.shape[1:]), np.float32)
        out[:, 0] = 1.0
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label_ct(thick, nothing, background, views=VIEWS)
    said = [str(w.message) for w in caught]
    assert any(m.startswith("slices 5.0 mm apart") for m in said), said


def test_a_cut_scan_is_rendered_in_a_completed_trunk():
    """With ``complete_body``, a scan whose 100 mm field of view the body fills is
    rendered inside the completed trunk (the maps the networks see are of its views) and
    labelled exactly, its points in the scan's own box; a whole trunk, or the option
    off, renders the scan itself."""
    from drrkit.completion import complete_body, needs_completion

    ph = make_spine_phantom(0, size="small", fov=100.0)
    vol = mu(ph)
    assert needs_completion(vol)
    completed = complete_body(vol)
    heat, probs, _ = oracle(completed, ph.centroids)
    r = run(vol, heat, probs, config=PipelineConfig(complete_body=True))
    assert r.completed
    assert r.geometry.shape == VIEWS.geometry(completed).shape != VIEWS.geometry(vol).shape
    np.testing.assert_allclose(r.inputs, VIEWS.render(completed, VIEWS.geometry(completed),
                                                      backend="cpu"))
    check(r, ph.centroids)
    heat, probs, _ = oracle(vol, ph.centroids)
    off = run(vol, heat, probs)
    assert not off.completed
    check(off, ph.centroids)
    with pytest.raises(DrrkitError, match="complete_body must be true or false"):
        PipelineConfig(complete_body="yes")


def test_dense_contrast_is_rendered_as_soft_tissue(thoracic, thoracic_maps):
    """With ``dense_hu``, a 2500 HU vein beside the spine is left out of both networks'
    views (the inputs are those of the CT without it) and the labels stay exact; a CT with
    nothing that dense renders as it is."""
    from drrkit.dense import suppress_dense

    vol, (heat, probs, _) = thoracic_maps
    hu = thoracic.ct.data.copy()
    zyx = np.indices(hu.shape).reshape(3, -1).T
    world = vol.voxel_to_world(zyx[:, ::-1]).reshape(hu.shape + (3,))
    top = next(iter(thoracic.centroids.values()))
    # a vein 4 mm across running along the spine, 20 mm left of it and 30 mm in front
    hu[np.hypot(world[..., 0] - top[0] - 20.0, world[..., 1] - top[1] + 30.0) < 2.0] = 2500.0
    veined = vol.with_data(drrkit.hu_to_mu(hu))
    r = run(veined, heat, probs, config=PipelineConfig(dense_hu=1600.0))
    assert r.suppressed and not r.completed
    clean = suppress_dense(veined, 1600.0)
    assert not np.array_equal(clean.data, veined.data)
    np.testing.assert_allclose(r.inputs, VIEWS.render(clean, VIEWS.geometry(clean),
                                                      backend="cpu"))
    check(r, thoracic.centroids)
    plain = run(vol, heat, probs, config=PipelineConfig(dense_hu=1600.0))
    assert not plain.suppressed
    np.testing.assert_array_equal(plain.inputs, run(vol, heat, probs).inputs)
    with pytest.raises(VertebraError, match="dense_hu"):
        PipelineConfig(dense_hu=500.0)
