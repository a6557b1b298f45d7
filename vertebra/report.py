"""Pictures of a labelling a person would look at: the K views and reformats of the CT.

* :func:`views_figure`: the K network inputs (DRRs) in a grid, each with the 2-D
  detections (small crosses) and the labelled 3-D centroids re-projected into the view
  (coloured by region, with names), the view's angle and its voting weight.
* :func:`reformat`: a sagittal or coronal slice of the CT through the spine. The plane
  follows the spine: for a sagittal picture the slice at height z is taken at the x of
  the spine there (interpolated between the labelled centroids), for a coronal picture at
  its y, so a curved (scoliotic or lordotic) spine stays in the picture. Sampled on a
  regular world grid (``mm_per_pixel``) with ``scipy.ndimage.map_coordinates``, so any
  voxel spacing and storage orientation give an undistorted picture. Superior is up;
  sagittal pictures have anterior on the left, coronal pictures the patient's right on
  the left (radiological convention).

Colours: cervical yellow, thoracic cyan, lumbar magenta; ground truth (when given) as
white rings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import drrkit
from drrkit.errors import DrrkitError
from drrkit.images import display_window, to_uint8
from vertebra import labels as vlabels
from vertebra.errors import VertebraError

REGION_COLOURS = {"cervical": (255, 215, 0), "thoracic": (0, 220, 255),
                  "lumbar": (255, 60, 200)}
DETECTION_COLOUR = (255, 140, 0)
TRUTH_COLOUR = (255, 255, 255)
PLANES = ("sagittal", "coronal")

#: Bone window in HU (level 400, width 1800) for the reformats.
BONE_WINDOW_HU = (-500.0, 1300.0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _colour(verse_id: int) -> tuple[int, int, int]:
    return REGION_COLOURS[vlabels.region_of(verse_id)]


def _marker(draw, x: float, y: float, r: float, colour, *, ring: bool = False) -> None:
    box = (x - r, y - r, x + r, y + r)
    if ring:
        draw.ellipse(box, outline=colour, width=1)
    else:
        draw.ellipse(box, fill=colour, outline=(0, 0, 0))


# ---------------------------------------------------------------------- views
def _marker_radius(geometry: drrkit.Geometry, scale: float) -> float:
    """Marker radius in picture pixels: about 3 mm at the isocentre, 3 to 6 pixels."""
    from vertebra.targets import default_isocenter, pixel_size_at_isocenter

    try:
        mm = float(np.mean(pixel_size_at_isocenter(geometry, default_isocenter(geometry))))
        return float(np.clip(3.0 / mm * scale, 3.0, 6.0))
    except DrrkitError:
        return 4.0


def _mark_tile(draw, marks, to_sheet, on_tile, radius: float, font) -> None:
    """Draw one view's detections (crosses), ground truth (white rings) and labelled
    centroids (filled, named) on its tile.

    Args:
        marks: ((D, 2) detection pixels, (G, 2) ground-truth pixels, (VerSe id, (2,)
            pixel) pairs of the labelled vertebrae), all in view pixels.
        to_sheet, on_tile: view pixel -> picture point, and whether a point is on the tile.
    """
    detections, truth, labelled = marks
    for p in detections:
        x, y = to_sheet(p)
        if on_tile(x, y):
            s = radius * 0.8
            draw.line((x - s, y - s, x + s, y + s), fill=DETECTION_COLOUR, width=1)
            draw.line((x - s, y + s, x + s, y - s), fill=DETECTION_COLOUR, width=1)
    for p in truth:
        x, y = to_sheet(p)
        if np.isfinite(x) and on_tile(x, y):
            _marker(draw, x, y, radius + 3, TRUTH_COLOUR, ring=True)
    for vid, p in labelled:
        x, y = to_sheet(p)
        if not (np.isfinite(x) and on_tile(x, y)):
            continue
        _marker(draw, x, y, radius, _colour(vid))
        draw.text((x + radius + 3, y - 7), vlabels.name_of(vid), fill=_colour(vid),
                  font=font, stroke_width=1, stroke_fill=(0, 0, 0))


def views_figure(result, *, truth: dict | None = None, columns: int | None = None,
                 tile: int = 400, gap: int = 4):
    """The K views with detections and labelled centroids, as one RGB picture.

    Args:
        result: a :class:`vertebra.pipeline.LabelResult`.
        truth: optional {VerSe id: (3,) world mm} ground truth, drawn as white rings.
        columns: tiles per row (default ceil(K / 2) up to 5).
        tile: largest tile side in pixels (views are scaled to fit, never shrunk below
            their size by more than needed).
        gap: pixels between tiles.

    Returns:
        a PIL RGB image.
    """
    from PIL import Image, ImageDraw

    images = to_uint8(result.inputs)
    k, h, w = images.shape
    geometry = result.geometry
    columns = columns or min(5, max(1, math.ceil(k / 2)))
    rows = math.ceil(k / columns)
    scale = tile / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font = _font(max(11, min(16, tw // 20)))
    caption = 22
    sheet = Image.new("RGB", (columns * tw + (columns + 1) * gap,
                              rows * (th + caption) + (rows + 1) * gap), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    ids = [v.verse_id for v in result.vertebrae]
    pts = np.array([v.world for v in result.vertebrae]).reshape(-1, 3)
    proj = drrkit.project_points(pts, geometry).pixels if len(pts) else np.zeros((k, 0, 2))
    truth_ids, truth_px = [], np.zeros((k, 0, 2))
    if truth:
        truth_ids = list(truth)
        truth_px = drrkit.project_points(
            np.array([truth[i] for i in truth_ids], dtype=np.float64).reshape(-1, 3),
            geometry).pixels
    radius = _marker_radius(geometry, scale)
    for view in range(k):
        r, c = divmod(view, columns)
        x0 = gap + c * (tw + gap)
        y0 = gap + r * (th + caption + gap)
        picture = Image.fromarray(images[view]).convert("RGB").resize(
            (tw, th), Image.Resampling.BILINEAR)
        sheet.paste(picture, (x0, y0 + caption))
        angle = geometry.angles_deg[view]
        weight = result.weights[view] if len(result.weights) == k else float("nan")
        label = f"view {view}" + (f"  {angle:.0f}\N{DEGREE SIGN}" if np.isfinite(angle) else "")
        if np.isfinite(weight):
            label += f"  W={weight:.3f}"
        draw.text((x0 + 3, y0 + 3), label, fill=(230, 230, 230), font=font)

        def to_sheet(p, x0=x0, y0=y0):
            return x0 + (p[0] + 0.5) * scale - 0.5, y0 + caption + (p[1] + 0.5) * scale - 0.5

        def on_tile(x, y, x0=x0, y0=y0):
            return x0 <= x < x0 + tw and y0 + caption <= y < y0 + caption + th

        marks = (result.detections[view].pixels, truth_px[view], zip(ids, proj[view]))
        _mark_tile(draw, marks, to_sheet, on_tile, radius, font)
    if getattr(result, "status", "ok") != "ok":
        draw.text((gap + 4, gap + caption + 4), result.status, fill=(255, 80, 80), font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return sheet


# ---------------------------------------------------------------------- reformats
def _spine_curve(centroids: dict, volume: drrkit.Volume):
    """z (ascending) and the (x, y) of the spine there, from the centroids (or the CT centre)."""
    if centroids:
        pts = np.array([np.asarray(v, dtype=np.float64) for v in centroids.values()])
        order = np.argsort(pts[:, 2])
        return pts[order, 2], pts[order, :2]
    c = volume.center
    return np.array([c[2]]), c[None, :2]


def reformat(volume: drrkit.Volume, centroids: dict | None = None, plane: str = "sagittal",
             *, mm_per_pixel: float = 1.0, window: tuple[float, float] | None = None):
    """A slice of the CT through the spine on a regular world grid.

    Args:
        volume: the CT (any units; HU or attenuation).
        centroids: {VerSe id: (3,) world mm} the plane follows (and the labels drawn by
            :func:`reformat_figure`); None or empty: a flat plane through the CT's centre.
        plane: "sagittal" (columns = world y, anterior left) or "coronal" (columns =
            world x, the patient's right on the left).
        mm_per_pixel: sampling step of the picture in mm.
        window: (low, high) grey window in the volume's units; default a robust window of
            the slice.

    Returns:
        ``(image (R, C) uint8, to_pixel)`` where ``to_pixel(points (N, 3) world mm)``
        gives (N, 2) (col, row) picture coordinates.
    """
    from scipy import ndimage

    if plane not in PLANES:
        raise VertebraError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    if not mm_per_pixel > 0:
        raise VertebraError("mm_per_pixel must be positive")
    corners = volume.corners
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    axis = 1 if plane == "sagittal" else 0  # world axis along the picture's columns
    other = 1 - axis
    cols = np.arange(lo[axis], hi[axis] + 1e-9, mm_per_pixel)
    zs = np.arange(hi[2], lo[2] - 1e-9, -mm_per_pixel)  # superior first
    zc, xy = _spine_curve(centroids or {}, volume)
    depth = np.interp(zs, zc, xy[:, other])  # the plane's x (sagittal) or y (coronal) per row
    world = np.empty((len(zs), len(cols), 3))
    world[..., axis] = cols[None, :]
    world[..., other] = depth[:, None]
    world[..., 2] = zs[:, None]
    index = volume.world_to_voxel(world.reshape(-1, 3))  # (N, 3) i, j, k
    background = float(np.min(volume.data)) if volume.data.size else 0.0
    values = ndimage.map_coordinates(volume.data, index[:, ::-1].T, order=1, mode="constant",
                                     cval=background, prefilter=False)
    values = values.reshape(len(zs), len(cols)).astype(np.float32)
    image = to_uint8(values, window if window is not None else display_window(values))

    def to_pixel(points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.stack([(p[:, axis] - cols[0]) / mm_per_pixel,
                         (zs[0] - p[:, 2]) / mm_per_pixel], axis=-1)

    return image, to_pixel


def reformat_figure(volume: drrkit.Volume, centroids: dict, plane: str = "sagittal", *,
                    truth: dict | None = None, confidence: dict | None = None,
                    mm_per_pixel: float = 1.0, window: tuple[float, float] | None = None,
                    min_height: int = 480, title: str | None = None):
    """:func:`reformat` with the labels drawn on it, as a PIL RGB image.

    Args:
        volume, centroids, plane, mm_per_pixel, window: as :func:`reformat`.
        truth: optional ground truth {VerSe id: (3,) mm}, drawn as white rings.
        confidence: optional {VerSe id: confidence} printed next to each name.
        min_height: the picture is enlarged (nearest neighbour) to at least this height.
        title: text in the top-left corner (default the plane's name).
    """
    from PIL import Image, ImageDraw

    image, to_pixel = reformat(volume, centroids, plane, mm_per_pixel=mm_per_pixel,
                               window=window)
    zoom = max(1, math.ceil(min_height / image.shape[0]))
    picture = Image.fromarray(image).convert("RGB")
    if zoom > 1:
        picture = picture.resize((image.shape[1] * zoom, image.shape[0] * zoom),
                                 Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = _font(13)
    radius = 4

    def spot(points):
        return (to_pixel(points) + 0.5) * zoom - 0.5

    if truth:
        for vid, (x, y) in zip(truth, spot(np.array(list(truth.values())))):
            _marker(draw, x, y, radius + 3, TRUTH_COLOUR, ring=True)
    if centroids:
        for vid, (x, y) in zip(centroids, spot(np.array(list(centroids.values())))):
            _marker(draw, x, y, radius, _colour(vid))
            text = vlabels.name_of(vid)
            if confidence and vid in confidence:
                text += f" {confidence[vid]:.2f}"
            draw.text((x + radius + 4, y - 7), text, fill=_colour(vid), font=font,
                      stroke_width=1, stroke_fill=(0, 0, 0))
    side = {"sagittal": ("A", "P"), "coronal": ("R", "L")}[plane]
    w, h = picture.size
    draw.text((4, 4), title or plane, fill=(230, 230, 230), font=font)
    draw.text((4, h // 2), side[0], fill=(230, 230, 230), font=font)
    draw.text((w - 12, h // 2), side[1], fill=(230, 230, 230), font=font)
    return picture


def hu_window_in_mu(window_hu=BONE_WINDOW_HU, mu_water: float = drrkit.MU_WATER):
    """A window in HU expressed as attenuation in 1/mm (``mu_water (1 + HU / 1000)``)."""
    return tuple(mu_water * (1.0 + float(v) / 1000.0) for v in window_hu)


def save_pictures(result, volume: drrkit.Volume, out_dir: str | Path, prefix: str = "", *,
                  truth: dict | None = None, units: str = "mu") -> dict[str, Path]:
    """Write ``{prefix}views.png``, ``{prefix}sagittal.png`` and ``{prefix}coronal.png``.

    Args:
        result: a :class:`vertebra.pipeline.LabelResult`.
        volume: the CT it came from.
        out_dir: an existing folder.
        prefix: file name prefix (e.g. "case_").
        truth: optional ground-truth centroids {VerSe id: (3,) mm} drawn as rings.
        units: "mu" (attenuation, 1/mm) or "hu": how to apply the bone window.

    Returns:
        {"views": path, "sagittal": path, "coronal": path}.
    """
    out = Path(out_dir)
    window = hu_window_in_mu() if units == "mu" else BONE_WINDOW_HU
    centroids = result.centroids()
    confidence = {v.verse_id: v.confidence for v in result.vertebrae}
    paths = {"views": out / f"{prefix}views.png"}
    views_figure(result, truth=truth).save(paths["views"])
    for plane in PLANES:
        paths[plane] = out / f"{prefix}{plane}.png"
        title = f"{plane}  ({result.status}, {len(centroids)} vertebrae)"
        reformat_figure(volume, centroids, plane, truth=truth, confidence=confidence,
                        window=window, title=title).save(paths[plane])
    return paths


# ---------------------------------------------------------------------- files
def case_stem(path: str | Path) -> str:
    """The case name of a CT file: ``sub-verse004_ct.nii.gz`` -> ``sub-verse004``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-3] if name.endswith("_ct") and len(name) > 3 else name


def result_summary(result, **extra) -> dict:
    """A JSON-friendly summary: status, timings, view weights and every vertebra."""
    return {
        **extra,
        "status": result.status,
        "uncertain": result.uncertain,
        "landmarks": list(result.landmarks),
        "median_confidence": (None if not result.vertebrae
                              else round(result.median_confidence, 4)),
        "timings_s": {k: round(float(v), 4) for k, v in result.timings.items()},
        "total_s": round(result.total_seconds, 4),
        "views": len(result.geometry),
        "detector": [int(result.geometry.height), int(result.geometry.width)],
        "detections_per_view": [len(d) for d in result.detections],
        "weights": [round(float(w), 5) for w in result.weights],
        "tracks": len(result.points),
        "unlabelled_tracks": int(np.sum(result.classes == 0)),
        "t13_chain": bool(result.correction.t13) if result.correction is not None else False,
        "sacrum_below": (None if not np.isfinite(result.sacrum_below)
                         else round(float(result.sacrum_below), 4)),
        "above_sacrum": bool(result.above_sacrum),
        "completed_body": bool(getattr(result, "completed", False)),
        "dense_suppressed": bool(getattr(result, "suppressed", False)),
        "vertebrae": [{
            "label": v.verse_id, "name": v.name, "region": v.region,
            "world_mm": [round(float(x), 3) for x in v.world],
            "confidence": round(v.confidence, 4), "detection": round(v.detection, 4),
            "n_views": v.n_views,
            "rms_mm": round(v.rms_mm, 4) if np.isfinite(v.rms_mm) else None,
            "added": v.added,
        } for v in result.vertebrae],
    }


#: Radius in mm of the sphere drawn per vertebra in the label map (:func:`sphere_map`).
SPHERE_RADIUS_MM = 5.0

#: The JSON schema of 3D Slicer's markups files that :func:`markups` follows.
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                  "Markups/Resources/Schema/markups-schema-v1.0.3.json#")

