"""Vertebra names, VerSe label ids, network class indices and spine regions, in one table.

VerSe label ids (the values in ``*_seg-vert_msk.nii.gz`` and the ``"label"`` field of
centroid JSON files):

=========  ==========  ===============================
VerSe id   vertebra    region
=========  ==========  ===============================
1 - 7      C1 - C7     cervical
8 - 19     T1 - T12    thoracic
20 - 25    L1 - L6     lumbar (L6: a transitional sixth lumbar vertebra)
26         sacrum      not a target
27         coccyx      not a target
28         T13         thoracic (a thirteenth thoracic vertebra, between T12 and L1)
=========  ==========  ===============================

Network classes: class 0 is background and nothing else; the 26 vertebrae follow in
anatomical order C1..C7, T1..T12, T13, L1..L6 as classes 1..26 (so T13 is class 20 and
L1 class 21). The paper's released code gave C1 and background the same index; this table
deliberately does not. An identification network may have one class more,
:data:`SACRUM_CLASS` (27): a square on the first sacral body, the landmark that tells the
lowest lumbar vertebra (see :mod:`vertebra.correction`). It is not a vertebra target.

Example:
    >>> from vertebra import labels
    >>> labels.by_name("T13").verse_id, labels.class_of(28), labels.label_of_class(21)
    (28, 20, 20)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from vertebra.errors import VertebraError

#: Spine regions in cranio-caudal order.
REGIONS: tuple[str, ...] = ("cervical", "thoracic", "lumbar")

#: VerSe ids that are not vertebra targets.
SACRUM = 26
COCCYX = 27

#: Network class of the background.
BACKGROUND = 0


@dataclass(frozen=True)
class Vertebra:
    """One row of the label table.

    Attributes:
        name: "C1" .. "L6" (and "T13").
        verse_id: label value in VerSe masks and centroid files.
        class_index: network class, 1..26 in anatomical order (0 is background).
        region: "cervical", "thoracic" or "lumbar".
    """

    name: str
    verse_id: int
    class_index: int
    region: str


def _build() -> tuple[Vertebra, ...]:
    rows: list[tuple[str, int, str]] = []
    rows += [(f"C{i}", i, "cervical") for i in range(1, 8)]
    rows += [(f"T{i}", 7 + i, "thoracic") for i in range(1, 13)]
    rows += [("T13", 28, "thoracic")]
    rows += [(f"L{i}", 19 + i, "lumbar") for i in range(1, 7)]
    return tuple(Vertebra(n, v, c, r) for c, (n, v, r) in enumerate(rows, start=1))


#: All vertebra targets in anatomical (cranio-caudal) order; ``VERTEBRAE[c - 1]`` has class c.
VERTEBRAE: tuple[Vertebra, ...] = _build()

#: Number of network classes, background included (27).
NUM_CLASSES: int = len(VERTEBRAE) + 1

#: Network class of the sacrum (its first segment, S1) in an identification network that
#: has one: the class after the vertebrae.
SACRUM_CLASS: int = NUM_CLASSES

#: Number of classes of an identification network with the sacrum class (28).
NUM_CLASSES_WITH_SACRUM: int = NUM_CLASSES + 1

#: VerSe ids of all vertebra targets in anatomical order, (26,).
VERSE_IDS: tuple[int, ...] = tuple(v.verse_id for v in VERTEBRAE)

#: Vertebra names in anatomical order, (26,).
NAMES: tuple[str, ...] = tuple(v.name for v in VERTEBRAE)

_BY_ID = {v.verse_id: v for v in VERTEBRAE}
_BY_NAME = {v.name: v for v in VERTEBRAE}

#: Lookup table VerSe id -> class index, (29,) int64; ids that are not targets map to 0.
CLASS_OF_ID: np.ndarray = np.zeros(max(VERSE_IDS) + 1, dtype=np.int64)
for _v in VERTEBRAE:
    CLASS_OF_ID[_v.verse_id] = _v.class_index

#: Lookup table class index -> VerSe id, (27,) int64; class 0 (background) maps to 0.
ID_OF_CLASS: np.ndarray = np.array([0, *VERSE_IDS], dtype=np.int64)


def is_vertebra(verse_id: int) -> bool:
    """True when ``verse_id`` is one of the 26 vertebra targets (not 26/27, not 0)."""
    try:
        return int(verse_id) in _BY_ID
    except (TypeError, ValueError):
        return False


def by_id(verse_id: int) -> Vertebra:
    """The table row of a VerSe id; raises DrrkitError for ids that are not targets."""
    try:
        return _BY_ID[int(verse_id)]
    except (KeyError, TypeError, ValueError):
        raise VertebraError(
            f"{verse_id!r} is not a VerSe vertebra label; valid ids are 1-25 and 28"
            " (26 sacrum and 27 coccyx are not targets)"
        ) from None


def by_name(name: str) -> Vertebra:
    """The table row of a vertebra name such as "T13" (case-insensitive)."""
    row = _BY_NAME.get(str(name).strip().upper())
    if row is None:
        raise VertebraError(f"unknown vertebra name {name!r}; expected one of {', '.join(NAMES)}")
    return row


def by_class(class_index: int) -> Vertebra:
    """The table row of a network class 1..26; class 0 is background and has no row."""
    c = int(class_index)
    if not 1 <= c <= len(VERTEBRAE):
        raise VertebraError(
            f"class {class_index!r} is not a vertebra class; expected 1..{len(VERTEBRAE)}"
            " (0 is background)"
        )
    return VERTEBRAE[c - 1]


def class_of(verse_id: int) -> int:
    """Network class (1..26) of a VerSe id."""
    return by_id(verse_id).class_index


def label_of_class(class_index: int) -> int:
    """VerSe id of a network class (1..26)."""
    return by_class(class_index).verse_id


def name_of(verse_id: int) -> str:
    """Vertebra name ("C1".."L6", "T13") of a VerSe id."""
    return by_id(verse_id).name


def region_of(verse_id: int) -> str:
    """Region ("cervical", "thoracic" or "lumbar") of a VerSe id."""
    return by_id(verse_id).region


def anatomical_rank(verse_id: int) -> int:
    """0-based position in cranio-caudal order (C1 = 0, T12 = 18, T13 = 19, L1 = 20)."""
    return by_id(verse_id).class_index - 1


def sort_anatomical(verse_ids: Iterable[int]) -> list[int]:
    """VerSe ids sorted cranio-caudally (T13 between T12 and L1); all must be targets."""
    return sorted((int(i) for i in verse_ids), key=anatomical_rank)


def classes_of(verse_ids) -> np.ndarray:
    """Vectorised :func:`class_of`: any-shape integer array of VerSe ids -> int64 classes.

    Ids that are not vertebra targets (0, 26, 27, anything else) map to background 0.
    """
    ids = np.asarray(verse_ids)
    if (ids.size and not np.issubdtype(ids.dtype, np.integer)
            and (not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)))):
        raise VertebraError("VerSe ids must be whole numbers")
    ids = ids.astype(np.int64)
    out = np.zeros(ids.shape, dtype=np.int64)
    ok = (ids >= 0) & (ids < CLASS_OF_ID.size)
    out[ok] = CLASS_OF_ID[ids[ok]]
    return out


def chain_classes(t13: bool) -> np.ndarray:
    """Network classes of one spine's vertebra chain, cranio-caudal: the Sequence Loss columns.

    A spine without a thirteenth thoracic vertebra goes T12 -> L1 directly, so its chain
    leaves class 20 (T13) out and T12 (19) and L1 (21) become neighbouring columns. L6
    (class 26) stays as the last column either way: a spine without one simply never
    reaches it.

    Args:
        t13: whether the spine has a T13.

    Returns:
        (26,) or (25,) int64 class indices in spine order.

    Example:
        >>> chain_classes(False)[17:21].tolist(), len(chain_classes(True))
        ([18, 19, 21, 22], 26)
    """
    t13_class = _BY_NAME["T13"].class_index
    classes = np.arange(1, len(VERTEBRAE) + 1, dtype=np.int64)
    return classes if t13 else classes[classes != t13_class]


#: What a labelled run of vertebrae can count its levels from, in cranio-caudal order: the
#: skull above C1-C2, the first rib (C7 then T1), the last rib (T12 or T13 then L1) and
#: the sacrum below the last lumbar vertebra.
LANDMARKS: tuple[str, ...] = ("skull base", "first rib", "last rib", "sacrum")


def landmarks(verse_ids: Iterable[int], sacrum: bool = False) -> tuple[str, ...]:
    """The landmarks (:data:`LANDMARKS`) a run of labelled vertebrae holds.

    A scan's levels can only be counted from something whose level is known: the skull
    (C1 or C2 labelled), or a change of region between two labelled neighbours (C7 then
    T1: the first rib; T12 or T13 then L1: the last rib), or the sacrum below the last
    vertebra (``sacrum``, e.g. ``LabelResult.above_sacrum``). A run with none of them, a
    few lumbar or mid-thoracic vertebrae, is labelled from the vertebrae's shapes alone,
    and a whole run may then be a level or more off with every label confident.

    Args:
        verse_ids: the labelled vertebrae's VerSe ids, superior first.
        sacrum: the sacrum anchored the labels.

    Returns:
        The landmarks held, in :data:`LANDMARKS` order (empty when none).
    """
    ids = [int(v) for v in verse_ids]
    held = set()
    if any(v in (1, 2) for v in ids):
        held.add("skull base")
    for a, b in pairwise(ids):
        step = anatomical_rank(b) - anatomical_rank(a)
        if step != 1 and not (a == 19 and b == 20):  # T12 then L1 skips T13's rank
            continue
        pair = (region_of(a), region_of(b))
        if pair == ("cervical", "thoracic"):
            held.add("first rib")
        elif pair == ("thoracic", "lumbar"):
            held.add("last rib")
    if sacrum and ids:
        held.add("sacrum")
    return tuple(k for k in LANDMARKS if k in held)
