"""The sacrum anchor: an identifier class on the first sacral body that fixes the lowest
lumbar label (targets, training losses and scores, label correction, pipeline)."""

import numpy as np
import pytest
import torch

import drrkit
from drrkit.errors import DrrkitError
from vertebra import labels as vl
from vertebra.correction import ABOVE_SACRUM, correct_labels, correct_tracks
from vertebra.data.phantom import make_spine_phantom
from vertebra.pipeline import PipelineConfig, label_ct
from vertebra.sequence import SequenceDP
from vertebra.targets import make_targets
from vertebra.training.losses import identification_loss, sequence_term
from vertebra.training.rendered import render_views
from vertebra.training.sources import PhantomSource, crop_z
from vertebra.views import ViewConfig

VIEWS = ViewConfig(views=10, mm_per_pixel=2.0)
C = len(vl.VERTEBRAE)
L5, L6 = vl.by_name("L5").class_index, vl.by_name("L6").class_index


def rows_of(names):
    p = np.zeros((len(names), C))
    for i, name in enumerate(names):
        p[i, vl.by_name(name).class_index - 1] = 1.0
    return p


@pytest.fixture(scope="module")
def lumbar():
    """L3-L5 with the first sacral body inside the CT (seed 2, small)."""
    ph = make_spine_phantom(2, size="small")
    s1 = np.asarray(ph.anatomy.sacrum_centres[0], dtype=np.float64)
    index = ph.ct.world_to_voxel(s1)
    assert ph.levels == ("L3", "L4", "L5")
    assert np.all((index >= 0) & (index <= np.asarray(ph.ct.shape_xyz) - 1))
    return ph, ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data)), s1


# ---------------------------------------------------------------------- targets
def test_the_sacrum_square_is_drawn_in_the_id_maps_only(lumbar):
    ph, vol, s1 = lumbar
    geometry = VIEWS.geometry(vol)
    plain = make_targets(ph.centroids, geometry, vol)
    anchored = make_targets(ph.centroids, geometry, vol, anchors={vl.SACRUM: s1})
    np.testing.assert_array_equal(anchored.heatmaps, plain.heatmaps)
    assert anchored.projected.labels.tolist() == plain.projected.labels.tolist()
    square = anchored.id_maps == vl.SACRUM_CLASS
    assert square.any(axis=(1, 2)).all()  # every view shows it
    # the vertebrae keep their squares except where the sacrum's is nearer (the overlap rule)
    changed = anchored.id_maps != plain.id_maps
    assert np.all(anchored.id_maps[changed] == vl.SACRUM_CLASS)
    # the square is centred on S1's projection, as the vertebrae's are on theirs
    pix = drrkit.project_points(s1[None], geometry).pixels[:, 0]
    for k in range(len(geometry)):
        rows, cols = np.nonzero(square[k])
        assert abs(cols.mean() - pix[k, 0]) < 2.5 and abs(rows.mean() - pix[k, 1]) < 2.5
    # outside the CT: not drawn
    far = make_targets(ph.centroids, geometry, vol, anchors={vl.SACRUM: s1 - [0, 0, 500]})
    np.testing.assert_array_equal(far.id_maps, plain.id_maps)


def test_bad_anchors_raise(lumbar):
    ph, vol, s1 = lumbar
    geometry = VIEWS.geometry(vol)
    with pytest.raises(DrrkitError, match="anchor labels"):
        make_targets(ph.centroids, geometry, vol, anchors={27: s1})
    with pytest.raises(DrrkitError, match="finite"):
        make_targets(ph.centroids, geometry, vol, anchors={vl.SACRUM: [np.nan, 0, 0]})


def test_phantom_sources_render_the_sacrum_and_crops_keep_it_inside(lumbar):
    _, _, s1 = lumbar
    source = PhantomSource([2], size="small")
    ct = source.load(0)
    np.testing.assert_allclose(ct.anchors[vl.SACRUM], s1)
    rv = render_views(ct, ViewConfig(views=4, mm_per_pixel=4.0), backend="cpu")
    assert rv.sacrum and (rv.id_maps == vl.SACRUM_CLASS).any()
    top = crop_z(ct, 0, 0)  # L3 alone: S1 lies outside the cut
    cut = render_views(top, ViewConfig(views=4, mm_per_pixel=4.0), backend="cpu")
    assert not (cut.id_maps == vl.SACRUM_CLASS).any()


