"""Label correction: turn per-vertebra class probabilities into consecutive anatomical labels.

Input: ``probs`` (n, 26), the fused (voted) identification probabilities of n detected
vertebrae in spine order (row 0 the most superior), columns the vertebra classes 1..26 of
:mod:`vertebra.labels` (C1..C7, T1..T12, T13, L1..L6; background excluded).

Two rules:

``"dp"`` (default): the best path of the sequence DP (:class:`vertebra.sequence.SequenceDP`,
the same recurrence as the Sequence Loss) over a *chain* of classes. Consecutive rows get
consecutive chain positions, so no vertebra is skipped. T13 is optional: the DP runs on
the chain without the T13 column (C1..T12, L1..L6, 25 columns) and on the full chain
(26 columns), and the better best-path score wins (ties go to the chain without T13).
L6 needs no such choice: it is the last column of both chains and a spine may simply end
at L5. The path must start on the table (its first row at C1 or below), so a path never
runs off the top of the chain; only when there are more rows than chain columns are the
rows above C1 left unlabelled.

``"paper"``: the rule of Wu et al.'s release: the class with the largest probability in
the *last* row is the reference and the rows above are labelled consecutively upwards.
Two bugs of that code are fixed: a row that would lie above C1 is left unlabelled
instead of wrapping round to the end of the class list (Python index -1), and C1 is a
class of its own, not the background index. The rule has no notion of an optional
vertebra, so it counts on the chain without T13 (T13's column is ignored).

An anchor: ``last_classes`` (e.g. L5 and L6, when the identifier sees the sacrum just below
the last row) fixes the class of the last row to the one of them the row's probabilities
favour, for both rules; the rows above follow consecutively. Without the anchor a short lumbar scan is labelled
from its top vertebrae, which look alike.

Empty rows (all zeros) are allowed: the pipeline inserts them where the 3-D spacing of
the detections shows a missed vertebra (:func:`gap_rows`), so the labels above and below
the gap stay right.

Example:
    >>> import numpy as np
    >>> from vertebra import labels
    >>> p = np.zeros((3, 26)); p[[0, 1, 2], [17, 18, 19]] = 1   # T11, T12, T13
    >>> [labels.name_of(v) for v in correct_labels(p).verse_ids]
    ['T11', 'T12', 'T13']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vertebra import labels as vlabels
from vertebra.errors import VertebraError
from vertebra.sequence import SequenceDP

METHODS = ("dp", "paper")

#: Number of vertebra classes (columns of ``probs``).
N_VERTEBRA_CLASSES = len(vlabels.VERTEBRAE)

#: Network class of T13.
T13_CLASS = vlabels.class_of(28)

#: Class chains (network classes in anatomical order) the DP may use; the same columns as
#: the Sequence Loss in training (:func:`vertebra.labels.chain_classes`).
CHAIN_WITHOUT_T13 = vlabels.chain_classes(False)
CHAIN_WITH_T13 = vlabels.chain_classes(True)

#: Classes the last row may take when the sacrum lies just below it (L5, L6).
ABOVE_SACRUM = np.array([vlabels.by_name("L5").class_index, vlabels.by_name("L6").class_index])

#: A spacing between consecutive detections this many times the local spacing means a
#: vertebra was missed (adjacent vertebrae differ in spacing by less than ~1.35x).
GAP_RATIO = 1.7


@dataclass(frozen=True)
class Correction:
    """Corrected labels of n rows.

    Attributes:
        classes: (n,) int64 network class 1..26 per row, 0 where unlabelled.
        verse_ids: (n,) int64 VerSe id per row, 0 where unlabelled.
        confidence: (n,) float64 in [0, 1]: the row's probability of its label after
            normalising the row over the 26 vertebra classes; 0 where unlabelled or empty.
        method: "dp" or "paper".
        t13: whether a row was labelled T13.
        score: best-path score of the chosen chain (NaN for "paper").
        scores: {"without_t13": score, "with_t13": score} of the DP (empty for "paper").
    """

    classes: np.ndarray
    verse_ids: np.ndarray
    confidence: np.ndarray
    method: str
    t13: bool
    score: float
    scores: dict

    @property
    def names(self) -> list[str]:
        """Vertebra names per row ("" where unlabelled)."""
        return [vlabels.name_of(v) if v else "" for v in self.verse_ids.tolist()]


def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_VERTEBRA_CLASSES:
        raise VertebraError(
            f"probs must have shape (n, {N_VERTEBRA_CLASSES}) (vertebra classes 1..26, "
            f"background excluded), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise VertebraError("probs must be finite and non-negative")
    return p


def _normalised(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0)


def _finish(p: np.ndarray, chain_pos: np.ndarray, chain: np.ndarray, method: str, t13: bool,
            score: float, scores: dict) -> Correction:
    """Chain positions (n,) (-1 = unlabelled) -> :class:`Correction`."""
    ok = chain_pos >= 0
    classes = np.where(ok, chain[np.clip(chain_pos, 0, len(chain) - 1)], 0).astype(np.int64)
    q = _normalised(p)
    rows = np.arange(len(p))
    confidence = np.where(ok, q[rows, np.maximum(classes - 1, 0)], 0.0)
    return Correction(classes, vlabels.ID_OF_CLASS[classes].astype(np.int64), confidence,
                      method, t13, float(score), scores)


def _dp_chain(p: np.ndarray, chain: np.ndarray, dp: SequenceDP, last_classes=None
              ) -> tuple[float, np.ndarray]:
    """Best path on one chain: (score, chain position per row, -1 above the chain).

    ``last_classes``: the classes the last row may take (None: any); ignored when no
    such end keeps the path on the table.
    """
    n = len(p)
    sub = p[:, chain - 1]
    result = dp.scores(sub)
    last = np.asarray(result.opt)[n - 1]  # (c,) OPT[n, j]
    c = len(chain)
    # the path's first row must lie on the table: end >= n - 1 (0-based)
    allowed = np.arange(c) >= min(n - 1, c - 1)
    if last_classes is not None and np.any(allowed & np.isin(chain, last_classes)):
        allowed &= np.isin(chain, last_classes)
    scores = np.where(allowed, last, -np.inf)
    end = int(np.argmax(scores))  # first on ties, like SequenceDP
    positions = end - (n - 1 - np.arange(n))
    return float(scores[end]), np.where(positions >= 0, positions, -1)


def correct_labels(probs, method: str = "dp", *, dp: SequenceDP | None = None,
                   allow_t13: bool = True, last_classes=None) -> Correction:
    """Consecutive anatomical labels for n vertebrae in spine order.

    Args:
        probs: (n, 26) non-negative class probabilities (vertebra classes 1..26, background
            excluded), row 0 the most superior vertebra; rows may be all zero (gaps).
        method: "dp" (sequence DP, optional T13) or "paper" (last row's reference).
        dp: the sequence DP (default ``SequenceDP()``, the paper's alpha 0.1, beta 0.8).
        allow_t13: let the DP choose the chain with T13 (method "dp" only).
        last_classes: classes (1..26) the last row may take, e.g. :data:`ABOVE_SACRUM`
            (None: any). The one the last row's own probabilities favour is used (ties:
            the first): with the sacrum below, the last vertebra is L6 only when the
            identifier calls it L6 rather than L5, whatever the rows above prefer.

    Returns:
        :class:`Correction`.
    """
    if method not in METHODS:
        raise VertebraError(f"unknown correction {method!r}; choose one of {', '.join(METHODS)}")
    p = _check_probs(probs)
    n = len(p)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Correction(empty, empty.copy(), np.zeros(0), method, False, float("nan"), {})
    if last_classes is not None:
        options = np.asarray(last_classes, dtype=np.int64).reshape(-1)
        last_classes = options[[int(np.argmax(p[-1, options - 1]))]]
    if method == "paper":
        chain = CHAIN_WITHOUT_T13
        ref_p = p[-1, chain - 1]
        if last_classes is not None:
            ref_p = np.where(np.isin(chain, last_classes), 1.0, 0.0)
        reference = int(np.argmax(ref_p))
        positions = reference - (n - 1 - np.arange(n))
        return _finish(p, np.where(positions >= 0, positions, -1), chain, "paper", False,
                       float("nan"), {})
    dp = SequenceDP() if dp is None else dp
    s0, pos0 = _dp_chain(p, CHAIN_WITHOUT_T13, dp, last_classes)
    scores = {"without_t13": s0}
    chosen = (s0, pos0, CHAIN_WITHOUT_T13, False)
    if allow_t13:
        s1, pos1 = _dp_chain(p, CHAIN_WITH_T13, dp, last_classes)
        scores["with_t13"] = s1
        if s1 > s0:
            chosen = (s1, pos1, CHAIN_WITH_T13, True)
    score, positions, chain, _ = chosen
    result = _finish(p, positions, chain, "dp", False, score, scores)
    return Correction(result.classes, result.verse_ids, result.confidence, "dp",
                      bool(np.any(result.classes == T13_CLASS)), score, scores)


def sequence_losses(probs, dp: SequenceDP | None = None, allow_t13: bool = True) -> np.ndarray:
    """Per-view sequence loss ``L_s`` (Eq. 2) on the better of the two class chains.

    Args:
        probs: (..., n, 26) per-view tables (vertebra classes 1..26, background excluded).
        dp: the sequence DP (default ``SequenceDP()``).
        allow_t13: also try the chain with T13.

    Returns:
        (...) float64 ``min`` over the chains of ``L_s`` (the chain that fits best).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] != N_VERTEBRA_CLASSES:
        raise VertebraError(f"probs must have shape (..., n, {N_VERTEBRA_CLASSES}), got {p.shape}")
    dp = SequenceDP() if dp is None else dp
    chains = (CHAIN_WITHOUT_T13, CHAIN_WITH_T13) if allow_t13 else (CHAIN_WITHOUT_T13,)
    losses = [np.asarray(dp.loss(p[..., chain - 1]), dtype=np.float64) for chain in chains]
    return np.minimum.reduce(losses)