#: A control point's orientation as Slicer writes it in LPS files (identity in RAS).
_LPS_ORIENTATION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]


def sphere_map(centroids: dict, volume: drrkit.Volume, radius_mm: float = SPHERE_RADIUS_MM
               ) -> np.ndarray:
    """A label map on the CT's grid: a ball of ``radius_mm`` around each centroid.

    A voxel belongs to a vertebra when its centre lies within ``radius_mm`` of the
    centroid (world mm, so any spacing and direction give a round ball); where two balls
    overlap the nearer centroid wins. Balls are cut at the CT's edge.

    Args:
        centroids: {VerSe id (1..255): (3,) world LPS mm}.
        volume: the CT whose grid (shape, spacing, origin, direction) the map takes.
        radius_mm: ball radius in mm.

    Returns:
        (Z, Y, X) uint8, VerSe id inside the balls and 0 elsewhere.
    """
    if not radius_mm > 0:
        raise VertebraError(f"radius_mm must be positive, got {radius_mm}")
    labels = np.zeros(volume.data.shape, dtype=np.uint8)
    ids = [int(i) for i in centroids]
    if any(not 0 < i < 256 for i in ids):
        raise VertebraError(f"labels {ids} do not all fit a uint8 label map (1..255)")
    points = np.array([np.asarray(p, dtype=np.float64).reshape(3) for p in centroids.values()]
                      ).reshape(-1, 3)
    shape_ijk = np.asarray(volume.shape_xyz)
    reach = radius_mm / volume.spacing  # a ball is an axis-aligned ellipsoid in index space
    for n, (verse_id, centre) in enumerate(zip(ids, volume.world_to_voxel(points))):
        lo = np.maximum(np.ceil(centre - reach), 0).astype(int)
        hi = np.minimum(np.floor(centre + reach), shape_ijk - 1).astype(int)
        if np.any(hi < lo):
            continue  # the ball lies outside the CT
        i, j, k = (np.arange(a, b + 1) for a, b in zip(lo, hi))
        index = np.stack(np.meshgrid(k, j, i, indexing="ij")[::-1], axis=-1)  # (z, y, x, 3)
        world = volume.voxel_to_world(index)
        distance = np.linalg.norm(world[..., None, :] - points, axis=-1)  # (z, y, x, N)
        inside = (distance[..., n] <= radius_mm) & (np.argmin(distance, axis=-1) == n)
        box = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
        labels[box][inside] = verse_id
    return labels


