"""CT -> labelled 3-D vertebra centroids (Wu et al., MICCAI 2023), stage by stage.

Stages (each timed, seconds in :attr:`LabelResult.timings`; :func:`label_ct` calls them
in turn, each a function of this module passing a typed result to the next:
:func:`detect_peaks` -> :func:`match_tracks` and :func:`extend_tracks` (:class:`Tracks`)
-> :func:`identify_tracks` (:class:`Identification`) -> :func:`vote` (:class:`Votes`) ->
:func:`correct` (:class:`Labels`)):

1. ``render``: K DRRs of the CT with the network's :class:`vertebra.views.ViewConfig`
   (drrkit; CUDA when available), normalised to network inputs (K, H, W). With
   ``complete_body``, a scan whose small field of view the body fills (a spine
   protocol's reconstruction, a crop around the spine) is first placed in a trunk of
   soft tissue (:mod:`drrkit.completion`), and both networks see the views of that.
2. ``localize``: the localization network -> heatmaps (K, H, W).
3. ``peaks``: 2-D detections per view by density-peak clustering
   (:func:`vertebra.peaks.density_peaks`); distances in mm at the isocentre.
4. ``match``: cross-view correspondence and least-squares triangulation
   (:func:`drrkit.correspondence.match_views`) -> T 3-D tracks, superior first; each
   point then moves to the nearby maximum of the mean heatmap over all K views
   (``refine_mm``, :func:`drrkit.refinement.refine_points`: the whole heatmaps, not one
   detection per view, so a lopsided or split 2-D peak does not pull the point); tracks
   further than ``box_margin_mm`` outside the CT's box are dropped, and of two tracks
   closer than ``min_separation_mm`` along the spine (two detections of one vertebra, or a
   vertebra and another bone at its level) only the better supported is kept. Then the
   chain is extended at both ends (:func:`extend_ends`): a second pass with a lower
   heatmap threshold and fewer views may add, one at a time, a track that lies where the
   next vertebra above the top or below the bottom one should be (the vertebrae cut by
   the scan's edge, and C1, give weaker heatmaps than the rest). With ``chain_weight``
   the tracks are then placed as one chain along the spine (:func:`chain_tracks`,
   :mod:`vertebra.chain`): each may move along the curve through them within its own
   heatmap plateau, and one may be added between two of them, where the mean heatmap
   over the views and the regularity of the spacing together call for it (a bright disc
   that joins two vertebrae into one blob; a vertebra missed in most views).
5. ``identify``: the identification network -> class probabilities (K, C, H, W); per view
   and track, the mean probability over the ``square_mm`` (22 mm at the isocentre) square
   around the *re-projected* 3-D centroid: ``P_k`` (T, 26), background excluded. A track
   whose square falls off a view's detector has a zero row in that view.
6. ``vote``: view weights ``W_k = (1 - L_k) / sum (1 - L_k)`` from the sequence loss
   ``L_k`` of each view's ``P_k`` (Eq. 6; ``L_k`` on the better fitting of the class chains
   with and without T13, :func:`vertebra.correction.sequence_losses`) and the voted map
   ``V = sum_k W_k P_k`` (T, 26). ``voting="mean"`` uses ``W_k = 1 / K`` instead.
7. ``correct``: consecutive anatomical labels from ``V``
   (:func:`vertebra.correction.correct_labels`: DP with optional T13, or the paper's rule).
   With ``fill_gaps``, empty rows are inserted where the 3-D spacing shows a missed vertebra
   (:func:`vertebra.correction.gap_rows`); where the spacing is doubtful, both readings
   are tried and the identifier decides. Up to ``max_drops`` suspect tracks (added at an
   end, or crowding a neighbour) are left out when the labels of the others fit better
   without them (:func:`vertebra.correction.correct_tracks`); a point the chain
   placement added is kept unless ``drop_added``. An identifier with the
   sacrum class (C = 28) also anchors the chain's lower end: where the voted sacrum
   probability just below the last track (:func:`sacrum_below`) reaches
   ``sacrum_threshold``, that track is labelled L5 or L6; where the last track's own
   square is the sacrum, it is dropped and the one above is.

The networks are plain callables, so the geometry and fusion can be tested without
learning: ``localizer(inputs (K, H, W) float32) -> (K, H, W)`` heatmaps (peak ~1 at a
centroid) and ``identifier(inputs) -> (K, C, H, W)`` class probabilities (C = 27,
channel 0 background; or 28 with the sacrum class last). :class:`TorchNetwork` wraps the torch U-Nets of
:mod:`vertebra.models`.

Fails soft: views without detections, a partial field of view or a single vertebra still
give an answer with per-vertebra confidences; a CT in which no vertebra is found gives an
empty result whose ``status`` is ``"no spine found"`` (and a warning). Labels whose median
confidence is below :data:`UNCERTAIN_CONFIDENCE` are flagged as uncertain (and warned
about): the identifier did not recognise the region. A labelled run that holds no
landmark to count from (:attr:`LabelResult.landmarks`: no skull base, first or last rib or
sacrum, as in a few lumbar vertebrae) is warned about as well: such a run can be
confidently a level off (decision ``landmarks``). A CT whose slices lie more than
:data:`THICK_SLICE_WARN_MM` apart is warned about too, and so is one whose values do not
look like a CT's in HU (:func:`hu_scale_problem`: nothing as dark as fat, or almost
nothing as dense as bone), as a missing rescale intercept or another modality gives.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import drrkit
from drrkit.dense import check_dense_hu
from vertebra import labels as vlabels
from vertebra.correction import Correction, correct_tracks, crowded, gap_rows
from vertebra.errors import VertebraError
from vertebra.peaks import Peaks, density_peaks
from vertebra.scene import network_scene
from vertebra.targets import SQUARE_MM, pixel_size_at_isocenter
from vertebra.views import ViewConfig

#: Pixels this close outside a square's edge count as inside (as in vertebra.targets).
_EPS_PX = 1e-6

#: Network inputs are zero-padded (bottom, right) to a multiple of this many pixels.
PAD_MULTIPLE = 32

#: Grid spacing (mm) of the heatmap refinement of the 3-D points (``refine_mm``).
REFINE_STEP_MM = 1.0

#: Where :func:`sacrum_below` looks: the last track plus these multiples of the last
#: spacing along the chain (the first sacral body lies about one spacing below L5).
SACRUM_STEPS = (0.7, 0.85, 1.0, 1.15, 1.3)

STAGES = ("render", "localize", "peaks", "match", "identify", "vote", "correct")
VOTING = ("weighted", "mean")
NO_SPINE = "no spine found"

#: A labelling whose vertebrae have a median label confidence below this is flagged as
#: uncertain (:attr:`LabelResult.uncertain`, with a warning): the labels may be a region
#: or several levels off (decision ``uncertain-labels``).
UNCERTAIN_CONFIDENCE = 0.3

#: Slices further apart than this (mm) get a warning: thick slices merge thin discs with
#: their endplates, the localizers then miss vertebrae and the levels shift (decision
#: ``shoulder-girdle-and-thick-slices``).
THICK_SLICE_WARN_MM = 4.0

#: A CT in HU holds air, lung or at least fat below this (HU); a scan with no voxel this
#: dark was most likely stored without its rescale intercept (air at 0 instead of -1000).
DARKEST_EXPECTED_HU = -50.0
#: ... and bone above this (HU) in at least :data:`BONE_SHARE_EXPECTED` of its voxels.
BONE_HU = 150.0
BONE_SHARE_EXPECTED = 1e-3

Localizer = Callable[[np.ndarray], np.ndarray]
Identifier = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the stages after the networks (all lengths in mm at the isocentre).

    Attributes:
        peak_threshold: smallest heatmap value of a detection.
        min_distance_mm: smallest distance between two detections in one view.
        max_detections: keep at most this many detections (the highest) per view.
        max_peak_pixels: density-peak clustering uses at most this many of the highest
            heatmap pixels per view (bounds the cost of a poor heatmap).
        refine_mm: each triangulated track moves to the maximum of the mean heatmap over
            all K views within this distance along each axis (1 mm grid, two searches,
            :func:`drrkit.refinement.refine_points`); None keeps the least-squares point.
        tolerance_mm: largest reprojection error of a detection in a 3-D track.
        localizer_views: K of the localizer's orbit at inference (None: the networks'
            training K). More views find more vertebrae at the scan's edges and average
            the 2-D errors; the identifier keeps its own K.
        min_views: fewest views a track needs (None: ``ceil(K / 2)``, at least 3).
        square_mm: side of the identification square (paper: 22).
        voting: "weighted" (Eq. 6) or "mean" (every view weighs 1 / K).
        correction: "dp" (sequence DP, optional T13) or "paper".
        allow_t13: the DP may label a thirteenth thoracic vertebra.
        fill_gaps: leave an empty row where the 3-D spacing shows a missed vertebra.
        box_margin_mm: tracks further than this outside the CT's box are dropped (mm).
        min_separation_mm: two tracks closer than this along the spine (their offset
            projected on its local direction, :func:`vertebra.chain.spine_tangents`)
            cannot both be vertebrae: the one seen in fewer views (then with the lower heatmap
            score) is dropped; 0 keeps all.
        alpha, beta: weights of the sequence DP (paper: 0.1, 0.8).
        extend_threshold: heatmap threshold of the second pass that extends the chain at
            its ends (:func:`extend_ends`); None turns the extension off.
        extend_min_views: fewest views a track of that pass needs.
        extend_tolerance: an added track lies within this fraction of the local
            vertebra spacing of where the chain predicts the next vertebra.
        max_drops: the label correction may leave out at most this many suspect tracks
            (added at an end, or crowding a neighbour) that do not fit the label sequence
            (:func:`vertebra.correction.correct_tracks`); 0 labels every track.
        sacrum_threshold: with an identifier that has the sacrum class, a voted sacrum
            probability of at least this just below the last track labels it L5 or L6
            (and a last track whose own square reaches it is dropped as the sacrum);
            None ignores the class.
        mirror: test-time mirroring: both networks also run on the views mirrored left
            to right, and each uses the mean of the two outputs (:class:`MirroredNetwork`);
            twice the network time.
        chain_weight: weight of the spacing prior of the chain placement
            (:func:`chain_tracks`, :mod:`vertebra.chain`); None leaves the tracks where
            matching put them.
        chain_cost: price of a track added by the chain placement, in units of the
            median heatmap at the tracks.
        chain_plateau: a track moves along the spine only where the mean heatmap stays
            at least this share of its value at the track (0 < share <= 1).
        chain_tolerance: spacing changes from one vertebra to the next up to this share
            of their mean cost nothing in the chain placement's prior (>= 0).
        drop_added: a point the chain placement added counts as suspect in the label
            correction, which may drop it. Off by default: the point stands where the
            spacing shows a missed vertebra and the heatmap supports one, and dropping it
            reopens that gap, which the correction may then read as no gap at all when
            the identifier's readings fit that better (decision ``kept-added-points``).
        complete_body: a scan whose small field of view the body fills
            (:func:`drrkit.completion.needs_completion`: a spine protocol's reconstruction,
            a crop around the spine) is rendered with the trunk it cuts completed by soft
            tissue (:func:`drrkit.completion.complete_body`), so its views show the spine
            against a whole trunk's tissue as the networks' training scans do; the
            points are still kept to the scan's own box.
        dense_hu: voxels above this CT number (undiluted contrast, metal: denser than any
            vertebra) and their bright rim are rendered as soft tissue
            (:func:`drrkit.dense.suppress_dense`), so that a vein full of contrast does not
            outshine the spine it crosses in the bone-enhanced views; None renders them.
    """

    peak_threshold: float = 0.4
    min_distance_mm: float = 10.0
    max_detections: int = 40
    max_peak_pixels: int = 4000
    refine_mm: float | None = 3.0
    tolerance_mm: float = 6.0
    localizer_views: int | None = None
    min_views: int | None = None
    square_mm: float = SQUARE_MM
    voting: str = "weighted"
    correction: str = "dp"
    allow_t13: bool = True
    fill_gaps: bool = True
    box_margin_mm: float = 10.0
    min_separation_mm: float = 8.0
    alpha: float = 0.1
    beta: float = 0.8
    extend_threshold: float | None = 0.2
    extend_min_views: int = 3
    extend_tolerance: float = 0.4
    max_drops: int = 2
    sacrum_threshold: float | None = 0.5
    mirror: bool = False
    chain_weight: float | None = None
    chain_cost: float = 0.8
    chain_plateau: float = 0.85
    chain_tolerance: float = 0.1
    drop_added: bool = False
    complete_body: bool = False
    dense_hu: float | None = None

    def __post_init__(self) -> None:
        if self.voting not in VOTING:
            raise VertebraError(f"unknown voting {self.voting!r}; choose one of "
                                f"{', '.join(VOTING)}")
        from vertebra.correction import METHODS

        if self.correction not in METHODS:
            raise VertebraError(f"unknown correction {self.correction!r}; choose one of "
                                f"{', '.join(METHODS)}")
        for name in ("min_distance_mm", "tolerance_mm", "square_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise VertebraError(f"{name} must be a positive number of mm, got {value}")
        if not np.isfinite(self.peak_threshold):
            raise VertebraError("peak_threshold must be finite")
        if int(self.max_detections) < 1 or int(self.max_peak_pixels) < 1:
            raise VertebraError("max_detections and max_peak_pixels must be >= 1")
        if self.refine_mm is not None and not (np.isfinite(self.refine_mm)
                                               and self.refine_mm >= REFINE_STEP_MM):
            raise VertebraError(f"refine_mm must be >= {REFINE_STEP_MM} mm (or None), "
                                f"got {self.refine_mm}")
        if not self.box_margin_mm >= 0 or not self.min_separation_mm >= 0:
            raise VertebraError("box_margin_mm and min_separation_mm must be >= 0")
        if self.extend_threshold is not None and not np.isfinite(self.extend_threshold):
            raise VertebraError("extend_threshold must be finite (or None: no extension)")
        if self.localizer_views is not None and not (
                int(self.localizer_views) == self.localizer_views and self.localizer_views >= 2):
            raise VertebraError(f"localizer_views must be an integer >= 2, got "
                                f"{self.localizer_views}")
        if int(self.max_drops) < 0:
            raise VertebraError(f"max_drops must be >= 0, got {self.max_drops}")
        if self.sacrum_threshold is not None and not 0 < self.sacrum_threshold <= 1:
            raise VertebraError(f"sacrum_threshold must lie in (0, 1] (or None), "
                                f"got {self.sacrum_threshold}")
        if int(self.extend_min_views) < 2 or not 0 < self.extend_tolerance < 1:
            raise VertebraError("need extend_min_views >= 2 and 0 < extend_tolerance < 1")
        for name in ("mirror", "complete_body", "drop_added"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise VertebraError(f"{name} must be true or false, got "
                                    f"{getattr(self, name)!r}")
        if self.dense_hu is not None:
            try:
                check_dense_hu(self.dense_hu)
            except drrkit.DrrkitError as error:
                raise VertebraError(f"dense_hu: {error}") from None
        if self.chain_weight is not None and not (np.isfinite(self.chain_weight)
                                                  and self.chain_weight >= 0):
            raise VertebraError(f"chain_weight must be >= 0 (or None), got {self.chain_weight}")
        if not (np.isfinite(self.chain_cost) and 0 < self.chain_plateau <= 1
                and self.chain_tolerance >= 0):
            raise VertebraError(f"need a finite chain_cost, 0 < chain_plateau <= 1 and "
                                f"chain_tolerance >= 0, got {self.chain_cost}, "
                                f"{self.chain_plateau} and {self.chain_tolerance}")


@dataclass(frozen=True)
class LabelledVertebra:
    """One labelled vertebra.

    Attributes:
        verse_id: VerSe label id.
        name: "C1" .. "L6", "T13".
        region: "cervical", "thoracic" or "lumbar".
        world: (3,) world LPS mm.
        confidence: probability of the label in the voted map (row normalised), [0, 1].
        detection: mean heatmap value of the track's 2-D detections, ~[0, 1] (for an
            added vertebra, the mean heatmap over all views at its point).
        n_views: views in which the vertebra was detected.
        rms_mm: RMS distance of the least-squares point (before the heatmap refinement)
            from its detection rays, mm (NaN for an added vertebra).
        added: placed by the chain placement between two detected vertebrae
            (:func:`chain_tracks`), detected in no view.
    """

    verse_id: int
    name: str
    region: str
    world: np.ndarray
    confidence: float
    detection: float
    n_views: int
    rms_mm: float
    added: bool = False


@dataclass(frozen=True, eq=False)
class LabelResult:
    """Everything the pipeline found for one CT (T tracks, K views).

    Attributes:
        vertebrae: the labelled vertebrae, superior first.
        status: "ok" or "no spine found" (see also :attr:`uncertain`).
        points: (T, 3) world mm of every track, superior first (labelled or not).
        classes: (T,) network class per track (0 = unlabelled).
        confidence: (T,) label confidence per track.
        n_views: (T,) views per track.
        view_probs: (K', T, 26) ``P_k``, mean class probabilities in each identifier
            view's square (K' = K unless ``identifier_views`` differ).
        covered: (K', T) bool, the square lies (at least partly) on view k's detector.
        weights: (K',) view weights ``W_k``.
        voted: (T, 26) the voted map ``V``.
        correction: the label correction of the (gap-filled) table.
        detections: K :class:`vertebra.peaks.Peaks`.
        correspondence: the :class:`drrkit.correspondence.Correspondence` (before the
            box test; ``kept`` indexes its tracks).
        kept: (T,) indices of the correspondence's tracks that were kept (-1 for the
            tracks added at the ends by the weaker second pass).
        extended: (T,) bool, the track was added at an end (:func:`extend_ends`).
        added: (T,) bool, the track was added between two others by the chain placement
            (:func:`chain_tracks`); it was detected in no view (``n_views`` 0).
        dropped: (T,) bool, the label correction judged the track not to be a vertebra
            (:func:`vertebra.correction.correct_tracks`), or the identifier saw the
            sacrum there; it has class 0.
        sacrum: (T,) voted sacrum probability of each track's square (zeros when the
            identifier has no sacrum class).
        sacrum_below: voted sacrum probability just below the last track
            (:func:`sacrum_below`; NaN without the class or with fewer than two tracks).
        above_sacrum: the sacrum anchored the labels (the last vertebra is L5 or L6).
        geometry: the K views.
        inputs: (K, H, W) float32 network inputs.
        heatmaps: (K, H, W) float32 localization output.
        timings: {stage: seconds}.
        completed: the views were rendered with the trunk completed
            (``PipelineConfig.complete_body``); ``geometry`` and ``inputs`` are of the
            completed scan.
        suppressed: the views were rendered without the CT's voxels denser than bone
            (``PipelineConfig.dense_hu``).
    """

    vertebrae: tuple[LabelledVertebra, ...]
    status: str
    points: np.ndarray
    classes: np.ndarray
    confidence: np.ndarray
    n_views: np.ndarray
    view_probs: np.ndarray
    covered: np.ndarray
    weights: np.ndarray
    voted: np.ndarray
    correction: Correction | None
    detections: tuple[Peaks, ...]
    correspondence: object
    kept: np.ndarray
    extended: np.ndarray
    dropped: np.ndarray
    geometry: drrkit.Geometry
    inputs: np.ndarray
    heatmaps: np.ndarray
    timings: dict = field(default_factory=dict)
    sacrum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sacrum_below: float = float("nan")
    above_sacrum: bool = False
    added: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    completed: bool = False
    suppressed: bool = False

    def centroids(self) -> dict[int, np.ndarray]:
        """{VerSe id: (3,) world mm} of the labelled vertebrae, superior first."""
        return {v.verse_id: v.world for v in self.vertebrae}

    @property
    def median_confidence(self) -> float:
        """Median label confidence of the vertebrae, [0, 1] (NaN without vertebrae)."""
        return _median_confidence(self.vertebrae)

    @property
    def uncertain(self) -> bool:
        """Vertebrae were labelled, with a median confidence below
        :data:`UNCERTAIN_CONFIDENCE`."""
        return bool(self.vertebrae) and self.median_confidence < UNCERTAIN_CONFIDENCE

    @property
    def landmarks(self) -> tuple[str, ...]:
        """The landmarks the labelled run holds (:func:`vertebra.labels.landmarks`): empty
        when its levels were counted from the vertebrae's shapes alone."""
        return vlabels.landmarks([v.verse_id for v in self.vertebrae], self.above_sacrum)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.timings.values()))