# ---------------------------------------------------------------------- training
def _square_maps():
    ids = torch.zeros(1, 1, 6, dtype=torch.int64)
    ids[0, 0, :2], ids[0, 0, 2:4], ids[0, 0, 4:] = 23, 24, vl.SACRUM_CLASS  # L4, L5, S1
    return ids


def test_the_sequence_loss_ignores_the_sacrum_square():
    ids = _square_maps()
    probs = torch.zeros(1, vl.NUM_CLASSES_WITH_SACRUM, 1, 6)
    probs[0, 23, 0, :2] = probs[0, 24, 0, 2:4] = probs[0, vl.SACRUM_CLASS, 0, 4:] = 1.0
    dp = SequenceDP()
    with_sacrum = sequence_term(probs, ids, torch.tensor([False]), dp)
    vertebrae_only = sequence_term(probs[:, :vl.NUM_CLASSES],
                                   torch.where(ids == vl.SACRUM_CLASS, 0, ids),
                                   torch.tensor([False]), dp)
    assert with_sacrum.item() == pytest.approx(vertebrae_only.item())
    assert with_sacrum.item() == pytest.approx(float(SequenceDP().loss(np.eye(2))))


def test_a_network_without_the_class_learns_the_sacrum_as_background():
    ids = _square_maps()
    logits = torch.randn(1, vl.NUM_CLASSES, 1, 6)
    as_background = torch.where(ids == vl.SACRUM_CLASS, 0, ids)
    got = identification_loss(logits, ids, torch.tensor([False]))
    want = identification_loss(logits, as_background, torch.tensor([False]))
    assert got.total.item() == pytest.approx(want.total.item())
    # with the class, the sacrum pixels are its own target
    wide = torch.randn(1, vl.NUM_CLASSES_WITH_SACRUM, 1, 6)
    ce = identification_loss(wide, ids, torch.tensor([False]), sequence=False).ce
    manual = torch.nn.functional.cross_entropy(wide, ids)
    assert ce.item() == pytest.approx(manual.item())


def test_training_config_builds_the_wider_head():
    from vertebra.training.config import TrainConfig
    from vertebra.training.trainer import build_model

    cfg = TrainConfig(task="identification", encoder="resnet10t", crop_size=64,
                      decoder_channels=(16, 16, 16, 16, 16), sacrum_class=True)
    model = build_model(cfg)
    assert model.config["num_classes"] == vl.NUM_CLASSES_WITH_SACRUM
    assert TrainConfig.from_dict(cfg.to_dict()).sacrum_class


def test_validation_scores_the_sacrum_apart(lumbar):
    from vertebra.models import UNetOutput
    from vertebra.training.validate import identification_scores

    source = PhantomSource([2], size="small")
    rv = render_views(source.load(0), ViewConfig(views=4, mm_per_pixel=4.0), backend="cpu")
    ids = torch.from_numpy(rv.id_maps.astype(np.int64))

    class Oracle(torch.nn.Module):
        def __init__(self, target):
            super().__init__()
            self.logits = 10.0 * torch.nn.functional.one_hot(
                target, vl.NUM_CLASSES_WITH_SACRUM).permute(0, 3, 1, 2).float()

        def forward(self, x):
            h, w = self.logits.shape[2:]
            pad = (0, x.shape[-1] - w, 0, x.shape[-2] - h)
            return UNetOutput(None, torch.nn.functional.pad(self.logits, pad))

    right = identification_scores(Oracle(ids), [rv], batch_size=len(rv))
    assert right["square_accuracy"] == 1.0 and right["sacrum_accuracy"] == 1.0
    assert right["squares"] == rv.visible.sum() and right["sacrum_squares"] == len(rv)
    missed = identification_scores(Oracle(torch.where(ids == vl.SACRUM_CLASS, 0, ids)), [rv],
                                   batch_size=len(rv))
    assert missed["sacrum_accuracy"] == 0.0 and missed["square_accuracy"] == 1.0