def markups(result, name: str = "vertebrae") -> dict:
    """A 3D Slicer markups document (``.mrk.json``): one point list, a point per vertebra.

    One "Fiducial" markup in LPS mm (:data:`MARKUPS_SCHEMA`); each labelled vertebra is a
    control point whose label is its level name ("T5") and whose position is its centroid.

    Args:
        result: a :class:`vertebra.pipeline.LabelResult`.
        name: the markup's name as Slicer shows it.
    """
    points = [{
        "id": str(n + 1),
        "label": v.name,
        "description": f"VerSe {v.verse_id}, {v.region}, confidence {v.confidence:.3f}",
        "position": [round(float(x), 4) for x in v.world],
        "orientation": list(_LPS_ORIENTATION),
        "selected": True,
        "locked": False,
        "visibility": True,
        "positionStatus": "defined",
    } for n, v in enumerate(result.vertebrae)]
    markup = {"type": "Fiducial", "name": str(name), "coordinateSystem": "LPS",
              "coordinateUnits": "mm", "locked": False, "fixedNumberOfControlPoints": False,
              "labelFormat": "%N-%d", "controlPoints": points, "measurements": [],
              "display": {"visibility": True, "pointLabelsVisibility": True,
                          "glyphType": "Sphere3D"}}
    return {"@schema": MARKUPS_SCHEMA, "markups": [markup]}