def spacing_ratios(points) -> np.ndarray:
    """(n - 1,) each spacing ``s_i = |p_{i+1} - p_i|`` over its local spacing ``r_i``.

    ``r_i`` is the median of the neighbouring spacings ``s_{i-1}, s_{i+1}`` (those that
    exist); the ratio is 0 where there is no neighbour (fewer than three points) or
    ``r_i`` is 0. A ratio near 2 means one vertebra was missed between the two points.

    Args:
        points: (n, 3) world mm, superior first.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    out = np.zeros(max(n - 1, 0))
    if n < 3:
        return out
    s = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    for i in range(n - 1):
        local = float(np.median([s[j] for j in (i - 1, i + 1) if 0 <= j < n - 1]))
        if local > 0:
            out[i] = s[i] / local
    return out


def gap_rows(points, ratio: float = GAP_RATIO, *, flip=()) -> tuple[np.ndarray, int]:
    """Table rows of n detections in spine order, leaving empty rows for missed vertebrae.

    Where a spacing's :func:`spacing_ratios` value ``q_i`` exceeds ``ratio``,
    ``round(q_i) - 1`` rows are left empty between the two detections (at least one).
    With fewer than three detections nothing is inserted (there is no local spacing to
    compare with).

    Args:
        points: (n, 3) world mm, superior first.
        ratio: threshold on ``s_i / r_i`` (default :data:`GAP_RATIO`).
        flip: indices ``i`` of spacings read the other way (the doubtful gaps that
            :func:`correct_tracks` tries): one empty row where the rule puts none, none
            where it puts exactly one.

    Returns:
        rows (n,) int64, the table row of each detection, and the table length m >= n.
    """
    if not ratio > 1:
        raise VertebraError(f"the gap ratio must be > 1, got {ratio}")
    q = spacing_ratios(points)
    if len(q) == 0:
        n = len(np.asarray(points).reshape(-1, 3))
        return np.arange(n, dtype=np.int64), n
    extra = np.where(q > ratio, np.maximum(np.round(q) - 1, 1), 0).astype(np.int64)
    flip = np.asarray(flip, dtype=np.int64)
    extra[flip] = np.where(extra[flip] == 0, 1, extra[flip] - (extra[flip] == 1))
    rows = np.concatenate([[0], np.cumsum(1 + extra)]).astype(np.int64)
    return rows, rows[-1].item() + 1


#: Consecutive tracks closer than this fraction of the local spacing are suspect (see
#: :func:`crowded`): one of the two is likely a second detection of a vertebra or another
#: bone. On bone-enhanced views the localizer sometimes finds C2's dens and body as two
#: vertebrae ~10 mm apart (local spacing ~12.5 mm); 0.8 lets the correction drop one
#: (decision ``crowded-ratio``).
CROWDED_RATIO = 0.8


#: A kept suspect track needs at least this label confidence (:func:`correct_tracks`); low,
#: so that weak lumbar confidences at a scan's caudal end do not drop real vertebrae
#: (decision ``min-suspect-confidence``).
MIN_SUSPECT_CONFIDENCE = 0.02


#: Spacings between these multiples of the local one are doubtful (one missed vertebra or
#: none); :func:`correct_tracks` tries both readings of up to :data:`MAX_MAYBE_GAPS` of
#: them (decision ``maybe-gap-ratio``).
MAYBE_GAP_RATIO = 1.35
DOUBTFUL_GAP_MAX = 2.5
MAX_MAYBE_GAPS = 2


@dataclass(frozen=True)
class TrackLabels:
    """Labels of T tracks after :func:`correct_tracks`.

    Attributes:
        classes: (T,) int64 network class per track, 0 where unlabelled or dropped.
        confidence: (T,) float64 label confidence (0 where unlabelled or dropped).
        dropped: (T,) bool, the track was judged not to be a vertebra.
        correction: the :class:`Correction` of the chosen table.
        rows: (T,) int64 row of each track in that table (-1 for dropped tracks).
    """

    classes: np.ndarray
    confidence: np.ndarray
    dropped: np.ndarray
    correction: Correction
    rows: np.ndarray


def crowded(points, ratio: float = CROWDED_RATIO) -> np.ndarray:
    """(n,) bool: the track lies closer to its neighbour in spine order than ``ratio``
    times the local spacing, the median of the spacings within two steps (both tracks of
    such a pair are marked).

    Args:
        points: (n, 3) world mm, superior first.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(pts), dtype=bool)
    if len(pts) < 3:
        return out
    s = np.linalg.norm(np.diff(pts, axis=0), axis=1)  # (n - 1,)
    local = np.array([np.median(s[max(i - 2, 0):i + 3]) for i in range(len(s))])
    close = s < ratio * local
    out[:-1] |= close
    out[1:] |= close
    return out


