"""The label table: VerSe ids, names, classes and regions agree with each other."""

import numpy as np
import pytest

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