CSV_COLUMNS = ("label", "name", "region", "x_mm", "y_mm", "z_mm", "confidence", "detection",
               "n_views", "rms_mm")


def centroids_csv(result) -> str:
    """CSV text, one row per labelled vertebra, world LPS mm (:data:`CSV_COLUMNS`)."""
    lines = [",".join(CSV_COLUMNS)]
    for v in result.vertebrae:
        x, y, z = (float(c) for c in v.world)
        rms = f"{v.rms_mm:.4f}" if np.isfinite(v.rms_mm) else ""  # empty: an added vertebra
        lines.append(f"{v.verse_id},{v.name},{v.region},{x:.3f},{y:.3f},{z:.3f},"
                     f"{v.confidence:.4f},{v.detection:.4f},{v.n_views},{rms}")
    return "\n".join(lines) + "\n"


def write_outputs(result, volume: drrkit.Volume, out_dir: str | Path, stem: str, *,
                  pictures: bool = True, truth: dict | None = None, **extra) -> dict[str, Path]:
    """Write every output of one CT into ``out_dir``, all or nothing.

    Files (``STEM`` = ``stem``)::

        STEM_ctd.json        VerSe centroids: voxel coordinates of the input CT's grid
                             (verse20) with the "direction" header (PIR)
        STEM_centroids.csv   world LPS mm, names, confidences (:func:`centroids_csv`)
        STEM_label.json      status, stage timings, view weights, per-vertebra details
        STEM_seg-spheres.nii.gz   label map on the CT's grid: a ball of SPHERE_RADIUS_MM
                             per vertebra, value = VerSe id, uint8 (:func:`sphere_map`)
        STEM.mrk.json        3D Slicer markups: a point per vertebra named by its level,
                             LPS mm (:func:`markups`)
        STEM_views.png, STEM_sagittal.png, STEM_coronal.png   (unless pictures=False)

    The centroid JSON is moved into place last, so its presence means the set is complete.

    Args:
        result: the :class:`vertebra.pipeline.LabelResult`.
        volume: the CT it came from (attenuation), whose grid the JSON refers to.
        out_dir: the folder (created if missing).
        stem: the case name.
        pictures: also write the PNGs.
        truth: optional ground truth drawn in the pictures.
        extra: more entries for STEM_label.json (e.g. the input path).

    Returns:
        {"centroids": path, "csv": path, "summary": path, "label_map": path,
        "markups": path, ...pictures}.
    """
    from drrkit.io import dumps, staged_directory
    from vertebra.data.verse import write_centroids

    out = Path(out_dir)
    names = {"centroids": f"{stem}_ctd.json", "csv": f"{stem}_centroids.csv",
             "summary": f"{stem}_label.json", "label_map": f"{stem}_seg-spheres.nii.gz",
             "markups": f"{stem}.mrk.json"}
    with staged_directory(out, last=(names["centroids"],)) as tmp:
        write_centroids(tmp / names["centroids"], result.centroids(), volume)
        (tmp / names["csv"]).write_text(centroids_csv(result))
        (tmp / names["summary"]).write_text(dumps(result_summary(result, **extra)) + "\n")
        volume.with_data(sphere_map(result.centroids(), volume)).save(tmp / names["label_map"])
        (tmp / names["markups"]).write_text(dumps(markups(result, stem)) + "\n")
        if pictures:
            for key, path in save_pictures(result, volume, tmp, f"{stem}_", truth=truth).items():
                names[key] = path.name
    return {key: out / name for key, name in names.items()}