def _tables(points: np.ndarray, fill_gaps: bool, maybe_gap_ratio: float | None):
    """(rows, m, doubtful gaps flipped) of every table layout :func:`correct_tracks` tries."""
    from itertools import combinations

    n = len(points)
    if not fill_gaps:
        yield np.arange(n), n, 0
        return
    maybe = np.zeros(0, dtype=np.int64)
    if maybe_gap_ratio is not None:
        q = spacing_ratios(points)
        maybe = np.flatnonzero((q > maybe_gap_ratio) & (q < DOUBTFUL_GAP_MAX))
    for k in range(min(MAX_MAYBE_GAPS, len(maybe)) + 1):
        for flip in combinations(maybe.tolist(), k):
            yield *gap_rows(points, flip=flip), k


def _best_reading(pts: np.ndarray, cand: np.ndarray, max_drops: int, label,
                  min_confidence: float, gaps: dict):
    """The best (correction, kept track indices, their table rows) over every way of
    dropping at most ``max_drops`` of the suspect tracks ``cand`` and every reading of
    the doubtful gaps (:func:`_tables`; ``gaps``: fill_gaps, maybe), as
    :func:`correct_tracks` ranks them. ``label(keep, rows, m)`` corrects one table."""
    from itertools import combinations

    t = len(pts)
    suspect = np.zeros(t, dtype=bool)
    suspect[cand] = True
    best, best_key = None, None
    for n_drop in range(min(max_drops, len(cand), max(t - 1, 0)) + 1):
        for drop in combinations(cand.tolist(), n_drop):
            keep = np.setdiff1d(np.arange(t), np.asarray(drop, dtype=np.int64))
            for rows, m, n_gaps in _tables(pts[keep], gaps["fill_gaps"], gaps["maybe"]):
                corr = label(keep, rows, m)
                doubtful = corr.confidence[rows][suspect[keep]] < min_confidence
                key = (not doubtful.any(), round(float(corr.score), 9), -n_drop, -n_gaps)
                if best_key is None or key > best_key:
                    best, best_key = (corr, keep, rows), key
    return best