# ---------------------------------------------------------------------- stages
def detect_peaks(heatmaps: np.ndarray, pixel_mm: np.ndarray, config: PipelineConfig
                 ) -> list[Peaks]:
    """K heatmaps (K, H, W) and pixel sizes (K, 2) mm -> K :class:`Peaks` (best first)."""
    out = []
    for k, h in enumerate(heatmaps):
        p = density_peaks(h, float(np.mean(pixel_mm[k])), threshold=config.peak_threshold,
                          min_distance_mm=config.min_distance_mm,
                          max_points=int(config.max_peak_pixels))
        n = int(config.max_detections)
        out.append(Peaks(p.pixels[:n], p.scores[:n]) if len(p) > n else p)
    return out


def square_means(probs: np.ndarray, pixels: np.ndarray, half_px: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities over squares around projected points.

    Pixels whose centres lie within ``half_px`` of the point along each axis (the square
    of :mod:`vertebra.targets`) are averaged; a square partly off the detector averages
    its part on it.

    Args:
        probs: (K, C, H, W) class probabilities.
        pixels: (K, T, 2) (col, row) projected points; NaN for points behind a source.
        half_px: (K, 2) half the square's side in pixels (column, row).

    Returns:
        means (K, T, C) float64 (zero where the square misses the detector) and
        covered (K, T) bool.
    """
    k, c, h, w = probs.shape
    t = pixels.shape[1]
    out = np.zeros((k, t, c))
    covered = np.zeros((k, t), dtype=bool)
    for view in range(k):
        hc, hr = half_px[view]
        for i in range(t):
            col, row = pixels[view, i]
            if not (np.isfinite(col) and np.isfinite(row)):
                continue
            c0 = max(int(np.ceil(col - hc - _EPS_PX)), 0)
            c1 = min(int(np.floor(col + hc + _EPS_PX)) + 1, w)
            r0 = max(int(np.ceil(row - hr - _EPS_PX)), 0)
            r1 = min(int(np.floor(row + hr + _EPS_PX)) + 1, h)
            if c0 >= c1 or r0 >= r1:
                continue
            out[view, i] = probs[view, :, r0:r1, c0:c1].mean(axis=(1, 2), dtype=np.float64)
            covered[view, i] = True
    return out, covered


def sacrum_below(points: np.ndarray, probs: np.ndarray, geometry: drrkit.Geometry,
                 half_px: np.ndarray, weights: np.ndarray) -> float:
    """Voted sacrum probability just below the last of T points along the chain.

    The squares around ``last + s * (last - previous)`` for ``s`` in :data:`SACRUM_STEPS`
    are averaged per view as the vertebrae's are, voted with the view weights, and the
    largest of the voted sacrum probabilities is returned.

    Args:
        points: (T, 3) world mm, superior first, T >= 2.
        probs: (K, 28, H, W) class probabilities, the sacrum last.
        geometry: the K views of ``probs``.
        half_px: (K, 2) half the square's side in pixels.
        weights: (K,) view weights.

    Returns:
        the probability in [0, 1].
    """
    last, step = points[-1], points[-1] - points[-2]
    probes = last + np.outer(SACRUM_STEPS, step)  # (S, 3)
    means, _ = square_means(probs, drrkit.project_points(probes, geometry).pixels, half_px)
    return float(np.max(weights @ means[:, :, vlabels.SACRUM_CLASS]))


def _check_output(name: str, array, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if a.shape != shape:
        raise VertebraError(f"the {name} returned shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        raise VertebraError(f"the {name} returned non-finite values")
    return a


def extend_ends(chain: np.ndarray, candidates: np.ndarray, tolerance: float = 0.4
                ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates that continue a chain of vertebrae beyond its top and bottom.

    At each end the next vertebra is predicted one spacing further along the last step
    (``p_end + (p_end - p_neighbour)``); the candidate closest to the prediction is added
    when it lies within ``tolerance`` times that spacing of it, and the step repeats from
    the new end until no candidate fits. Needs at least two chain points.

    Args:
        chain: (T, 3) world mm, superior first.
        candidates: (C, 3) world mm, any order.
        tolerance: fraction of the local spacing (0 < tolerance < 1).

    Returns:
        above, below: indices into ``candidates`` of the added tracks, each in the order
        they were added (``above`` from the top upwards, ``below`` from the bottom down).

    Example:
        >>> chain = np.array([[0, 0, 60.], [0, 0, 30], [0, 0, 0]])
        >>> cands = np.array([[0, 0, -32.], [0, 2, 88], [0, 0, 45], [0, 0, -61]])
        >>> extend_ends(chain, cands)
        (array([1]), array([0, 3]))
    """
    chain = np.asarray(chain, dtype=np.float64).reshape(-1, 3)
    cands = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    free = np.ones(len(cands), dtype=bool)
    ends = []
    for end, neighbour in ((0, 1), (-1, -2)):
        added: list[int] = []
        if len(chain) >= 2:
            last, prev = chain[end], chain[neighbour]
            while free.any():
                step = last - prev
                spacing = float(np.linalg.norm(step))
                if spacing == 0:
                    break
                d = np.linalg.norm(cands - (last + step), axis=1)
                d[~free] = np.inf
                best = int(np.argmin(d))
                if not d[best] <= tolerance * spacing:
                    break
                added.append(best)
                free[best] = False
                last, prev = cands[best], last
        ends.append(np.array(added, dtype=np.int64))
    return ends[0], ends[1]


def _inside_box(volume: drrkit.Volume, points: np.ndarray, margin_mm: float) -> np.ndarray:
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    index = volume.world_to_voxel(points)
    n = np.asarray(volume.shape_xyz, dtype=np.float64)
    margin = margin_mm / np.asarray(volume.spacing, dtype=np.float64)
    return np.all((index >= -0.5 - margin) & (index <= n - 0.5 + margin), axis=-1)


def _track_scores(assign: np.ndarray, detections) -> np.ndarray:
    """(T,) mean heatmap score of each track's detections."""
    out = np.zeros(len(assign))
    for i, row in enumerate(assign):
        vals = [detections[v].scores[j] for v, j in enumerate(row) if j >= 0]
        out[i] = float(np.mean(vals)) if vals else 0.0
    return out


def _refined(points: np.ndarray, heatmaps: np.ndarray, geometry: drrkit.Geometry,
             config: PipelineConfig) -> np.ndarray:
    """(T, 3) track points moved to the heatmaps' joint maximum (``config.refine_mm``)."""
    if config.refine_mm is None or len(points) == 0:
        return points
    from drrkit.refinement import refine_points

    return refine_points(points, heatmaps, geometry, radius_mm=config.refine_mm,
                         step_mm=REFINE_STEP_MM, iterations=2).points


def _separated(points: np.ndarray, views: np.ndarray, scores: np.ndarray,
               min_gap: float) -> np.ndarray:
    """Indices (ascending) of tracks kept so that no two lie closer than ``min_gap`` mm
    along the spine.

    Greedy, best supported first: more views, then a higher mean heatmap score. The gap
    of two tracks is their offset projected on the spine's tangent
    (:func:`vertebra.chain.spine_tangents`), the smaller of the two tangents' values: a
    bone beside a vertebra shares its level, while two vertebrae of a steeply leaning
    spine (an upper thoracic kyphosis, a flexed neck) can lie only a few mm apart in
    world z.
    """
    if min_gap <= 0 or len(points) < 2:
        return np.arange(len(points))
    from vertebra.chain import spine_tangents

    tangents = spine_tangents(points)
    order = np.lexsort((-scores, -views))
    kept: list[int] = []
    for i in order:
        d = points[kept] - points[i]
        gap = np.minimum(np.abs(d @ tangents[i]), np.abs(np.sum(d * tangents[kept], axis=1)))
        if np.all(gap >= min_gap):
            kept.append(int(i))
    return np.sort(np.array(kept, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Tracks:
    """The 3-D tracks of one CT after matching (T tracks, superior first, K views).

    Attributes:
        points: (T, 3) world mm.
        assign: (T, K) index of each track's detection in each view (-1: none).
        scores: (T,) mean heatmap value of the track's detections.
        rms: (T,) RMS distance of the least-squares point from its rays, mm.
        kept: (T,) index of the track in ``correspondence`` (-1: added by the weaker
            second pass at an end).
        extended: (T,) bool, added at an end by :func:`extend_tracks`.
        correspondence: the first pass's :class:`drrkit.correspondence.Correspondence`.
        added: (T,) bool, added between two tracks by :func:`chain_tracks` (no
            detections: ``assign`` all -1, ``rms`` NaN); None: none is.
    """

    points: np.ndarray
    assign: np.ndarray
    scores: np.ndarray
    rms: np.ndarray
    kept: np.ndarray
    extended: np.ndarray
    correspondence: object
    added: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.added is None:
            object.__setattr__(self, "added", np.zeros(len(self.points), dtype=bool))

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class Identification:
    """What the identifier saw in each of its K' views around each of T tracks.

    Attributes:
        view_probs: (K', T, 26) ``P_k``, mean vertebra-class probabilities in each
            square (background and sacrum excluded).
        covered: (K', T) bool, the square lies (at least partly) on view k's detector.
        sacrum_views: (K', T) mean sacrum probability of each square (None: the
            identifier has no sacrum class).
        probs: (K', C, H, W) the identifier's output (None without tracks).
        geometry: the K' identifier views.
        half_px: (K', 2) half the square's side in pixels.
    """

    view_probs: np.ndarray
    covered: np.ndarray
    sacrum_views: np.ndarray | None
    probs: np.ndarray | None
    geometry: drrkit.Geometry
    half_px: np.ndarray


@dataclass(frozen=True, eq=False)
class Votes:
    """The views' weighted vote (T tracks, K' views).

    Attributes:
        weights: (K',) view weights ``W_k``.
        voted: (T, 26) ``V = sum_k W_k P_k``.
        sacrum: (T,) voted sacrum probability of each track's square (zeros without the
            class).
        below: voted sacrum probability just below the last track (NaN without the
            class or with fewer than two tracks).
    """

    weights: np.ndarray
    voted: np.ndarray
    sacrum: np.ndarray
    below: float


@dataclass(frozen=True, eq=False)
class Labels:
    """The corrected labels of T tracks.

    Attributes:
        classes: (T,) network class (0: unlabelled).
        confidence: (T,) label confidence.
        dropped: (T,) bool, judged not to be a vertebra (or the sacrum).
        correction: the correction of the (gap-filled) table (None without tracks).
        above_sacrum: the sacrum anchored the chain's lower end.
    """

    classes: np.ndarray
    confidence: np.ndarray
    dropped: np.ndarray
    correction: Correction | None
    above_sacrum: bool


def _tolerance_px(config: PipelineConfig, pixel_mm: np.ndarray) -> float:
    return config.tolerance_mm / float(np.mean(pixel_mm))


def match_tracks(detections, heatmaps: np.ndarray, geometry: drrkit.Geometry,
                 volume: drrkit.Volume, pixel_mm: np.ndarray, config: PipelineConfig
                 ) -> Tracks:
    """Stage ``match``, first pass: K views' detections -> 3-D tracks.

    Correspondence and triangulation (:func:`drrkit.correspondence.match_views`), the
    heatmap refinement of each point, then tracks outside the CT's box (with
    ``box_margin_mm``) and the worse of two tracks closer than ``min_separation_mm`` along
    the spine are left out.
    """
    from drrkit.correspondence import match_views

    k = len(geometry)
    min_views = config.min_views
    if min_views is not None:
        min_views = int(min(max(min_views, 2), k))
    match = match_views([d.pixels for d in detections], geometry,
                        tolerance_px=_tolerance_px(config, pixel_mm), min_views=min_views)
    found = _refined(match.points, heatmaps, geometry, config)
    scores = _track_scores(match.assignments, detections)
    kept = np.flatnonzero(_inside_box(volume, found, config.box_margin_mm))
    kept = kept[_separated(found[kept], match.views[kept], scores[kept],
                           config.min_separation_mm)]
    return Tracks(points=found[kept], assign=match.assignments[kept], scores=scores[kept],
                  rms=match.rms[kept], kept=kept, extended=np.zeros(len(kept), dtype=bool),
                  correspondence=match)


def extend_tracks(tracks: Tracks, heatmaps: np.ndarray, geometry: drrkit.Geometry,
                  volume: drrkit.Volume, pixel_mm: np.ndarray, config: PipelineConfig
                  ) -> Tracks:
    """Stage ``match``, second pass: tracks of a weaker threshold (``extend_threshold``,
    ``extend_min_views`` views) added one at a time above the top and below the bottom
    track where the next vertebra should be (:func:`extend_ends`)."""
    if config.extend_threshold is None or len(tracks) < 2:
        return tracks
    from drrkit.correspondence import match_views

    weak = detect_peaks(heatmaps, pixel_mm, replace(config,
                                                    peak_threshold=config.extend_threshold))
    more = match_views([d.pixels for d in weak], geometry,
                       tolerance_px=_tolerance_px(config, pixel_mm),
                       min_views=int(min(config.extend_min_views, len(geometry))))
    more_points = _refined(more.points, heatmaps, geometry, config)
    inside = np.flatnonzero(_inside_box(volume, more_points, config.box_margin_mm))
    above, below = extend_ends(tracks.points, more_points[inside], config.extend_tolerance)
    top, bottom = inside[above[::-1]], inside[below]
    new = np.concatenate([top, bottom])
    if not len(new):
        return tracks
    order = np.r_[np.arange(len(top)), len(new) + np.arange(len(tracks)),
                  len(top) + np.arange(len(bottom))]

    def stack(added, original):
        return np.concatenate([added, original])[order]

    return Tracks(points=stack(more_points[new], tracks.points),
                  assign=stack(more.assignments[new], tracks.assign),
                  scores=stack(_track_scores(more.assignments[new], weak), tracks.scores),
                  rms=stack(more.rms[new], tracks.rms),
                  kept=stack(np.full(len(new), -1), tracks.kept),
                  extended=stack(np.ones(len(new), dtype=bool), tracks.extended),
                  correspondence=tracks.correspondence)


def chain_tracks(tracks: Tracks, heatmaps: np.ndarray, geometry: drrkit.Geometry,
                 config: PipelineConfig) -> Tracks:
    """Stage ``match``, last step: the tracks placed as one chain along the spine
    (:func:`vertebra.chain.place_chain` on the mean heatmap over the K views). A track
    that moves keeps its detections; an added track has none, and the label correction
    keeps it (with ``drop_added`` it may drop it)."""
    if config.chain_weight is None or len(tracks) < 3:
        return tracks
    from drrkit.refinement import response
    from vertebra.chain import place_chain

    chain = place_chain(tracks.points, lambda p: response(p, heatmaps, geometry),
                        cost=config.chain_cost, weight=config.chain_weight,
                        plateau=config.chain_plateau, tolerance=config.chain_tolerance)
    src = np.maximum(chain.source, 0)
    new = chain.source < 0
    k = tracks.assign.shape[1]
    mean_heat = response(chain.points[new], heatmaps, geometry) if new.any() else 0.0
    scores = tracks.scores[src].astype(np.float64)
    scores[new] = mean_heat
    return Tracks(points=chain.points,
                  assign=np.where(new[:, None], -1, tracks.assign[src]).reshape(-1, k),
                  scores=scores, rms=np.where(new, np.nan, tracks.rms[src]),
                  kept=np.where(new, -1, tracks.kept[src]),
                  extended=tracks.extended[src] & ~new,
                  correspondence=tracks.correspondence, added=tracks.added[src] | new)


def identify_tracks(points: np.ndarray, volume: drrkit.Volume, identifier: Identifier,
                    inputs: np.ndarray, geometry: drrkit.Geometry, views: ViewConfig,
                    identifier_views: ViewConfig | None, attenuation: drrkit.Volume,
                    config: PipelineConfig, backend: str = "auto") -> Identification:
    """Stage ``identify``: the identifier's class probabilities averaged over the
    ``square_mm`` square around each track's re-projection in each of its views.

    The identifier runs on the localizer's ``inputs`` unless it has views of its own
    (``identifier_views``), which are then rendered from ``attenuation`` (the CT as the
    localizer's views integrate it, re-enhanced when the two differ).
    """
    id_geometry, id_inputs = geometry, inputs
    if identifier_views is not None and identifier_views != views:
        id_geometry = identifier_views.geometry(volume)
    k_id = len(id_geometry)
    id_mm = pixel_size_at_isocenter(id_geometry, volume.center)
    id_half = config.square_mm / 2.0 / id_mm
    if not len(points):
        return Identification(np.zeros((k_id, 0, len(vlabels.VERTEBRAE))),
                              np.zeros((k_id, 0), dtype=bool), None, None, id_geometry,
                              id_half)
    if id_geometry is not geometry:
        if not identifier_views.same_attenuation(views):
            attenuation = identifier_views.attenuation(volume)
        id_inputs = identifier_views.render(attenuation, id_geometry, backend=backend,
                                            enhanced=True)
    probs = np.asarray(identifier(id_inputs), dtype=np.float32)
    channels = vlabels.NUM_CLASSES
    if probs.ndim == 4 and probs.shape[1] == vlabels.NUM_CLASSES_WITH_SACRUM:
        channels = vlabels.NUM_CLASSES_WITH_SACRUM
    probs = _check_output("identifier", probs, (k_id, channels) + id_geometry.shape[1:])
    pixels = drrkit.project_points(points, id_geometry).pixels  # (K', T, 2)
    means, covered = square_means(probs, pixels, id_half)
    has_sacrum = channels == vlabels.NUM_CLASSES_WITH_SACRUM
    return Identification(
        view_probs=means[:, :, 1:vlabels.NUM_CLASSES],  # background (and sacrum) excluded
        covered=covered,
        sacrum_views=means[:, :, vlabels.SACRUM_CLASS] if has_sacrum else None,
        probs=probs, geometry=id_geometry, half_px=id_half)


def vote(points: np.ndarray, ident: Identification, config: PipelineConfig) -> Votes:
    """Stage ``vote``: view weights from each view's sequence loss (or equal weights with
    ``voting="mean"``), the voted class map and the sacrum evidence."""
    t = len(points)
    view_probs = ident.view_probs
    k_id = view_probs.shape[0]
    if config.fill_gaps and t:
        rows, m = gap_rows(points)
    else:
        rows, m = np.arange(t), t
    table = np.zeros((k_id, m, view_probs.shape[2]))
    table[:, rows] = view_probs
    if t and config.voting == "weighted":
        from vertebra.correction import sequence_losses
        from vertebra.sequence import SequenceDP, view_weights

        losses = sequence_losses(table, SequenceDP(config.alpha, config.beta),
                                 config.allow_t13)
        weights = np.asarray(view_weights(losses), dtype=np.float64)
    else:
        weights = np.full(k_id, 1.0 / k_id)
    voted = np.einsum("k,ktc->tc", weights, view_probs)  # (T, 26)
    sacrum, below = np.zeros(t), float("nan")
    if ident.sacrum_views is not None and config.sacrum_threshold is not None:
        sacrum = weights @ ident.sacrum_views  # (T,)
        if t >= 2:
            below = sacrum_below(points, ident.probs, ident.geometry, ident.half_px, weights)
    return Votes(weights=weights, voted=voted, sacrum=sacrum, below=below)


def correct(tracks: Tracks, votes: Votes, config: PipelineConfig) -> Labels:
    """Stage ``correct``: consecutive labels from the voted map, anchored at the sacrum
    when the identifier sees it (the last track is the sacrum and leaves, or the sacrum
    lies just below it), with suspect tracks possibly dropped
    (:func:`vertebra.correction.correct_tracks`): those added at an end, those crowding a
    neighbour, and with ``drop_added`` those the chain placement added."""
    from vertebra.sequence import SequenceDP

    t = len(tracks)
    classes = np.zeros(t, dtype=np.int64)
    confidence = np.zeros(t)
    dropped = np.zeros(t, dtype=bool)
    correction = None
    threshold = config.sacrum_threshold
    vertebra_tracks = np.arange(t)
    above_sacrum = False
    if threshold is not None and t >= 2 and votes.sacrum[-1] >= threshold:
        vertebra_tracks, above_sacrum = vertebra_tracks[:-1], True
    elif threshold is not None and votes.below >= threshold:
        above_sacrum = True
    if len(vertebra_tracks):
        v = vertebra_tracks
        points = tracks.points[v]
        suspects = tracks.extended[v] | crowded(points)
        if config.drop_added:
            suspects |= tracks.added[v]
        labels = correct_tracks(points, votes.voted[v], suspects=suspects,
                                max_drops=config.max_drops, method=config.correction,
                                dp=SequenceDP(config.alpha, config.beta),
                                allow_t13=config.allow_t13, fill_gaps=config.fill_gaps,
                                above_sacrum=above_sacrum)
        correction = labels.correction
        classes[v], confidence[v] = labels.classes, labels.confidence
        dropped[:] = True
        dropped[v] = labels.dropped
    return Labels(classes=classes, confidence=confidence, dropped=dropped,
                  correction=correction, above_sacrum=above_sacrum)


def _median_confidence(vertebrae) -> float:
    """Median label confidence of :class:`LabelledVertebra` items (NaN for none)."""
    if not vertebrae:
        return float("nan")
    return float(np.median([v.confidence for v in vertebrae]))


def labelled_vertebrae(tracks: Tracks, labels: Labels) -> tuple[LabelledVertebra, ...]:
    """The labelled tracks as :class:`LabelledVertebra`, superior first; warns about
    tracks left without a label and when none is labelled."""
    n_views = (tracks.assign >= 0).sum(axis=1)
    vertebrae = []
    for i in range(len(tracks)):
        if labels.classes[i] == 0:
            continue
        row = vlabels.by_class(int(labels.classes[i]))
        vertebrae.append(LabelledVertebra(
            row.verse_id, row.name, row.region, tracks.points[i].copy(),
            float(labels.confidence[i]), float(tracks.scores[i]), int(n_views[i]),
            float(tracks.rms[i]), bool(tracks.added[i])))
    unlabelled = int(np.sum((labels.classes == 0) & ~labels.dropped))
    if unlabelled:
        warnings.warn(f"{unlabelled} detected vertebrae could not be given a label "
                      "(more detections than vertebra classes)", stacklevel=3)
    if not vertebrae:
        warnings.warn("no spine found: no vertebra was detected in enough views",
                      stacklevel=3)
    else:
        median = _median_confidence(vertebrae)
        if median < UNCERTAIN_CONFIDENCE:
            warnings.warn(f"labels uncertain: median label confidence {median:.2f} (below "
                          f"{UNCERTAIN_CONFIDENCE}); the levels may be off, check them",
                          stacklevel=3)
        if not vlabels.landmarks([v.verse_id for v in vertebrae], labels.above_sacrum):
            warnings.warn("no landmark in view (skull base, first or last rib, sacrum): the "
                          "levels are counted from the vertebrae's shapes alone and may be "
                          "off, check them", stacklevel=3)
    return tuple(vertebrae)


def _orbits(views: ViewConfig | None, identifier_views: ViewConfig | None,
            config: PipelineConfig) -> tuple[ViewConfig, ViewConfig | None]:
    """The localizer's and the identifier's views: ``config.localizer_views`` changes the
    localizer's K, and the identifier then keeps the views it was trained on."""
    views = ViewConfig() if views is None else views
    if config.localizer_views is not None and config.localizer_views != views.views:
        identifier_views = views if identifier_views is None else identifier_views
        views = replace(views, views=int(config.localizer_views))
    if views.views < 2:
        raise VertebraError("labelling needs at least two views")
    return views, identifier_views


class _Clock:
    """Seconds per stage, and the progress callback called as each stage starts."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def start(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name)

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now


def slice_spacing(volume: drrkit.Volume) -> float:
    """Spacing (mm) of the index axis that runs closest to world z: the CT's slices."""
    return float(volume.spacing[volume.slice_axis])


def hu_scale_problem(volume: drrkit.Volume, mu_water: float | None = None) -> str | None:
    """Why the volume's attenuation does not look like a CT read from HU, or None.

    A CT in HU always holds something darker than :data:`DARKEST_EXPECTED_HU` (air
    outside the body, lung, bowel gas or at least fat), and a CT for vertebra labelling
    holds bone, above :data:`BONE_HU` in at least :data:`BONE_SHARE_EXPECTED` of its
    voxels. A file stored without its rescale intercept (air at 0, water at 1024) has
    nothing that dark; an MR image, or a CT whose intercept was applied twice, has no bone.

    Args:
        volume: attenuation in 1/mm (``drrkit.load_volume`` of a CT in HU).
        mu_water: attenuation of water in 1/mm (default :data:`drrkit.volume.MU_WATER`).
    """
    from drrkit.volume import MU_WATER, hu_to_mu

    mu_water = MU_WATER if mu_water is None else float(mu_water)
    data = np.asarray(volume.data)
    darkest = float(data.min()) / mu_water * 1000.0 - 1000.0
    if darkest >= DARKEST_EXPECTED_HU:
        return (f"no voxel below {darkest:.0f} HU, where air, lung or fat lie far below: is the "
                "CT in HU? (a missing rescale intercept stores air at 0)")
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)]
    bone = float(np.mean(sample > hu_to_mu(BONE_HU, mu_water)))
    if bone < BONE_SHARE_EXPECTED:
        return (f"only {100 * bone:.2g} % of the voxels above {BONE_HU:g} HU: no bone "
                "in view, or not a CT in HU")
    return None


def _check_volume(volume) -> None:
    """Refuse anything but a :class:`drrkit.Volume`; warn when its slices lie more than
    :data:`THICK_SLICE_WARN_MM` apart, and when its values do not look like a CT in HU
    (:func:`hu_scale_problem`)."""
    if not isinstance(volume, drrkit.Volume):
        raise VertebraError("volume must be a drrkit.Volume (see drrkit.load_volume)")
    problem = hu_scale_problem(volume)
    if problem is not None:
        warnings.warn(f"{problem}; the labels are likely wrong", stacklevel=3)
    spacing = slice_spacing(volume)
    if spacing > THICK_SLICE_WARN_MM:
        warnings.warn(f"slices {spacing:.1f} mm apart (more than {THICK_SLICE_WARN_MM:g} mm): "
                      "thick slices can merge vertebrae, so the levels may be off; check them",
                      stacklevel=3)


def label_ct(
    volume: drrkit.Volume,
    localizer: Localizer,
    identifier: Identifier,
    *,
    views: ViewConfig | None = None,
    identifier_views: ViewConfig | None = None,
    config: PipelineConfig | None = None,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> LabelResult:
    """Label the vertebrae of one CT: the stages of the module docstring, in turn.

    Args:
        volume: the CT as attenuation in 1/mm (``drrkit.load_volume``), any orientation.
        localizer: (K, H, W) float32 inputs -> (K, H, W) heatmaps.
        identifier: (K, H, W) float32 inputs -> (K, C, H, W) probabilities, C = 27
            (channel 0 background, 1..26 the classes of :mod:`vertebra.labels`).
        views: how the CT becomes network inputs (must be the networks' training views).
        identifier_views: the identifier's own views when trained on others (coarser
            pixels: identification needs context), rendered apart; None: ``views``.
        config: settings of the later stages.
        backend: drrkit render backend ("auto", "cpu", "cuda").
        progress: called with each stage's name as it starts.

    Returns: :class:`LabelResult`.
    """
    _check_volume(volume)
    config = config or PipelineConfig()
    views, identifier_views = _orbits(views, identifier_views, config)
    if config.mirror:  # test-time mirroring
        localizer, identifier = MirroredNetwork(localizer), MirroredNetwork(identifier)
    clock = _Clock(progress)

    clock.start("render")
    cleaned, scene = scenes(volume, config)
    geometry = views.geometry(scene)
    attenuation = views.attenuation(scene)  # bone-enhanced once for both networks' views
    inputs = views.render(attenuation, geometry, backend=backend, enhanced=True)
    clock.done("render")

    clock.start("localize")
    heatmaps = _check_output("localizer", localizer(inputs), geometry.shape)
    clock.done("localize")

    clock.start("peaks")
    pixel_mm = pixel_size_at_isocenter(geometry, volume.center)  # (K, 2)
    detections = detect_peaks(heatmaps, pixel_mm, config)
    clock.done("peaks")

    clock.start("match")
    tracks = match_tracks(detections, heatmaps, geometry, volume, pixel_mm, config)
    tracks = extend_tracks(tracks, heatmaps, geometry, volume, pixel_mm, config)
    tracks = chain_tracks(tracks, heatmaps, geometry, config)
    clock.done("match")

    clock.start("identify")
    ident = identify_tracks(tracks.points, scene, identifier, inputs, geometry, views,
                            identifier_views, attenuation, config, backend)
    clock.done("identify")

    clock.start("vote")
    votes = vote(tracks.points, ident, config)
    clock.done("vote")

    clock.start("correct")
    labels = correct(tracks, votes, config)
    vertebrae = labelled_vertebrae(tracks, labels)
    clock.done("correct")
    return LabelResult(
        vertebrae=vertebrae, status="ok" if vertebrae else NO_SPINE, points=tracks.points,
        classes=labels.classes, confidence=labels.confidence,
        n_views=(tracks.assign >= 0).sum(axis=1), view_probs=ident.view_probs,
        covered=ident.covered, weights=votes.weights, voted=votes.voted,
        dropped=labels.dropped, correction=labels.correction, detections=tuple(detections),
        correspondence=tracks.correspondence, kept=tracks.kept, extended=tracks.extended,
        geometry=geometry, inputs=inputs, heatmaps=heatmaps, timings=clock.timings,
        sacrum=votes.sacrum, sacrum_below=votes.below,
        above_sacrum=bool(labels.above_sacrum and len(vertebrae)), added=tracks.added,
        completed=scene is not cleaned, suppressed=cleaned is not volume)


def scenes(volume: drrkit.Volume, config: PipelineConfig
           ) -> tuple[drrkit.Volume, drrkit.Volume]:
    """(cleaned, scene) of ``volume`` under ``config.dense_hu`` and ``config.complete_body``:
    :func:`vertebra.scene.network_scene`, the rule training shares."""
    return network_scene(volume, dense_hu=config.dense_hu,
                         complete_body=bool(config.complete_body))


# ---------------------------------------------------------------------- torch networks
class TorchNetwork:
    """A torch U-Net as a pipeline callable: (K, H, W) float32 -> NumPy maps.

    Views are run by :func:`run_unet` in batches of ``batch_size`` on ``device``.
    ``output`` picks the head: "heatmap" gives (K, H, W) heatmap values (the head after the
    model's activation), and "probabilities" gives (K, C, H, W) ``softmax(logits)``. Two
    adapters that wrap the same two-headed model (``task="both"``) share one forward pass
    per input array.

    Args:
        model: a :class:`vertebra.models.UNet` (or any module returning ``UNetOutput``).
        output: "heatmap" or "probabilities".
        device: torch device string ("cpu", "cuda", "cuda:1").
        batch_size: views per forward pass.
        precision: "float32" or "bfloat16" (see :func:`run_unet`).
    """

    def __init__(self, model, output: str, device: str = "cpu", batch_size: int = 4,
                 precision: str = "float32") -> None:
        if output not in ("heatmap", "probabilities"):
            raise VertebraError(f"unknown output {output!r}; choose heatmap or probabilities")
        if int(batch_size) < 1:
            raise VertebraError(f"batch_size must be >= 1, got {batch_size}")
        _check_precision(precision)
        import torch

        layout = torch.channels_last if precision == "bfloat16" else torch.contiguous_format
        self.model = model.to(device).to(memory_format=layout).eval()
        self.output = output
        self.device = device
        self.batch_size = int(batch_size)
        self.precision = precision

    def _forward(self, inputs: np.ndarray):
        cached = getattr(self.model, "_vertebra_last", None)
        if cached is not None and cached[0] is inputs:
            return cached[1]
        result = run_unet(self.model, inputs, batch_size=self.batch_size, device=self.device,
                          precision=self.precision)
        if all(r is not None for r in result):  # two heads: both adapters share one pass
            self.model._vertebra_last = (inputs, result)
        return result

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        heat, prob = self._forward(inputs)
        out = heat if self.output == "heatmap" else prob
        if out is None:
            raise VertebraError(f"the model has no {self.output} head "
                                f"(task {getattr(self.model, 'config', {}).get('task')!r})")
        return out


class MeanNetwork:
    """An ensemble as one pipeline callable: the mean of its members' outputs.

    Each member (a :class:`TorchNetwork` or any callable of the same kind) maps the same
    (K, H, W) inputs to maps of one shape: heatmap values (K, H, W) for localizers, class
    probabilities (K, C, H, W) for identifiers, whose mean is again a probability map.
    Networks trained apart err apart, so their mean is steadier than each of them on
    scans unlike their training data.

    Args:
        members: two or more pipeline callables.
    """

    def __init__(self, members) -> None:
        self.members = tuple(members)
        if len(self.members) < 2:
            raise VertebraError(f"an ensemble needs at least two networks, got "
                                f"{len(self.members)}")

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        total = None
        for member in self.members:
            out = np.asarray(member(inputs), dtype=np.float32)
            if total is not None and out.shape != total.shape:
                raise VertebraError(f"ensemble members disagree on the output shape: "
                                    f"{total.shape} and {out.shape}")
            total = out if total is None else total + out
        return total / len(self.members)


class MirroredNetwork:
    """Test-time mirroring: the mean of a network's outputs on the views and on the same
    views mirrored left to right (the detector's u axis, the last array axis, reversed),
    the second output mirrored back.

    A mirrored DRR is a DRR of the mirrored body, whose vertebrae sit at the mirrored
    pixels and keep their labels, so both passes estimate the same heatmap or class
    probabilities. Where a network is unsure (scans unlike its training data) the two
    passes err apart and their mean is steadier, as an ensemble's is. Up and down are
    never swapped: the order of the spine is what the identifier reads.

    Args:
        network: a pipeline callable, (K, H, W) float32 inputs -> (K, H, W) heatmaps or
            (K, C, H, W) probabilities.
    """

    def __init__(self, network) -> None:
        self.network = network

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs, dtype=np.float32)
        plain = np.asarray(self.network(inputs), dtype=np.float32)
        mirrored = np.asarray(self.network(np.ascontiguousarray(inputs[..., ::-1])),
                              dtype=np.float32)
        if mirrored.shape != plain.shape:
            raise VertebraError(f"the network's output on mirrored views has shape "
                                f"{mirrored.shape}, on the views {plain.shape}")
        return (plain + mirrored[..., ::-1]) / 2


def run_unet(model, inputs: np.ndarray, *, batch_size: int = 4, device="cpu",
             precision: str = "float32"):
    """Run a U-Net on whole views without gradients, in eval mode.

    Views are zero-padded at the bottom and right to a multiple of :data:`PAD_MULTIPLE`
    pixels (the U-Net strides) and the outputs cropped back. The heatmap head goes through
    :func:`vertebra.models.heatmap_values` (the model's activation), the logits through a
    softmax. The model's training mode is restored afterwards.

    Args:
        model: a :class:`vertebra.models.UNet` (or any module returning ``UNetOutput``).
        inputs: (K, H, W) float32 network inputs.
        batch_size: views per forward pass.
        device: torch device.
        precision: "float32", or "bfloat16": the forward pass under ``torch.autocast``
            with channels-last images, as the CPU recipes train (``cpu_bf16``); the
            outputs are float32 either way.

    Returns:
        (heatmaps (K, H, W) float32 or None, probabilities (K, C, H, W) float32 or None),
        None for a head the model does not have.
    """
    import torch

    from vertebra.models import heatmap_values

    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 3:
        raise VertebraError(f"inputs must be (K, H, W), got {x.shape}")
    _check_precision(precision)
    k, h, w = x.shape
    pad = ((0, 0), (0, -h % PAD_MULTIPLE), (0, -w % PAD_MULTIPLE))
    heat, prob = [], []
    half = precision == "bfloat16"
    kind = torch.device(device).type
    layout = torch.channels_last if half else torch.contiguous_format
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=half):
            for start in range(0, k, batch_size):
                batch = torch.from_numpy(np.pad(x[start:start + batch_size], pad))
                out = model(batch[:, None].to(device).contiguous(memory_format=layout))
                if out.heatmap is not None:
                    values = heatmap_values(model, out.heatmap[:, 0, :h, :w])
                    heat.append(values.float().cpu().numpy())
                if out.logits is not None:
                    prob.append(torch.softmax(out.logits[:, :, :h, :w].float(), dim=1)
                                .cpu().numpy())
    finally:
        model.train(was_training)
    return (np.concatenate(heat) if heat else None, np.concatenate(prob) if prob else None)


