"""The label table: VerSe ids, names, classes and regions agree with each other."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drrkit.errors import DrrkitError
from vertebra import labels as L


def test_table_counts_and_order():
    assert len(L.VERTEBRAE) == 26
    assert L.NUM_CLASSES == 27
    assert L.NAMES[:8] == ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1")
    assert L.NAMES[17:22] == ("T11", "T12", "T13", "L1", "L2")
    assert L.NAMES[-1] == "L6"
    assert [v.class_index for v in L.VERTEBRAE] == list(range(1, 27))


@pytest.mark.parametrize(
    "name, verse_id, cls, region",
    [("C1", 1, 1, "cervical"), ("C7", 7, 7, "cervical"), ("T1", 8, 8, "thoracic"),
     ("T12", 19, 19, "thoracic"), ("T13", 28, 20, "thoracic"), ("L1", 20, 21, "lumbar"),
     ("L5", 24, 25, "lumbar"), ("L6", 25, 26, "lumbar")],
)
def test_rows(name, verse_id, cls, region):
    row = L.by_name(name)
    assert (row.verse_id, row.class_index, row.region) == (verse_id, cls, region)
    assert L.by_id(verse_id) == row == L.by_class(cls)
    assert L.class_of(verse_id) == cls and L.label_of_class(cls) == verse_id
    assert L.name_of(verse_id) == name and L.region_of(verse_id) == region


def test_background_is_its_own_class():
    assert L.BACKGROUND == 0
    assert L.class_of(1) == 1  # C1 is not background (the paper's code mixed them)
    assert L.CLASS_OF_ID[0] == 0 and L.ID_OF_CLASS[0] == 0
    with pytest.raises(DrrkitError):
        L.by_class(0)


def test_lookup_tables_are_inverse():
    ids = np.array(L.VERSE_IDS)
    np.testing.assert_array_equal(L.ID_OF_CLASS[L.CLASS_OF_ID[ids]], ids)
    np.testing.assert_array_equal(L.CLASS_OF_ID[L.ID_OF_CLASS[1:]], np.arange(1, 27))


def test_classes_of_maps_non_targets_to_background():
    got = L.classes_of(np.array([[0, 1, 26], [27, 28, 99]]))
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 20, 0]])
    np.testing.assert_array_equal(L.classes_of(np.array([20.0, 28.0])), [21, 20])
    with pytest.raises(DrrkitError):
        L.classes_of(np.array([1.5]))


def test_non_targets_and_bad_input():
    assert not L.is_vertebra(26) and not L.is_vertebra(27) and not L.is_vertebra(0)
    assert not L.is_vertebra("x")
    for bad in (26, 27, 0, 29, -1):
        with pytest.raises(DrrkitError, match="not a VerSe vertebra label"):
            L.by_id(bad)
    with pytest.raises(DrrkitError, match="unknown vertebra name"):
        L.by_name("S1")
    assert L.by_name(" t13 ").verse_id == 28


def test_anatomical_sort_puts_t13_between_t12_and_l1():
    assert L.sort_anatomical([20, 28, 19, 1, 25]) == [1, 19, 28, 20, 25]
    assert L.anatomical_rank(28) == 19


def _ids(*names):
    return [L.by_name(n).verse_id for n in names]


def test_landmarks_of_labelled_runs():
    assert L.LANDMARKS == ("skull base", "first rib", "last rib", "sacrum")
    assert L.landmarks(_ids("L2", "L3", "L4")) == ()
    assert L.landmarks(_ids("L2", "L3", "L4"), sacrum=True) == ("sacrum",)
    assert L.landmarks(_ids("T11", "T12", "L1")) == ("last rib",)
    assert L.landmarks(_ids("T12", "T13", "L1")) == ("last rib",)
    assert L.landmarks(_ids("C6", "C7", "T1", "T2")) == ("first rib",)
    assert L.landmarks(_ids("C2", "C3")) == ("skull base",)
    assert L.landmarks(_ids("T3", "T4", "T5", "T6")) == ()
    assert L.landmarks(_ids("C7", "T2")) == ()  # T1 missing: no neighbours across the rib
    assert L.landmarks(_ids("T12", "L2")) == ()
    assert L.landmarks([]) == () == L.landmarks([], sacrum=True)
    whole = [v.verse_id for v in L.VERTEBRAE if v.name not in ("T13", "L6")]
    assert L.landmarks(whole, sacrum=True) == L.LANDMARKS


@given(st.integers(0, 24), st.integers(0, 24), st.booleans())
def test_landmarks_of_a_whole_run_are_the_transitions_it_spans(a, b, t13):
    """A gap-free run of the column holds the skull base when it has C1 or C2, the first
    rib when it has C7 and T1, the last rib when it has the last thoracic and L1."""
    names = [v.name for v in L.VERTEBRAE if v.name != "L6" and (t13 or v.name != "T13")]
    lo, hi = sorted((min(a, len(names) - 1), min(b, len(names) - 1)))
    run = names[lo:hi + 1]
    last = "T13" if t13 else "T12"
    want = [k for k, held in (("skull base", bool({"C1", "C2"} & set(run))),
                              ("first rib", {"C7", "T1"} <= set(run)),
                              ("last rib", {last, "L1"} <= set(run))) if held]
    assert L.landmarks(_ids(*run)) == tuple(want)
