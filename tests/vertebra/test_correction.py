"""Label correction: DP over class chains (optional T13, L6 at the end) and the paper's rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drrkit.errors import DrrkitError
from vertebra import labels as vl
from vertebra.correction import (
    CHAIN_WITH_T13,
    CHAIN_WITHOUT_T13,
    MIN_SUSPECT_CONFIDENCE,
    correct_labels,
    correct_tracks,
    crowded,
    gap_rows,
    spacing_ratios,
)
from vertebra.sequence import ALPHA, BETA

C = len(vl.VERTEBRAE)


def one_hot(names, value=1.0):
    p = np.zeros((len(names), C))
    for i, name in enumerate(names):
        p[i, vl.by_name(name).class_index - 1] = value
    return p


def names_of(result):
    return result.names


@pytest.mark.parametrize("names", [
    ["C1", "C2", "C3", "C4"],
    ["T3", "T4", "T5", "T6", "T7", "T8"],
    ["T11", "T12", "L1", "L2"],
    ["L1", "L2", "L3", "L4", "L5"],
    ["L4"],
    [n for n in vl.NAMES if n not in ("T13", "L6")],  # the whole spine, 24 vertebrae
])
def test_one_hot_normal_spines(names):
    r = correct_labels(one_hot(names))
    assert names_of(r) == names
    assert not r.t13
    np.testing.assert_allclose(r.confidence, 1.0)
    assert r.scores["without_t13"] >= r.scores["with_t13"]


def test_dp_fixes_one_wrong_row():
    names = ["T6", "T7", "T8", "T9", "T10"]
    p = one_hot(names, 0.7)
    p[2] = 0.0
    p[2, vl.by_name("T10").class_index - 1] = 0.7  # the T8 row says T10
    p += 0.01
    r = correct_labels(p)
    assert names_of(r) == names
    assert r.confidence[2] < 0.1 < r.confidence[0]


def test_t13_spine_uses_the_t13_chain():
    names = ["T10", "T11", "T12", "T13", "L1", "L2"]
    r = correct_labels(one_hot(names))
    assert names_of(r) == names
    assert r.t13 and r.scores["with_t13"] > r.scores["without_t13"]


def test_t13_ambiguous_rows_resolved_by_the_sequence():
    # a transitional spine whose T13 row is only weakly T13
    names = ["T10", "T11", "T12", "T13", "L1", "L2", "L3"]
    p = one_hot(names, 0.8)
    t13 = vl.class_of(28) - 1
    p[3] = 0.0
    p[3, t13], p[3, t13 + 1] = 0.45, 0.4  # T13 vs L1
    assert names_of(correct_labels(p)) == names
    # a normal spine whose L1 row has some T13 probability stays without T13
    normal = ["T10", "T11", "T12", "L1", "L2", "L3"]
    q = one_hot(normal, 0.8)
    q[3, t13] = 0.3
    r = correct_labels(q)
    assert names_of(r) == normal and not r.t13


def test_l6_is_the_last_column_and_optional():
    six = ["L2", "L3", "L4", "L5", "L6"]
    assert names_of(correct_labels(one_hot(six))) == six
    five = ["L1", "L2", "L3", "L4", "L5"]
    assert names_of(correct_labels(one_hot(five))) == five


def test_allow_t13_false_never_labels_t13():
    names = ["T11", "T12", "T13", "L1"]
    r = correct_labels(one_hot(names), allow_t13=False)
    assert "T13" not in names_of(r) and "with_t13" not in r.scores


def test_dp_path_never_runs_off_the_top():
    # row 1 looks like C1, so the argmax path would put row 0 above C1
    p = one_hot(["C1", "C1", "C2", "C3"])
    r = correct_labels(p)
    assert names_of(r) == ["C1", "C2", "C3", "C4"]
    assert np.all(r.classes > 0)


def test_more_rows_than_classes_leaves_the_top_unlabelled():
    p = np.full((30, C), 1.0 / C)  # 30 flat rows: the longer chain labels more of them
    r = correct_labels(p)
    chain = CHAIN_WITH_T13 if r.t13 else CHAIN_WITHOUT_T13
    assert r.t13
    assert r.classes[:30 - len(chain)].tolist() == [0] * (30 - len(chain))
    assert r.classes[30 - len(chain):].tolist() == chain.tolist()


def test_paper_rule_reference_and_fixed_wraparound():
    names = ["T3", "T4", "T5", "T6"]
    p = one_hot(names)
    p[0] = one_hot(["L2"])[0]  # rows above the last do not matter to the paper's rule
    assert names_of(correct_labels(p, "paper")) == names
    # last row says C3 with 5 rows: the top two rows would be above C1
    q = one_hot(["C1", "C2", "C3", "C4", "C3"])
    r = correct_labels(q, "paper")
    assert r.classes.tolist()[:2] == [0, 0]  # unlabelled, not wrapped round to L5/L6
    assert names_of(r)[2:] == ["C1", "C2", "C3"]
    assert r.confidence[0] == 0.0
    # C1 is a class of its own: a last row saying C1 labels C1 (not background)
    assert names_of(correct_labels(one_hot(["C1"]), "paper")) == ["C1"]


def test_paper_rule_cannot_label_transitional_spines():
    names = ["T11", "T12", "T13", "L1"]
    assert names_of(correct_labels(one_hot(names), "paper")) != names
    assert names_of(correct_labels(one_hot(names), "dp")) == names


def test_empty_rows_keep_the_sequence():
    names = ["T8", "T9", "T10", "T11", "T12"]
    p = one_hot(names)
    p[2] = 0.0  # a missed vertebra left as an empty row
    r = correct_labels(p)
    assert names_of(r) == names
    assert r.confidence[2] == 0.0


def test_empty_input_and_bad_input():
    r = correct_labels(np.zeros((0, C)))
    assert len(r.classes) == 0
    with pytest.raises(DrrkitError):
        correct_labels(np.zeros((3, C + 1)))
    with pytest.raises(DrrkitError):
        correct_labels(-np.ones((3, C)))
    with pytest.raises(DrrkitError):
        correct_labels(np.ones((3, C)), "viterbi")


def _brute_force(p):
    """Best (chain, start) by direct summation of the path score of the sequence DP."""
    best = (-np.inf, None)
    n = len(p)
    for chain in (CHAIN_WITHOUT_T13, CHAIN_WITH_T13):  # ties go to the first chain
        sub = np.pad(p[:, chain - 1], ((0, 0), (1, 1)))  # zero columns off the chain
        for start in range(len(chain) - n + 1):
            cols = start + np.arange(n) + 1
            score = sub[0, cols[0]]
            for i in range(1, n):
                j = cols[i]
                score += max(BETA * sub[i, j], ALPHA * sub[i, j - 1], ALPHA * sub[i, j + 1])
            if score > best[0] + 1e-12:
                best = (score, chain[cols - 1])
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_dp_matches_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(C, 0.3), size=n)
    score, classes = _brute_force(p)
    r = correct_labels(p)
    np.testing.assert_allclose(r.score, score, rtol=1e-9)
    assert r.classes.tolist() == classes.tolist()
    assert np.all((r.confidence >= 0) & (r.confidence <= 1))


def test_gap_rows():
    z = -np.cumsum([0, 20, 21, 22, 23, 24, 25])  # growing spacing, no gap
    pts = np.stack([np.zeros_like(z), np.zeros_like(z), z], -1).astype(float)
    rows, m = gap_rows(pts)
    assert rows.tolist() == list(range(7)) and m == 7
    missing = np.delete(pts, 3, axis=0)  # one vertebra missed
    rows, m = gap_rows(missing)
    assert rows.tolist() == [0, 1, 2, 4, 5, 6] and m == 7
    two = np.delete(pts, [3, 4], axis=0)  # two in a row
    rows, m = gap_rows(two)
    assert rows.tolist() == [0, 1, 2, 5, 6] and m == 7
    assert gap_rows(pts[:2])[0].tolist() == [0, 1]
    with pytest.raises(DrrkitError):
        gap_rows(pts, ratio=1.0)


def test_sequence_losses_use_the_better_chain():
    from vertebra.correction import sequence_losses
    from vertebra.sequence import sequence_loss

    t13 = one_hot(["T11", "T12", "T13", "L1"])
    normal = one_hot(["T11", "T12", "L1", "L2"])
    both = sequence_losses(np.stack([t13, normal]))
    perfect = 1 - (1 + 3 * BETA) / (4 * BETA)  # a one-hot consecutive sequence
    np.testing.assert_allclose(both, perfect)
    # the full 26-class chain alone would penalise the normal spine at T12 -> L1
    assert float(sequence_loss(normal)) > perfect + 0.1
    assert sequence_losses(t13, allow_t13=False) > perfect + 0.1


def _line(z):
    z = np.asarray(z, dtype=float)
    return np.stack([np.zeros_like(z), np.zeros_like(z), z], -1)


def test_crowded_marks_both_tracks_of_a_close_pair():
    z = -np.cumsum([0, 20, 22, 24, 8, 20, 26, 27])  # a second detection 8 mm below #3
    assert np.flatnonzero(crowded(_line(z))).tolist() == [3, 4]
    assert not crowded(_line(-np.cumsum([0, 18, 18, 19, 25, 27, 30]))).any()  # C -> T -> L
    assert not crowded(_line([0.0, -5.0])).any()  # too few to tell
    # C2 seen as two blobs (dens and body) on bone-enhanced views, validation phantom 2085
    split = -np.cumsum([0, 10.5, 9.4, 14.6, 15.1, 15.3, 14.9])
    assert np.flatnonzero(crowded(_line(split))).tolist() == [1, 2]


def test_correct_tracks_drops_a_false_track_above_the_spine():
    """A bone above C1 that the identifier calls T3 would push every label down one."""
    names = ["C1", "C2", "C3", "C4", "C5", "C6"]
    probs = np.concatenate([0.3 * one_hot(["T3"]), 0.7 * one_hot(names)])
    pts = _line(-np.cumsum([0, 14, 18, 18, 18, 18, 19]))
    plain = correct_tracks(pts, probs, suspects=np.zeros(7, bool))
    assert plain.classes[0] > 0 and not plain.dropped.any()
    assert plain.correction.names[1:] == names[1:] + ["C7"]  # shifted: the bone took C1
    r = correct_tracks(pts, probs, suspects=np.eye(7, dtype=bool)[0])
    assert r.dropped.tolist() == [True] + [False] * 6 and r.classes[0] == 0
    assert [vl.name_of(vl.label_of_class(c)) for c in r.classes[1:]] == names
    assert r.rows.tolist() == [-1, 0, 1, 2, 3, 4, 5] and r.confidence[0] == 0
    assert correct_tracks(pts, probs, suspects=np.eye(7, dtype=bool)[0],
                          max_drops=0).classes.tolist() == plain.classes.tolist()


def test_correct_tracks_drops_a_second_detection_that_opens_a_false_gap():
    names = ["T3", "T4", "T5", "T6", "T7", "T8", "T9"]
    z = -np.cumsum([0, 22, 23, 24, 11, 14, 25, 26])  # a duplicate of T6 11 mm below it
    probs = one_hot(names[:4] + ["T6"] + names[4:], 0.6)
    probs[4] = 0.3 * one_hot(["T6"])[0] + 0.3 * one_hot(["T7"])[0]
    r = correct_tracks(_line(z), probs)  # suspects: the crowded pair
    kept = [vl.name_of(vl.label_of_class(c)) for c in r.classes[~r.dropped]]
    assert r.dropped.sum() == 1 and kept == names


def test_a_missed_vertebra_at_a_moderate_gap_is_read_from_the_identifier():
    """C7 missed at the cervico-thoracic junction: the spacing C6 -> T1 (30 mm) is only
    1.5x the local one (cervical spacings are short), under GAP_RATIO. The identifier's
    labels decide that a vertebra is missing there; a spine with the same spacings whose
    labels run on without a gap keeps them."""
    pts = _line(-np.cumsum([0, 15.5, 15.5, 15.5, 30, 24, 24]))
    missed = ["C3", "C4", "C5", "C6", "T1", "T2", "T3"]
    plain = correct_tracks(pts, 0.6 * one_hot(missed), maybe_gap_ratio=None)
    assert plain.correction.names != missed  # no gap row: the labels cannot skip C7
    r = correct_tracks(pts, 0.6 * one_hot(missed))
    assert [vl.name_of(vl.label_of_class(c)) for c in r.classes] == missed
    assert r.rows.tolist() == [0, 1, 2, 3, 5, 6, 7]
    running = ["C4", "C5", "C6", "C7", "T1", "T2", "T3"]
    r = correct_tracks(pts, 0.6 * one_hot(running))
    assert [vl.name_of(vl.label_of_class(c)) for c in r.classes] == running
    assert r.rows.tolist() == list(range(7))


def test_spacing_ratios_and_gap_rows():
    pts = _line(-np.cumsum([0, 20, 20, 40, 20, 30]))
    np.testing.assert_allclose(spacing_ratios(pts), [1, 20 / 30, 2, 20 / 35, 1.5])
    assert gap_rows(pts)[0].tolist() == [0, 1, 2, 4, 5, 6]
    assert gap_rows(pts, flip=[4])[0].tolist() == [0, 1, 2, 4, 5, 7]  # one row added
    assert gap_rows(pts, flip=[2])[0].tolist() == [0, 1, 2, 3, 4, 5]  # the gap read away
    assert spacing_ratios(pts[:2]).tolist() == [0.0]
    rows, m = gap_rows(pts[:0])
    assert rows.tolist() == [] and m == 0


def test_a_weakly_identified_end_track_is_kept_unless_its_confidence_is_tiny():
    """The caudal track the extension added: the identifier leans (weakly) to L4, its place
    in the sequence calls for L5. Kept at 5 % confidence; dropped under the threshold."""
    names = ["T11", "T12", "L1", "L2", "L3", "L4"]
    pts = _line(-np.cumsum([0, 25, 26, 27, 28, 29, 30]))
    probs = np.concatenate([0.8 * one_hot(names), 0.25 * one_hot(["L4"]) + 0.05 * one_hot(["L5"])])
    end = np.eye(7, dtype=bool)[6]
    kept = correct_tracks(pts, probs, suspects=end)
    assert not kept.dropped.any() and kept.correction.names == names + ["L5"]
    assert MIN_SUSPECT_CONFIDENCE < kept.confidence[6] < 0.2
    strict = correct_tracks(pts, probs, suspects=end, min_confidence=0.2)
    assert strict.dropped.tolist() == [False] * 6 + [True]


def test_correct_tracks_keeps_consistent_suspects_and_matches_correct_labels():
    names = ["T10", "T11", "T12", "L1", "L2"]
    pts = _line(-np.cumsum([0, 24, 25, 26, 27]))
    probs = 0.8 * one_hot(names)
    r = correct_tracks(pts, probs, suspects=np.ones(5, bool))
    assert not r.dropped.any()
    assert r.classes.tolist() == correct_labels(probs).classes.tolist()
    paper = correct_tracks(pts, probs, suspects=np.ones(5, bool), method="paper")
    assert not paper.dropped.any() and paper.correction.method == "paper"
    with pytest.raises(DrrkitError, match="points"):
        correct_tracks(pts[:4], probs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**16), gap=st.booleans())
def test_correct_tracks_without_drops_is_correct_labels_on_the_gap_table(n, seed, gap):
    rng = np.random.default_rng(seed)
    pts = _line(-np.cumsum(rng.uniform(20, 26, n)))
    if gap and n > 4:
        pts = np.delete(pts, n // 2, axis=0)
    probs = rng.dirichlet(np.full(C, 0.3), size=len(pts))
    r = correct_tracks(pts, probs, max_drops=0, maybe_gap_ratio=None)
    rows, m = gap_rows(pts)
    table = np.zeros((m, C))
    table[rows] = probs
    ref = correct_labels(table)
    assert r.classes.tolist() == ref.classes[rows].tolist()
    assert r.rows.tolist() == rows.tolist() and not r.dropped.any()
    either = correct_tracks(pts, probs, max_drops=0)  # doubtful gaps read both ways
    assert either.correction.score >= ref.score - 1e-12
    best = correct_tracks(pts, probs, suspects=np.ones(len(pts), bool))
    # dropping is chosen only to gain score, or to lose a doubtful suspect
    doubtful = (ref.confidence[rows] < MIN_SUSPECT_CONFIDENCE).any()
    assert best.correction.score >= ref.score - 1e-12 or doubtful