# ---------------------------------------------------------------------- correction
def test_the_anchor_fixes_the_last_label():
    # a lumbar run the identifier reads two levels high: L1, L2, L3 for L3, L4, L5
    p = rows_of(["L1", "L2", "L3"])
    assert correct_labels(p).names == ["L1", "L2", "L3"]
    assert correct_labels(p, last_classes=ABOVE_SACRUM).names == ["L3", "L4", "L5"]
    assert correct_labels(p, "paper", last_classes=ABOVE_SACRUM).names == ["L3", "L4", "L5"]
    # an L6 spine: the identifier's L6 on the last row is allowed and kept
    six = rows_of(["L3", "L4", "L5", "L6"])
    assert correct_labels(six, last_classes=ABOVE_SACRUM).names == ["L3", "L4", "L5", "L6"]
    # the rows above prefer a path ending at L6, the last row says L5: L5 it is
    late = rows_of(["L2", "L3", "L4", "L4", "L5"])
    late[4, L6 - 1] = 0.01
    assert correct_labels(late, last_classes=ABOVE_SACRUM).names[-1] == "L5"
    assert correct_labels(late, last_classes=[L6]).names[-1] == "L6"
    # more rows than fit above L5 (25 on the chain without T13): the anchor gives way
    long = np.full((26, C), 1.0 / C)
    assert correct_labels(long, last_classes=ABOVE_SACRUM).classes[-1] in ABOVE_SACRUM


def test_an_anchored_last_track_is_never_dropped():
    pts = np.array([[0, 0, 100.0], [0, 0, 65], [0, 0, 30]])
    p = rows_of(["L1", "L2", "C3"])  # the last track does not fit: a suspect to drop
    free = correct_tracks(pts, p, suspects=[False, False, True])
    assert free.dropped.tolist() == [False, False, True]
    anchored = correct_tracks(pts, p, suspects=[False, False, True], above_sacrum=True)
    assert not anchored.dropped.any()
    assert [vl.by_class(c).name for c in anchored.classes] == ["L3", "L4", "L5"]


# ---------------------------------------------------------------------- pipeline
def _maps(vol, centroids, id_centroids, anchors=None, heat_extra=None):
    geometry = VIEWS.geometry(vol)
    heat = make_targets({**centroids, **(heat_extra or {})}, geometry, vol).heatmaps
    ids = make_targets(id_centroids, geometry, vol, anchors=anchors).id_maps
    probs = np.eye(vl.NUM_CLASSES_WITH_SACRUM, dtype=np.float32)[ids].transpose(0, 3, 1, 2)
    return heat, np.ascontiguousarray(probs)


def _label(vol, heat, probs, **config):
    return label_ct(vol, lambda x: heat, lambda x: probs, views=VIEWS, backend="cpu",
                    config=PipelineConfig(**config))


@pytest.mark.filterwarnings("ignore:labels uncertain")  # anchored against the identifier
def test_the_pipeline_anchors_a_shifted_lumbar_run(lumbar):
    ph, vol, s1 = lumbar
    shifted = {k - 2: v for k, v in ph.centroids.items()}  # the identifier says L1-L3
    heat, probs = _maps(vol, ph.centroids, shifted, anchors={vl.SACRUM: s1})
    r = _label(vol, heat, probs)
    assert [v.name for v in r.vertebrae] == ["L3", "L4", "L5"]
    assert r.sacrum_below > 0.5 and np.all(r.sacrum < 0.5) and r.above_sacrum
    from vertebra.report import result_summary

    summary = result_summary(r)
    assert summary["above_sacrum"] and summary["sacrum_below"] > 0.5
    off = _label(vol, heat, probs, sacrum_threshold=None)
    assert [v.name for v in off.vertebrae] == ["L1", "L2", "L3"]
    assert np.isnan(off.sacrum_below) and not off.above_sacrum
    assert result_summary(off)["sacrum_below"] is None
    # no sacrum seen below: the identifier's labels stand
    heat, probs = _maps(vol, ph.centroids, shifted)
    assert [v.name for v in _label(vol, heat, probs).vertebrae] == ["L1", "L2", "L3"]


@pytest.mark.filterwarnings("ignore:labels uncertain")  # anchored against the identifier
def test_a_track_on_the_sacrum_is_dropped_and_anchors_the_one_above(lumbar):
    ph, vol, s1 = lumbar
    # the localizer also fires on S1 (a fake "vertebra" there, VerSe id 25 as a stand-in)
    heat, _ = _maps(vol, ph.centroids, ph.centroids, heat_extra={25: s1})
    shifted = {k - 1: v for k, v in ph.centroids.items()}  # L2-L4
    _, probs = _maps(vol, ph.centroids, shifted, anchors={vl.SACRUM: s1})
    r = _label(vol, heat, probs)
    assert len(r.points) == 4 and r.dropped.tolist() == [False, False, False, True]
    assert r.sacrum[-1] > 0.5
    assert [v.name for v in r.vertebrae] == ["L3", "L4", "L5"]


def test_sacrum_threshold_is_checked():
    with pytest.raises(DrrkitError, match="sacrum_threshold"):
        PipelineConfig(sacrum_threshold=1.5)