# ---------------------------------------------------------------------- scoring folders
def score_folder(pred: str | Path, gt: str | Path, *, format: str = "verse20",
                 pred_format: str = "verse20", radius_mm: float = 20.0
                 ) -> tuple[dict, dict, list[str]]:
    """Score a folder of predictions against a VerSe-layout ground-truth folder.

    Every case of ``gt`` with centroids (a JSON or a mask) is scored
    (:func:`vertebra.metrics.evaluate`) against the prediction file found anywhere under
    ``pred`` named ``STEM_ctd.json`` (as ``vertebra label`` writes) or
    ``STEM_seg-X_ctd.json`` (VerSe's own naming), read on the case's CT in
    ``pred_format`` (voxel coordinates, verse20, by default). A case without a prediction
    counts as nothing found.

    Args:
        pred: folder of predictions.
        gt: VerSe-layout folder with the CTs and ground truth.
        format: format of the *ground-truth* centroid files ("verse20" or "verse19").
        pred_format: format of the prediction files (``vertebra label`` writes "verse20").
        radius_mm: identification radius.

    Returns:
        (pooled result of :func:`vertebra.metrics.pool`, {case: evaluate result},
        names of the cases without a prediction).
    """
    import re

    from vertebra.data import verse
    from vertebra.data.dataset import VerseDataset
    from vertebra.metrics import evaluate, pool

    pred, gt = Path(pred), Path(gt)
    if not (pred.is_dir() and gt.is_dir()):
        raise VertebraError("to score folders, give a folder of predictions and a "
                            "VerSe-layout ground-truth folder")
    for value in (format, pred_format):
        verse.check_format(value)
    cases = VerseDataset(gt, require="centroids").cases
    if not cases:
        raise VertebraError(f"{gt} holds no CT with ground-truth centroids")
    found: dict[str, Path] = {}
    for path in sorted(pred.rglob("*_ctd.json")):  # STEM_ctd or STEM_seg-X_ctd
        found.setdefault(re.sub(r"_seg-[A-Za-z0-9]+$", "", path.name[:-9]), path)
    results, missing = {}, []
    for case in cases:
        truth = case.centroids(format=format)
        path = found.get(case.name)
        if path is None:
            missing.append(case.name)
            predicted = {}
        else:
            predicted = verse.read_centroids(path, case.ct, format=pred_format)
        results[case.name] = evaluate(predicted, truth, radius_mm=radius_mm)
    return pool(list(results.values())), results, missing


def pooled_table(pooled: dict, title: str = ""):
    """A rich Table: per region vertebrae, identified, id rate %, l_error mm (pooled)."""
    from rich.table import Table

    def pct(x):
        return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    def mm(x):
        return "-" if x is None or math.isnan(x) else f"{x:.2f}"

    table = Table(title=f"Identification ({title})" if title else "Identification")
    for col in ("region", "vertebrae", "identified", "id rate %", "l_error mm"):
        table.add_column(col, justify="left" if col == "region" else "right")
    for region, r in pooled["regions"].items():
        if r["n_gt"]:
            table.add_row(region, str(r["n_gt"]), str(r["identified"]), pct(r["id_rate"]),
                          mm(r["l_error"]))
    table.add_row("all", str(pooled["n_gt"]), str(pooled["identified"]),
                  pct(pooled["id_rate"]), mm(pooled["l_error"]), style="bold")
    return table