def correct_tracks(points, probs, *, suspects=None, max_drops: int = 2,
                   min_confidence: float = MIN_SUSPECT_CONFIDENCE, method: str = "dp",
                   dp: SequenceDP | None = None, allow_t13: bool = True,
                   fill_gaps: bool = True,
                   maybe_gap_ratio: float | None = MAYBE_GAP_RATIO,
                   above_sacrum: bool = False) -> TrackLabels:
    """Consecutive labels for T tracks in spine order, leaving out false tracks.

    The table of :func:`correct_labels` is built from the tracks' probabilities with
    empty rows at gaps (:func:`gap_rows`, when ``fill_gaps``). A spacing between
    ``maybe_gap_ratio`` and :data:`DOUBTFUL_GAP_MAX` times the local one may or may not
    hide a missed vertebra (the spacing changes along the spine, fastest at the
    cervico-thoracic junction, and a poorly placed neighbour skews the local spacing):
    both readings, one empty row there or none, are tried for up to
    :data:`MAX_MAYBE_GAPS` such spacings, and the identifier's probabilities decide as for
    the drops (ties: the :data:`GAP_RATIO` rule's reading). A suspect track (one added
    at an end of the chain, or a :func:`crowded` one) may be dropped: every way of dropping
    at most ``max_drops`` of the suspects is tried. The table whose DP best-path score is
    highest wins (ties: fewer drops), among those in which every kept suspect has a label
    confidence of at least ``min_confidence`` (when there is such a table). A dropped
    track gives up its own term of the score, so a track is left out only when the
    others' labels fit better without it (e.g. a bone above C1 that would push every label
    down one level, or a second detection of a vertebra that opens a false gap), or when
    it is a suspect that the identifier does not see as the vertebra its place in the
    sequence calls for. With ``method="paper"`` (no score) nothing is dropped.

    Args:
        points: (T, 3) world mm, superior first.
        probs: (T, 26) voted class probabilities (background excluded).
        suspects: (T,) bool tracks that may be dropped (None: the :func:`crowded` ones).
        max_drops: most tracks dropped (0: none).
        min_confidence: smallest label confidence of a kept suspect (see above;
            :data:`MIN_SUSPECT_CONFIDENCE`).
        method, dp, allow_t13: as :func:`correct_labels`.
        fill_gaps: insert empty rows where the spacing shows a missed vertebra.
        maybe_gap_ratio: lower end of the doubtful spacings (None: the :data:`GAP_RATIO`
            rule alone; used with ``fill_gaps``).
        above_sacrum: the sacrum lies just below the last track: that track is kept and
            labelled L5 or L6 (:data:`ABOVE_SACRUM`).

    Returns:
        :class:`TrackLabels`.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    p = _check_probs(probs)
    t = len(pts)
    if len(p) != t:
        raise VertebraError(f"{t} points but {len(p)} rows of probabilities")
    cand = np.flatnonzero(crowded(pts) if suspects is None else np.asarray(suspects, bool))
    last_classes = None
    if above_sacrum and t:
        cand = cand[cand != t - 1]
        last_classes = ABOVE_SACRUM
    def label(keep, rows, m):
        table = np.zeros((m, p.shape[1]))
        table[rows] = p[keep]
        return correct_labels(table, method, dp=dp, allow_t13=allow_t13,
                              last_classes=last_classes)

    corr, keep, rows = _best_reading(pts, cand, int(max_drops) if method == "dp" else 0,
                                     label, min_confidence,
                                     {"fill_gaps": fill_gaps, "maybe": maybe_gap_ratio})
    classes = np.zeros(t, dtype=np.int64)
    confidence = np.zeros(t)
    where = np.full(t, -1, dtype=np.int64)
    classes[keep] = corr.classes[rows]
    confidence[keep] = corr.confidence[rows]
    where[keep] = rows
    dropped = np.ones(t, dtype=bool)
    dropped[keep] = False
    return TrackLabels(classes, confidence, dropped, corr, where)