def resolve_device(device: str | None) -> str:
    """"auto"/None -> "cuda" when torch sees a GPU, else "cpu"; others are checked."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VertebraError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VertebraError(f"device {device!r} needs a CUDA GPU and none is usable; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise VertebraError(f"device {device!r} is not supported; use cpu or cuda")
    return str(dev)


#: Precisions of the networks' forward passes: "auto" picks one of the others.
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str | None, device: str) -> str:
    """"auto"/None -> "bfloat16" on a CPU that computes it natively (AVX-512 BF16 or AMX;
    the CPU recipes train their forward passes in it, and it is the faster path there:
    decision ``bf16-inference``), else "float32"; others are checked."""
    if precision in (None, "auto"):
        from vertebra.training.trainer import cpu_has_bf16

        native = str(device).startswith("cpu") and cpu_has_bf16()
        return "bfloat16" if native else "float32"
    _check_precision(precision)
    return str(precision)


def _check_precision(precision) -> None:
    if precision not in PRECISIONS[1:]:
        raise VertebraError(f"unknown precision {precision!r}; choose "
                            f"{', '.join(PRECISIONS)}")


# ---------------------------------------------------------------------- checkpoints
#: Keys under which a checkpoint may carry its :class:`ViewConfig` (as a dict).
VIEW_KEYS = ("view_config", "views")


@dataclass(frozen=True, eq=False)
class Networks:
    """Both networks as pipeline callables, with the views they were trained on.

    Attributes:
        localizer: (K, H, W) -> (K, H, W) heatmaps (an ensemble's: their mean).
        identifier: (K', H', W') -> (K', C, H', W') probabilities (likewise).
        views: the localizer's :class:`ViewConfig` (default if none was stored).
        identifier_views: the identifier's, when it differs from ``views`` (else None);
            pass both to :func:`label_ct`.
        device: the torch device they run on.
        settings: :class:`PipelineConfig` fields taken from the identifier's training
            configuration (``square_mm``, ``alpha``, ``beta``), then a bundle's own
            ``pipeline`` settings (:func:`bundle_networks`), to be used at inference.
        source: where they came from: ``{"path"}`` of each file read (``"localizer"`` and
            ``"identifier"`` paths for two files), and a networks file's record
            (:func:`vertebra.weights.describe`: recipe, training data, commit, sha256).
        precision: their forward passes' precision, "float32" or "bfloat16".
    """

    localizer: TorchNetwork | MeanNetwork
    identifier: TorchNetwork | MeanNetwork
    views: ViewConfig
    device: str
    settings: dict = field(default_factory=dict)
    identifier_views: ViewConfig | None = None
    source: dict = field(default_factory=dict)
    precision: str = "float32"


def _model_from_state(ckpt: dict, where: str):
    """Rebuild a model from a ``save_model`` dict."""
    from vertebra.models import _kind, create_model

    if _kind(ckpt) != "model":
        raise VertebraError(f"{where} is not a vertebra model checkpoint (no model/config/"
                            "state_dict)")
    config = dict(ckpt["config"])
    name = config.pop("name", ckpt["model"])
    model = create_model(name, **config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as error:
        raise VertebraError(f"{where}: weights do not fit the stored config: "
                            f"{str(error).splitlines()[0]}") from None
    return model


def _views_of(ckpt: dict) -> ViewConfig | None:
    for key in VIEW_KEYS:
        if isinstance(ckpt.get(key), dict):
            return ViewConfig.from_dict(ckpt[key])
    return None


#: Training settings (``train_config`` of a checkpoint) that the pipeline reuses.
_TRAINED_SETTINGS = ("square_mm", "alpha", "beta")


def _settings_of(ckpt: dict) -> dict:
    train = ckpt.get("train_config")
    if not isinstance(train, dict):
        return {}
    return {k: float(train[k]) for k in _TRAINED_SETTINGS if k in train}


def _read_models(path) -> tuple[dict, dict, dict]:
    """{"localization"|"identification"|"both": [model, ...]}, {same key: [its ViewConfig
    or None, ...]} and the identifier's training settings of one file (a checkpoint, a
    bundle, or a networks file of :mod:`vertebra.weights`). A bundle of an ensemble gives
    several models per task, in the order of its parts."""
    from vertebra import weights

    ckpt = _read_file(path)
    top = _views_of(ckpt)
    found, views, settings = {}, {}, {}
    parts = [(key, sub) for key, sub in ckpt.items()
             if weights.is_part(key) and isinstance(sub, dict)]
    if parts:  # a bundle holding both networks (or an ensemble of each)
        for key, sub in parts:
            task = "localization" if key.startswith("localizer") else "identification"
            found.setdefault(task, []).append(_model_from_state(sub, f"{path} [{key}]"))
            views.setdefault(task, []).append(_views_of(sub) or top)
            if key == "identifier":
                settings = _settings_of(sub)
        settings.update(ckpt.get("pipeline") or {})
    else:
        model = _model_from_state(ckpt, str(path))
        found[model.config["task"]] = [model]
        views[model.config["task"]] = [top]
        settings = _settings_of(ckpt)
    return found, views, settings


def _checkpoints_of(path, key: str) -> list[dict]:
    """The ``key`` ("localizer" or "identifier") checkpoints a file holds, each checked to
    load: a model checkpoint itself, or every such member of a bundle or networks file
    (with the bundle's views where a member stores none)."""
    from vertebra import weights

    ckpt = _read_file(path)
    parts = [(name, sub) for name, sub in ckpt.items()
             if weights.is_part(name) and name.startswith(key) and isinstance(sub, dict)]
    if not parts:
        if any(weights.is_part(name) for name in ckpt):
            raise VertebraError(f"{path} is a bundle without a {key}")
        _model_from_state(ckpt, str(path))  # check it loads
        return [ckpt]
    top = _views_of(ckpt)
    members = []
    for name, sub in parts:
        _model_from_state(sub, f"{path} [{name}]")
        if _views_of(sub) is None and top is not None:
            sub = {**sub, "view_config": top.to_dict()}
        members.append(sub)
    return members


def stored_pipeline(path) -> dict:
    """The ``pipeline`` settings a bundle or networks file stores (:func:`bundle_networks`;
    {} for a checkpoint of one network)."""
    return dict(_read_file(path).get("pipeline") or {})


def _read_file(path) -> dict:
    """A checkpoint or bundle as saved, or a networks file of :mod:`vertebra.weights` as the
    bundle it was exported from."""
    from vertebra import weights
    from vertebra.models import read_checkpoint

    return weights.read_networks(path) if weights.is_networks_file(path) else read_checkpoint(path)


def bundle_networks(localizer, identifier, out, pipeline: dict | None = None) -> None:
    """Write one file holding both networks (for ``vertebra label --model``).

    ``{"localizer": ckpt, "identifier": ckpt, "view_config": {...}, "pipeline": {...}}``
    where each ``ckpt`` is the model checkpoint as saved (optimizer state dropped) with its
    own views; the top ``view_config`` is the localizer's. Given several checkpoints of a
    network, the bundle is an ensemble: the first is stored as above and the others as
    ``"localizer_2"``, ``"localizer_3"``, ... (likewise the identifier), and
    :func:`load_networks` averages their outputs (:class:`MeanNetwork`); the members of a
    network must share its views. Written atomically.

    Args:
        localizer, identifier: model checkpoint paths (``save_model`` / training files),
            one each or a sequence of them (an ensemble). A bundle or networks file given
            here brings all its localizers (identifiers) as members, so an ensemble grows
            from a shipped one.
        out: the bundle path.
        pipeline: :class:`PipelineConfig` fields these networks are best labelled with
            (e.g. ``{"localizer_views": 20}``); :func:`load_networks` returns them in
            ``Networks.settings``.
    """
    import torch

    from drrkit.io import atomic_write

    pipeline = dict(pipeline or {})
    unknown = sorted(set(pipeline) - set(PipelineConfig.__dataclass_fields__))
    if unknown:
        raise VertebraError(f"unknown pipeline settings: {', '.join(unknown)}")
    PipelineConfig(**pipeline)  # bad values fail here, not when labelling
    parts = {}
    for key, paths in (("localizer", localizer), ("identifier", identifier)):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise VertebraError(f"no {key} checkpoint given")
        members = [ckpt for path in paths for ckpt in _checkpoints_of(path, key)]
        for n, ckpt in enumerate(members, start=1):
            parts[key if n == 1 else f"{key}_{n}"] = {k: v for k, v in ckpt.items()
                                                      if k != "optimizer"}
        own = [_views_of(parts[k]) for k in parts if k.startswith(key)]
        if any(v != own[0] for v in own):
            raise VertebraError(f"the {key} checkpoints were trained on different views; "
                                "an ensemble's members must share them")
    views = [_views_of(parts["localizer"]), _views_of(parts["identifier"])]
    bundle = {"format": "vertebra.networks", **parts, "pipeline": pipeline}
    if views[0] or views[1]:
        bundle["view_config"] = (views[0] or views[1]).to_dict()
    atomic_write(out, lambda tmp: torch.save(bundle, tmp))


def load_networks(model=None, localizer=None, identifier=None, *, device: str | None = "auto",
                  batch_size: int = 4, precision: str | None = "auto") -> Networks:
    """Load the localization and identification networks for :func:`label_ct`.

    Either ``model`` (one file holding both: a two-headed U-Net, ``task="both"``, a
    bundle ``{"localizer": ckpt, "identifier": ckpt, "view_config": {...}}``, or a
    networks file of :mod:`vertebra.weights`), or ``localizer`` and ``identifier`` (one
    model checkpoint each, as written by :func:`vertebra.models.save_model`), or none of
    them: the default networks (:func:`vertebra.weights.default_path`: ``$VERTEBRA_WEIGHTS``
    or the packaged ``vertebra/weights/default.safetensors``). Each network's
    :class:`ViewConfig` comes from the ``"view_config"`` entry of its checkpoint; they may
    differ (e.g. an identifier on coarser pixels), see :attr:`Networks.identifier_views`.

    Args:
        model, localizer, identifier: checkpoint paths (see above).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
        batch_size: views per forward pass.
        precision: "auto" (bfloat16 on a CPU that computes it natively, else float32),
            "float32" or "bfloat16" (:func:`resolve_precision`).
    """
    from vertebra import weights

    if model is not None and (localizer is not None or identifier is not None):
        raise VertebraError("give either one checkpoint holding both networks, or a localizer "
                            "and an identifier checkpoint, not both")
    if model is None and (localizer is None) != (identifier is None):
        raise VertebraError("need a checkpoint holding both networks, or both a localizer and "
                            "an identifier checkpoint")
    if model is None and localizer is None:
        model = weights.default_path()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if model is not None:
        found, views, settings = _read_models(model)
        source = weights.describe(model)
        loc_key = "localization" if "localization" in found else "both"
        ide_key = "identification" if "identification" in found else "both"
        if loc_key not in found or ide_key not in found:
            have = ", ".join(sorted(found))
            raise VertebraError(f"{model} holds only a {have} network; pass --localizer and "
                                "--identifier checkpoints instead")
        locs, ides = found[loc_key], found[ide_key]
        if any(len(set(map(repr, views[key]))) > 1 for key in (loc_key, ide_key)):
            raise VertebraError(f"{model}: the members of its ensemble were trained on "
                                "different views")
        views_l, views_i = views[loc_key][0], views[ide_key][0]
    else:
        source = {"localizer": str(localizer), "identifier": str(identifier)}
        found_l, all_l, _ = _read_models(localizer)
        found_i, all_i, settings = _read_models(identifier)
        loc_key = "localization" if "localization" in found_l else "both"
        ide_key = "identification" if "identification" in found_i else "both"
        if loc_key not in found_l:
            raise VertebraError(f"{localizer} has no localization head")
        if ide_key not in found_i:
            raise VertebraError(f"{identifier} has no identification head")
        locs, ides = found_l[loc_key], found_i[ide_key]
        views_l, views_i = all_l[loc_key][0], all_i[ide_key][0]
    classes = {ide.config["num_classes"] for ide in ides}
    if len(classes) > 1:
        raise VertebraError(f"the identification networks disagree on the classes: "
                            f"{sorted(classes)}")
    if not classes <= {vlabels.NUM_CLASSES, vlabels.NUM_CLASSES_WITH_SACRUM}:
        raise VertebraError(f"the identification network has {classes.pop()} classes;"
                            f" the pipeline needs {vlabels.NUM_CLASSES} (background + 26) or "
                            f"{vlabels.NUM_CLASSES_WITH_SACRUM} (and the sacrum)")
    views = views_l or views_i
    if views is None:
        warnings.warn("the checkpoint carries no view_config; using the default ViewConfig()",
                      stacklevel=2)
        views = ViewConfig()
    own = views_i if views_i is not None and views_i != views else None
    return Networks(_network(locs, "heatmap", device, batch_size, precision),
                    _network(ides, "probabilities", device, batch_size, precision), views,
                    device, settings, own, source, precision)


def _network(models: list, output: str, device: str, batch_size: int, precision: str):
    """One :class:`TorchNetwork`, or the :class:`MeanNetwork` of several (an ensemble)."""
    nets = [TorchNetwork(m, output, device, batch_size, precision) for m in models]
    return nets[0] if len(nets) == 1 else MeanNetwork(nets)
