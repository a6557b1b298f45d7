"""Synthetic spine CTs in HU with VerSe-style ground truth.

:func:`make_spine_phantom` builds a random but anatomically ordered spine from a seed:
vertebral bodies with a cortical shell and trabecular core, pedicles, laminae, spinous,
transverse and articular processes, discs, the atlas ring and the dens, ribs on the
thoracic levels (floating at the last two), sternum, clavicles and scapulae, sacrum,
coccyx, pelvis and femora below the lumbar spine, the skull base and mandible above C1,
lungs, airway, bowel gas and a trunk with subcutaneous fat. Sizes grow craniocaudally as
in real spines, so a vertebra's level can only be told from anatomy (ribs, size, skull,
pelvis, counting), as in real CT.

Random per seed: curvature (lordosis, kyphosis, mild scoliosis), which contiguous run of
levels is in the field of view (sometimes only 4-5; a run that ends at L5 reaches from
the upper sacrum down past the pelvis, :data:`PELVIS_BELOW_L5_MM`), voxel spacing (0.5-1 mm in plane,
1-3 mm slices), storage orientation (axis permutation and flips, exact in world space),
noise, optional pedicle screws and rods (3000 HU, with streaks) and optional transitional
anatomy (T13 or L6).

Everything is built in world LPS mm (x Left, y Posterior, z Superior) from implicit
primitives (:mod:`vertebra.data._sdf`) rasterised only inside each primitive's bounding
box, so a 256^3-class volume takes about a second. Ground truth is consistent by
construction: the label mask holds VerSe ids, and each centroid is the centre of mass of
its label in the mask.

Example:
    >>> from vertebra.data.phantom import make_spine_phantom
    >>> ph = make_spine_phantom(3, levels=("T11", "L2"), size="small")
    >>> {"T11", "T12", "L1", "L2"} <= set(ph.levels)
    True
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drrkit.volume import Volume
from vertebra import labels as vlabels
from vertebra.data import _sdf
from vertebra.data._clinical import (
    SAGITTAL_SLICE_MM,
    THICK_SLICE_SHARE,
    bone_texture,
    fov_cut,
    scanner_blur,
    sclerotic_endplates,
    thick_slices,
)
from vertebra.data._scene import Scene, build_scene, draw_shoulder_pose
from vertebra.data.anatomy import MAX_T1_LEAN, Spine, build_spine, level_names
from vertebra.errors import VertebraError

#: Size presets: (max slices, max rows, max columns) of the canonical grid, in-plane
#: spacing range (mm) and slice spacing range (mm).
SIZES = {
    "full": ((256, 256, 256), (0.5, 1.0), (1.0, 3.0)),
    "small": ((64, 80, 80), (1.6, 2.2), (2.0, 3.0)),
}

#: A vertebra gets a centroid when at least this fraction of it lies in the volume.
MIN_VISIBLE = 0.5

#: Share of the clinical phantoms reconstructed as a spine protocol does: a small field
#: of view centred on the spine (:data:`SPINE_FOV_MM` wide) instead of the whole trunk.
SPINE_FOV_SHARE = 0.3

#: Range (mm) of how far the clinical phantoms' diaphragm sits below the plain phantom's,
#: so that where the lungs end against the spine varies over several levels, as breath and
#: build move a real lung base (decision ``lung-base``).
LUNG_DROP_MM = (10.0, 100.0)

#: Range (mm) of how far below L5 a scan that ends at L5 reaches: a lumbar spine protocol
#: stops at the upper sacrum, an abdomen and pelvis CT below the pubic symphysis and the
#: femoral heads, with the whole pelvic ring in view (decision ``pelvis-in-view``). Where
#: a drawn scan outgrows the size cap, its margin shrinks, not below the same draw's
#: place in :data:`SACRUM_BELOW_L5_MM`, before any vertebra leaves the scan.
PELVIS_BELOW_L5_MM = (20.0, 220.0)
SACRUM_BELOW_L5_MM = (20.0, 90.0)

#: Range (mm) of a spine protocol's field of view, widened where the vertebral bodies
#: need it.
SPINE_FOV_MM = (90.0, 250.0)


@dataclass(frozen=True, eq=False)
class SpinePhantom:
    """A synthetic CT with its ground truth.

    Attributes:
        ct: HU, float32 (Z, Y, X) with its world geometry.
        labels: uint8 (Z, Y, X) VerSe ids on the same grid (0 background, 26 sacrum,
            27 coccyx).
        centroids: {VerSe id: (3,) world LPS mm}, centre of mass of the label in
            ``labels``, cranio-caudal; only vertebrae at least :data:`MIN_VISIBLE` inside.
        visible: {VerSe id: fraction of that vertebra's voxels inside the volume} for
            every vertebra label present in ``labels``.
        levels: names of the vertebrae in ``centroids``, cranio-caudal.
        seed: the seed it was made from.
        metal: whether screws and rods were placed.
        transitional: None, "t13" or "l6".
        rib_levels: names of the rib-bearing vertebrae of the whole spine.
        anatomy: the whole spine (every level, also those outside the volume).
    """

    ct: Volume
    labels: Volume
    centroids: dict[int, np.ndarray]
    visible: dict[int, float]
    levels: tuple[str, ...]
    seed: int
    metal: bool
    transitional: str | None
    rib_levels: tuple[str, ...]
    anatomy: Spine = field(repr=False)


# ---------------------------------------------------------------------- the build
@dataclass
class _Grid:
    origin: np.ndarray  # (3,) world mm of voxel (0, 0, 0)
    spacing: np.ndarray  # (3,) mm along x, y, z
    shape_xyz: tuple[int, int, int]

    @property
    def zyx(self) -> tuple[int, int, int]:
        return (self.shape_xyz[2], self.shape_xyz[1], self.shape_xyz[0])

    def z(self) -> np.ndarray:
        return self.origin[2] + self.spacing[2] * np.arange(self.shape_xyz[2])


def _level_z_range(spine: Spine, i: int) -> tuple[float, float]:
    d, c, F = spine.dims[i], spine.centres[i], spine.frames[i]
    corners = np.array([(x, y, z) for x in (-d.width / 2, d.width / 2)
                        for y in (-0.55 * d.depth, 0.45 * d.depth)
                        for z in (-d.height / 2, d.height / 2)])
    zs = (c + corners @ F.T)[:, 2]
    return float(zs.min()), float(zs.max())


def _parse_levels(levels, names) -> tuple[int, int]:
    if isinstance(levels, str):
        parts = levels.replace("-", ":").split(":")
        levels = tuple(p.strip() for p in parts)
    if len(levels) != 2:
        raise VertebraError(f"levels must be two names like ('T10', 'L3'), got {levels!r}")
    a, b = (str(v).strip().upper() for v in levels)
    for v in (a, b):
        if v not in names:
            extra = ("; T13 needs transitional='t13'" if v == "T13" else
                     "; L6 needs transitional='l6'" if v == "L6" else "")
            raise VertebraError(f"unknown or absent level {v!r}{extra}")
    i, j = names.index(a), names.index(b)
    if i > j:
        raise VertebraError(f"levels must run cranio-caudally, got {a} below {b}")
    return i, j


def _choose_transitional(transitional, levels, rng) -> str | None:
    draw = rng.random()
    if transitional is None:
        mentioned = ""
        if levels is not None:
            mentioned = " ".join(str(v).upper() for v in (
                [levels] if isinstance(levels, str) else levels))
        if "T13" in mentioned:
            return "t13"
        if "L6" in mentioned:
            return "l6"
        return "t13" if draw < 0.05 else "l6" if draw < 0.10 else None
    t = str(transitional).strip().lower()
    if t in ("none", "", "false"):
        return None
    if t not in ("t13", "l6"):
        raise VertebraError(f"transitional must be None, 'none', 't13' or 'l6', got "
                            f"{transitional!r}")
    return t


def _size_preset(size):
    if isinstance(size, str):
        if size not in SIZES:
            raise VertebraError(f"unknown size {size!r}; choose one of {', '.join(SIZES)} "
                                "or give a (Z, Y, X) shape")
        return SIZES[size]
    try:
        cap = tuple(int(v) for v in size)
    except TypeError:
        raise VertebraError(f"size must be 'small', 'full' or a (Z, Y, X) shape, got {size!r}"
                            ) from None
    if len(cap) != 3 or min(cap) < 16:
        raise VertebraError(f"a size shape needs 3 values of at least 16, got {size!r}")
    return cap, SIZES["full"][1], SIZES["full"][2]


def _choose_grid(spine: Spine, levels, size, spacing, fov, rng, min_fov=None, tight=None):
    """The scan's grid and covered levels (i0, i1); ``min_fov`` (mm) widens the drawn field
    of view to at least that, coarsening the in-plane spacing to stay within the size cap;
    ``tight`` (mm) instead centres a small field of view on the spine, as a spine
    protocol's reconstruction does: that wide, or as much wider as the covered vertebral
    bodies need (their centres 30 mm inside each side, the front of the bodies inside),
    and coarser in plane where the size cap needs it."""
    cap, inplane, slices = _size_preset(size)
    sp_draw = (rng.uniform(*inplane), rng.uniform(*slices))
    if spacing is None:
        sp = np.array([sp_draw[0], sp_draw[0], sp_draw[1]])
    else:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64).reshape(-1), (3,)).copy()
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise VertebraError(f"spacing must be positive mm, got {spacing!r}")
    names = spine.names
    n = len(names)
    explicit = levels is not None
    run_draw = rng.random()
    if explicit:
        i0, i1 = _parse_levels(levels, names)
    else:
        length = int(rng.integers(4, 6)) if run_draw < 0.3 else int(rng.integers(6, n + 1))
        i0 = int(rng.integers(0, n - length + 1))
        i1 = i0 + length - 1
    m_top, m_bot = (rng.uniform(2, 12), rng.uniform(2, 12)) if explicit else (
        rng.uniform(3, 25), rng.uniform(3, 25))
    if names[i0] == "C1":
        m_top = rng.uniform(25, 70)
    short = m_bot
    if i1 == n - 1:  # one draw: the margin below L5 and its short form for a capped scan
        u = rng.random()
        (a, b), (c, d) = SACRUM_BELOW_L5_MM, PELVIS_BELOW_L5_MM
        short, m_bot = a + (b - a) * u, c + (d - c) * u
    ends = rng.random()

    def z_range(a, b):
        return _level_z_range(spine, b)[0] - m_bot, _level_z_range(spine, a)[1] + m_top

    lo, hi = z_range(i0, i1)
    excess = (hi - lo) - (cap[0] - 1) * sp[2]
    if not explicit and excess > 0:  # the pelvis gives way first, down to the short margin
        m_bot = max(short, m_bot - excess)
        lo, hi = z_range(i0, i1)
    while not explicit and (hi - lo) / sp[2] + 1 > cap[0] and i1 > i0 + 3:
        if ends < 0.5:
            i0 += 1
        else:
            i1 -= 1
        lo, hi = z_range(i0, i1)
    nz = math.floor((hi - lo) / sp[2]) + 1
    if not explicit:
        nz = min(nz, cap[0])
    run = slice(i0, i1 + 1)
    c = spine.centres[run]
    cx = float(c[:, 0].mean()) + rng.normal(0, 5)
    cy = float(c[:, 1].mean()) + rng.uniform(5, 25)
    need_x = float(np.abs(c[:, 0] - cx).max()) + 50.0
    fronts = c[:, 1] - 40.0
    backs = c[:, 1] + 75.0
    need_y = float(max(np.abs(fronts - cy).max(), np.abs(backs - cy).max()))
    fov_draw = rng.uniform(150, 420) if cap[1] > 100 else rng.uniform(110, 180)
    if fov is None and tight is not None:
        fov = max(tight, 2 * (need_x - 20.0), 2 * float(np.abs(c[:, 1] - 35.0 - cy).max()))
        sp[:2] = max(sp[0], fov / cap[2])
    elif fov is None:
        fov = max(fov_draw, 2 * need_x, 2 * need_y)
    elif not fov > 0:
        raise VertebraError(f"the field of view must be a positive number of mm, got {fov!r}")
    if min_fov is not None and fov < min_fov:
        fov = min_fov
        sp[:2] = max(sp[0], fov / cap[2])
    nx = min(math.ceil(fov / sp[0]), cap[2])
    ny = min(math.ceil(fov / sp[1]), cap[1])
    origin = np.array([cx - 0.5 * (nx - 1) * sp[0], cy - 0.5 * (ny - 1) * sp[1],
                       0.5 * (lo + hi) - 0.5 * (nz - 1) * sp[2]])
    return _Grid(origin, sp, (nx, ny, nz)), (i0, i1)


def _outline(spine: Spine, head, habitus, grid: _Grid):
    """Per-slice superellipse of the trunk/neck/head.

    Returns:
        the seven (Z,) arrays that :func:`_sdf.body_outline` takes after ``spacing``
        (cx, cy, ax, ay, power, fat, tissue), and the world y of the table top (mm): the
        supine trunk's back rests on it at every level.
    """
    wf, af, obese, fat0 = habitus
    keys = []  # z, cx, cy, ax, ay, power, fat, tissue, on the table (0/1)
    prof = {  # half width, half AP, back offset, power
        "cervical": (58, 62, 52, 2.0),
        "T1": (125, 78, 58, 2.2), "T2": (165, 88, 60, 2.3), "T4": (165, 95, 62, 2.3),
        "T8": (156, 110, 64, 2.3), "T12": (150, 114, 70, 2.4), "L3": (155, 110, 82, 2.4),
        "L5": (165, 105, 85, 2.5),
    }
    names = spine.names
    anchors = [n for n in prof if n != "cervical" and n in names]
    pos = {n: names.index(n) for n in anchors}
    for i, d in enumerate(spine.dims):
        c = spine.centres[i]
        if d.region == "cervical":
            hw, ha, bo, pw = prof["cervical"]
            fat = 0.5 * fat0
            if d.name in ("C1", "C2"):
                continue
        else:
            xs = [pos[n] for n in anchors]
            hw, ha, bo, pw = (float(np.interp(i, xs, [prof[n][j] for n in anchors]))
                              for j in range(4))
            extra = obese * (1.0 if d.region == "lumbar" else 0.4)
            hw, ha = hw * wf + extra, ha * af + extra
            fat = fat0 * (1.5 if d.region == "lumbar" else 1.0) + 0.5 * extra
        keys.append((c[2], c[0], c[1] + bo - ha, hw * (wf if d.region == "cervical" else 1),
                     ha * (af if d.region == "cervical" else 1), pw, fat, 40.0,
                     float(d.region != "cervical")))
    # pelvis and thighs
    for s, (hw, ha, bo) in zip((0, 2, 4), ((175, 110, 80), (182, 115, 72), (185, 112, 70))):
        c = spine.sacrum_centres[s]
        hw, ha = hw * wf + obese, ha * af + obese
        keys.append((c[2], c[0], c[1] + bo - ha, hw, ha, 2.6, fat0 * 1.5 + 0.5 * obese, 40.0,
                     1.0))
    c = spine.sacrum_centres[4]
    keys.append((c[2] - 400, *keys[-1][1:]))
    # neck under the jaw and the head
    hc, hF = head
    i2 = names.index("C2")
    c2 = spine.centres[i2]
    keys.append((c2[2], c2[0], c2[1] + 50 - 75 * af, 60 * wf, 75 * af, 2.0, 0.5 * fat0, 40.0,
                 0.0))
    c1 = spine.centres[names.index("C1")]
    keys.append((c1[2], c1[0], c1[1] + 55 - 95 * af, 68 * wf, 95 * af, 2.0, 0.4 * fat0, 40.0,
                 0.0))
    sk = hc + hF @ np.array([0.0, -15.0, 86.0])
    for t in np.linspace(0.0, 0.98, 9):
        f = math.sqrt(1 - t * t)
        keys.append((sk[2] + 80 * t, sk[0], sk[1] - 5, max(76 * f, 3), max(100 * f, 3), 2.0,
                     4.0, 40.0, 0.0))
    keys.append((sk[2] + 82, sk[0], sk[1], 1.0, 1.0, 2.0, 0.0, 40.0, 0.0))
    keys = np.array(sorted(keys, key=lambda k: k[0]))
    # lying supine, the trunk's back is flattened onto the table
    trunk = keys[:, 8] > 0
    table = float(np.max(keys[trunk, 2] + keys[trunk, 4]))
    front = keys[trunk, 2] - keys[trunk, 4]
    keys[trunk, 2] = 0.5 * (front + table)
    keys[trunk, 4] = 0.5 * (table - front)
    z = grid.z()
    return [np.interp(z, keys[:, 0], keys[:, j]).astype(np.float64) for j in range(1, 8)], table


def _coarser(grid: _Grid, scale: float) -> _Grid:
    """The grid's box (voxel edges) in voxels ``scale`` times larger, centred the same."""
    if scale == 1.0:
        return grid
    n = np.asarray(grid.shape_xyz)
    spacing = grid.spacing * scale
    m = np.maximum(np.ceil(n / scale).astype(int), 1)
    centre = grid.origin + 0.5 * (n - 1) * grid.spacing
    return _Grid(centre - 0.5 * (m - 1) * spacing, spacing, tuple(int(v) for v in m))


def _pass(shapes, grid: _Grid, sdf, obj, blur):
    rows, lo, hi = shapes.arrays()
    # a carve that only acts on its own object need not reach beyond that object
    for o in np.unique(rows[rows[:, 2] == _sdf.SUBTRACT_OWN, 1]):
        own = (rows[:, 1] == o) & (rows[:, 2] == _sdf.UNION)
        carve = (rows[:, 1] == o) & (rows[:, 2] == _sdf.SUBTRACT_OWN)
        if own.any():
            lo[carve] = np.maximum(lo[carve], lo[own].min(0))
            hi[carve] = np.minimum(hi[carve], hi[own].max(0))
    margin = (blur + rows[:, 3] + 1.0)[:, None]
    boxes = _sdf.index_boxes(lo, hi, grid.origin, grid.spacing, grid.shape_xyz, margin)
    keep = (boxes[:, 1] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 2]) & (boxes[:, 5] > boxes[:, 4])
    _sdf.rasterise(sdf, obj, np.ascontiguousarray(rows[keep]), np.ascontiguousarray(boxes[keep]),
                   grid.origin, grid.spacing)


def _full_counts(bone, vert_obj, grid: _Grid, blur) -> dict[int, int]:
    """Voxel count of each vertebra rasterised alone on an unclipped copy of the lattice,
    for the vertebrae whose bounding box leaves the grid."""
    rows, lo, hi = bone.arrays()
    out = {}
    n = np.asarray(grid.shape_xyz)
    for vid, o in vert_obj.items():
        sel = rows[:, 1] == o
        if not sel.any():
            continue
        a = np.floor((lo[sel].min(0) - blur - 1 - grid.origin) / grid.spacing).astype(int)
        b = np.ceil((hi[sel].max(0) + blur + 1 - grid.origin) / grid.spacing).astype(int) + 1
        if np.all(a >= 0) and np.all(b <= n):
            continue
        if np.any(b <= 0) or np.any(a >= n):
            continue
        local = _Grid(grid.origin + a * grid.spacing, grid.spacing, tuple(int(v) for v in b - a))
        sdf = np.empty(local.zyx, dtype=np.float32)
        obj = np.empty(local.zyx, dtype=np.int16)
        sub = _sdf.Shapes()
        sub.rows = [r for r, m in zip(bone.rows, sel) if m]
        sub.lo = [x for x, m in zip(bone.lo, sel) if m]
        sub.hi = [x for x, m in zip(bone.hi, sel) if m]
        _pass(sub, local, sdf, obj, blur)
        out[vid] = int(np.count_nonzero((sdf < 0) & (obj == o)))
    return out


def _metal_sources(metal: _sdf.Shapes, grid: _Grid, rng):
    """Per axial slice: world (x, y) of each metal part the slice cuts, with streak angles."""
    rows, lo, hi = metal.arrays()
    z = grid.z()
    n_ang = 8
    base_angles = rng.uniform(0, np.pi, (len(rows), n_ang))
    per_slice = []
    for k, zk in enumerate(z):
        pts, angs = [], []
        for p, row in enumerate(rows):
            if not lo[p, 2] <= zk <= hi[p, 2]:
                continue
            if int(row[0]) == _sdf.CAPSULE:
                a, b, r = row[5:8], row[17:20], max(row[20], row[21])
                dz = b[2] - a[2]
                if abs(dz) < 1e-6:
                    t0, t1 = 0.0, 1.0
                else:
                    t0, t1 = sorted(((zk - r - a[2]) / dz, (zk + r - a[2]) / dz))
                    t0, t1 = max(t0, 0.0), min(t1, 1.0)
                    if t0 > t1:
                        continue
                q = a + (b - a) * 0.5 * (t0 + t1)
                ang = base_angles[p].copy()
                ang[0] = math.atan2(b[1] - a[1], b[0] - a[0])
            else:
                q = row[5:8]
                ang = base_angles[p]
            pts.append(q[:2])
            angs.append(ang)
        if pts:
            per_slice.append((k, np.array(pts), np.array(angs)))
    if not per_slice:
        return None
    m = max(len(p) for _, p, _ in per_slice)
    slices = np.array([k for k, _, _ in per_slice], dtype=np.int64)
    points = np.zeros((len(slices), m, 2))
    angles = np.zeros((len(slices), m, n_ang))
    count = np.zeros(len(slices), dtype=np.int64)
    for s, (_, p, a) in enumerate(per_slice):
        points[s, :len(p)] = p
        angles[s, :len(p)] = a
        count[s] = len(p)
    return slices, points, count, angles


def _orient(vol_data, lab_data, grid: _Grid, rng, orientation):
    """Store the canonical (identity-direction) grid under a random axis order and flips."""
    perm, flip = np.arange(3), np.zeros(3, dtype=bool)
    perm_draw, flip_draw = rng.random(), rng.random(3)
    perm_choice = rng.permutation(3)
    if orientation == "random":
        if perm_draw < 0.3:
            perm = perm_choice
        flip = flip_draw < 0.5
    n = np.asarray(grid.shape_xyz)
    direction = np.zeros((3, 3))
    spacing = grid.spacing[perm]
    first = np.zeros(3)
    for a in range(3):  # new index axis a runs along canonical axis perm[a]
        direction[perm[a], a] = -1.0 if flip[a] else 1.0
        if flip[a]:
            first[perm[a]] = n[perm[a]] - 1
    origin = grid.origin + grid.spacing * first
    # data (k, j, i) -> axes (Z, Y, X) = canonical (2, 1, 0); new (k', j', i') order
    axes_new_zyx = [2 - perm[2], 2 - perm[1], 2 - perm[0]]

    def store(x):
        y = np.transpose(x, axes_new_zyx)
        for a in range(3):
            if flip[a]:
                y = np.flip(y, axis=2 - a)
        return np.ascontiguousarray(y)

    return store(vol_data), store(lab_data), spacing, origin, direction


def make_spine_phantom(
    seed: int,
    *,
    levels=None,
    size="full",
    spacing=None,
    fov: float | None = None,
    metal: bool | None = None,
    transitional: str | None = None,
    noise: bool = True,
    orientation: str = "random",
    voxel_scale: float = 1.0,
    clinical: bool = False,
    spine_fov_share: float | None = None,
    ribless_share: float = 0.0,
    calcified_disc_share: float = 0.0,
    max_t1_lean: float = MAX_T1_LEAN,
    thick_slice_share: float | None = None,
    sagittal_share: float = 0.0,
) -> SpinePhantom:
    """A random synthetic spine CT in HU with VerSe ground truth, reproducible from ``seed``.

    Args:
        seed: integer seed; the same arguments always give the same phantom.
        levels: None for a random contiguous run (sometimes only 4-5 vertebrae), or the
            first and last vertebra to cover, e.g. ``("T10", "L3")`` or ``"T10:L3"``.
        size: "full" (0.5-1 mm in plane, 1-3 mm slices, at most 256 voxels per axis for
            randomly chosen runs), "small" (about 2 mm voxels, at most 64 x 80 x 80, for
            tests) or a (Z, Y, X) cap on the canonical grid with the "full" spacings.
        spacing: (3,) mm along world x, y, z (or one number) instead of a random one.
        fov: in-plane field of view in mm (square, before the size cap) instead of a
            random 150-420 mm that always holds the covered vertebrae.
        metal: True/False for pedicle screws and rods; None draws it (15 %).
        transitional: None draws it (5 % T13, 5 % L6; implied by "T13"/"L6" in
            ``levels``), "none", "t13" or "l6".
        noise: add near-Gaussian noise (8-30 HU standard deviation).
        orientation: "random" (permuted/flipped storage) or "canonical" (LPS, identity).
        voxel_scale: voxels this many times larger along each axis (>= 1) over the same
            box, built ``voxel_scale**3`` times faster, for data seen through coarse pixels
            (the identifier's 4 mm views); the noise is divided by ``sqrt(voxel_scale)``.
        clinical: also draw what a clinical scan holds besides the skeleton (organs,
            contrast, arms, leads, osteoporotic to dense bone, sclerotic endplates, discs
            0.45-1.05 times their healthy height, the scanner's blur and circle;
            :mod:`vertebra.data._clinical`) from a stream of its own, and (unless ``fov``
            is given) a 330-480 mm field of view on the whole trunk or, on
            ``spine_fov_share`` of the seeds, a spine protocol's 90-250 mm one. A seed's
            curvature and vertebra sizes are its plain phantom's.
        spine_fov_share: that share (None: :data:`SPINE_FOV_SHARE`), drawn per seed.
        ribless_share, calcified_disc_share: shares of the clinical seeds with ribs as
            faint as muscle and with calcified discs (:func:`_bone_variants`).
        max_t1_lean: T1's forward lean is drawn from 5 to this many degrees (``kyphosis``).
        thick_slice_share, sagittal_share: shares of the clinical seeds in 3-5 mm axial slices
            (None: :data:`THICK_SLICE_SHARE`; a seed thick at one share is so at a larger
            one) and stored as sagittal reformats, 2-4 mm thick across (a stream of its own).

    Returns:
        :class:`SpinePhantom`.
    """
    seed, share, thick = _check_options(seed, orientation, voxel_scale, spine_fov_share,
                                        ribless_share, calcified_disc_share, thick_slice_share,
                                        sagittal_share)
    (r_anat, r_fov, r_build, r_metal, r_noise, r_orient, r_clinical, r_look, r_spine_fov,
     r_ribs, r_discs, r_pose, r_slices, r_sagittal) = _streams(seed, 14)
    trans, spine = _draw_spine(transitional, levels, clinical, max_t1_lean, r_anat, r_look)
    habitus, lungs = _body_draws(r_anat, r_look, clinical)
    wide, tight = _field_of_view(clinical and fov is None, share, r_clinical, r_spine_fov)
    grid, (i0, i1) = _choose_grid(spine, levels, size, spacing, fov, r_fov, wide, tight)
    grid = _coarser(grid, float(voxel_scale))
    metal_levels = _metal_levels(spine, (i0, i1), metal, r_metal)
    variants = _bone_variants(spine, (ribless_share, calcified_disc_share), r_ribs, r_discs,
                              clinical)
    scene = build_scene(spine, r_build, metal_levels, r_clinical if clinical else None, lungs,
                        *variants, draw_shoulder_pose(r_pose) if clinical else None)
    hu, lab = _rasterise(scene, spine, grid, habitus, r_build, r_metal if metal_levels else None,
                         r_look if clinical else None)
    scanner = ((r_look, r_clinical if tight is None else None, (r_slices, thick),
                (r_sagittal, float(sagittal_share))) if clinical else None)
    _scanner(hu, grid, r_noise if noise else None, float(voxel_scale), scanner)
    return _stored(hu, lab, scene, grid, r_orient, orientation, seed=seed, metal=bool(metal_levels),
                   transitional=trans, anatomy=spine)


def _draw_spine(transitional, levels, clinical: bool, max_t1_lean: float,
                r_anat: np.random.Generator, r_look: np.random.Generator):
    """(transitional anatomy, :class:`Spine`) of one seed: its levels, size and curvature
    from ``r_anat``; a clinical scan's disc heights, like its other looks
    (lung size, endplates, bone texture, blur), from ``r_look``."""
    trans = _choose_transitional(transitional, levels, r_anat)
    scale = r_anat.uniform(0.88, 1.12)
    discs = r_look.uniform(0.45, 1.05) if clinical else 1.0
    return trans, build_spine(level_names(trans), r_anat, scale, discs, max_t1_lean)


def _body_draws(r_anat: np.random.Generator, r_look: np.random.Generator, clinical: bool):
    """(habitus, lungs) of one seed: the body's build from ``r_anat`` (passed on to
    :func:`_rasterise`) and, for a clinical scan, the lungs' size and lower reach from
    ``r_look`` (passed on to :func:`build_scene`); a plain scan draws no lungs."""
    habitus = (r_anat.uniform(0.88, 1.12), r_anat.uniform(0.9, 1.12),
               max(0.0, r_anat.normal(8, 12)), r_anat.uniform(5, 22))
    lungs = ((r_look.uniform(1.0, 1.25), r_look.uniform(1.0, 1.18), r_look.uniform(*LUNG_DROP_MM))
             if clinical else (1.0, 1.0, 0.0))
    return habitus, lungs


def _streams(seed: int, count: int) -> list[np.random.Generator]:
    """``count`` independent generators of ``seed`` (``SeedSequence.spawn``): the first
    ``n`` are the same for any ``count >= n``, so a new stream leaves the others as
    they were."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _bone_variants(spine: Spine, shares: tuple[float, float], r_ribs, r_discs, clinical: bool
                   ) -> tuple[float | None, dict[int, float] | None]:
    """(ribless_hu, calcified_discs) of :func:`build_scene` for one scan, each drawn from a
    stream of its own (so every earlier draw stays as it was); plain scans get neither.

    ``shares[0]`` of the clinical scans have ribs as dense as the muscle around them,
    20-60 HU: scans in which the spine must be counted from the vertebrae, the sacrum and
    the organs, as in a crop that shows no ribs. ``shares[1]`` have calcified or ossified
    discs (:func:`_calcified_discs`), whose two vertebrae look joined, as degenerated,
    calcified or bridged discs make them look in older patients' scans.
    """
    ribless = bool(clinical and r_ribs.random() < float(shares[0]))
    calcified = bool(clinical and r_discs.random() < float(shares[1]))
    return (r_ribs.uniform(20.0, 60.0) if ribless else None,
            _calcified_discs(spine, r_discs) if calcified else None)


def _calcified_discs(spine: Spine, rng) -> dict[int, float]:
    """{i: HU} of the calcified discs of one scan (the disc above ``spine.dims[i]``): each
    disc with a per-scan probability of 15-60 %, at a per-scan 150-600 HU varied by
    +-30 % per disc."""
    chance, hu = rng.uniform(0.15, 0.6), rng.uniform(150.0, 600.0)
    out = {}
    for i in range(1, len(spine.dims)):
        hit, factor = rng.random(), rng.uniform(0.7, 1.3)  # drawn for every disc
        if spine.dims[i - 1].name != "C1" and hit < chance:
            out[i] = hu * factor
    return out


def _scanner(hu, grid: _Grid, r_noise, voxel_scale: float, clinical) -> None:
    """What the scanner adds, in place: with ``clinical`` = (r_look, r_clinical, (r_slices,
    thick share), (r_sagittal, sagittal share)) thick axial slices and sagittal reformats
    on those shares of the scans (:func:`thick_slices`) and its blur first and its
    reconstruction circle last (none when r_clinical is None: a small field of view lies
    inside the scanner's circle); with ``r_noise`` near-Gaussian noise of 8-30 HU
    (divided by ``sqrt(voxel_scale)``); then the CT-number range is clipped."""
    if clinical is not None:
        thick_slices(hu, float(grid.spacing[2]), *clinical[2])
        thick_slices(hu, float(grid.spacing[0]), *clinical[3], axis=2, mm=SAGITTAL_SLICE_MM)
        scanner_blur(hu, clinical[0])
    sigma = r_noise.uniform(8, 30) / math.sqrt(voxel_scale) if r_noise is not None else 0.0
    seed = int(r_noise.integers(0, 2**62)) if r_noise is not None else 0
    _sdf.noise_and_clip(hu, seed, sigma, -1024.0, 3071.0)
    if clinical is not None and clinical[1] is not None:
        fov_cut(hu, grid.origin, grid.spacing, clinical[1])


def _stored(hu, lab, scene: Scene, grid: _Grid, rng, orientation: str, **fields
            ) -> SpinePhantom:
    """The phantom with its ground truth from the mask (centroids of the vertebrae at
    least :data:`MIN_VISIBLE` in view), stored in its (random or canonical) orientation;
    ``fields``: seed, metal, transitional, anatomy."""
    full = _full_counts(scene.bone, scene.vertebra_objects, grid, float(np.max(grid.spacing)))
    centroids, visible = _mask_centroids(lab, grid, full)
    ct_data, lab_data, spacing, origin, direction = _orient(hu, lab, grid, rng, orientation)
    return SpinePhantom(
        ct=Volume(ct_data, spacing, origin, direction),
        labels=Volume(lab_data, spacing, origin, direction),
        centroids=centroids, visible=visible,
        levels=tuple(vlabels.name_of(v) for v in centroids),
        rib_levels=scene.rib_levels, **fields)


def _field_of_view(draw: bool, share: float, r_clinical, r_spine_fov):
    """(wide, tight): the field-of-view draws (mm or None) of :func:`_choose_grid` for a
    clinical scan (``draw``): the whole trunk, 330-480 mm, or with probability ``share``
    a spine protocol's small field of view (:data:`SPINE_FOV_MM`)."""
    if not draw:
        return None, None
    wide = r_clinical.uniform(330, 480)  # drawn either way: the stream stays in step
    if r_spine_fov.random() < share:
        return None, r_spine_fov.uniform(*SPINE_FOV_MM)
    return wide, None


def _check_options(seed, orientation: str, voxel_scale, spine_fov_share=None,
                   ribless_share=0.0, calcified_disc_share=0.0, thick_slice_share=None,
                   sagittal_share=0.0) -> tuple[int, float, float]:
    """The seed as an int, the spine-protocol share (None: :data:`SPINE_FOV_SHARE`) and
    the thick-slice share (None: :data:`THICK_SLICE_SHARE`), after checking the options
    a phantom cannot be built without."""
    if thick_slice_share is None:
        thick_slice_share = THICK_SLICE_SHARE
    for name, value in (("ribless_share", ribless_share),
                        ("calcified_disc_share", calcified_disc_share),
                        ("thick_slice_share", thick_slice_share),
                        ("sagittal_share", sagittal_share)):
        if not 0.0 <= float(value) <= 1.0:
            raise VertebraError(f"{name} must lie in [0, 1], got {value!r}")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise VertebraError(f"seed must be an integer, got {seed!r}") from None
    if seed < 0:
        raise VertebraError(f"seed must be non-negative, got {seed}")
    if orientation not in ("random", "canonical"):
        raise VertebraError(f"orientation must be 'random' or 'canonical', got {orientation!r}")
    if not (math.isfinite(float(voxel_scale)) and float(voxel_scale) >= 1.0):
        raise VertebraError(f"voxel_scale must be a number >= 1, got {voxel_scale!r}")
    share = SPINE_FOV_SHARE if spine_fov_share is None else float(spine_fov_share)
    if not 0.0 <= share <= 1.0:
        raise VertebraError(f"spine_fov_share must lie in [0, 1], got {spine_fov_share!r}")
    return seed, share, float(thick_slice_share)


def _metal_levels(spine: Spine, run: tuple[int, int], metal: bool | None, rng) -> list[int]:
    """Indices of the vertebrae with screws: 2-6 consecutive thoracolumbar levels inside
    the scanned ``run`` (first, last index) on 15 % of the scans (``metal=None``), on
    every scan (True, where two such levels are in view) or none (False)."""
    use_metal = bool(rng.random() < 0.15) if metal is None else bool(metal)
    levels: list[int] = []
    candidates = [i for i in range(run[0], run[1] + 1) if spine.dims[i].region != "cervical"]
    if use_metal and len(candidates) >= 2:
        length = int(rng.integers(2, min(6, len(candidates)) + 1))
        start = int(rng.integers(0, len(candidates) - length + 1))
        levels = candidates[start:start + length]
    if metal and not levels:
        warnings.warn("metal=True but fewer than two thoracic or lumbar vertebrae are in the "
                      "field of view; no screws placed", stacklevel=3)
    return levels


def _rasterise(scene: Scene, spine: Spine, grid: _Grid, habitus, rng, r_metal,
               r_texture=None):
    """Background, soft, bone and (with ``r_metal``) metal passes -> (HU, labels); with
    ``r_texture``, the bodies get denser endplates and the bones a random texture
    (:func:`_clinical.sclerotic_endplates`, :func:`_clinical.bone_texture`)."""
    blur = float(np.max(grid.spacing))
    hu = np.empty(grid.zyx, dtype=np.float32)
    lab = np.zeros(grid.zyx, dtype=np.uint8)
    outline, table = _outline(spine, scene.head, habitus, grid)
    clinical = scene.clinical
    if clinical is not None:
        outline[6][:] = clinical.tissue_hu
    _sdf.body_outline(hu, grid.origin, grid.spacing, *outline, blur)
    objs = scene.objects
    if rng.random() < 0.7:  # the patient table (a hollow shell) under the back
        zc = 0.5 * (grid.z()[0] + grid.z()[-1])
        scene.soft.box(objs.add(rng.uniform(150, 400), label=-1),
                       np.array([float(np.mean(outline[0])), table + 10, zc]), np.eye(3),
                       (230, 8, 2000), rounding=4, onion=1.0)
    core, shell, thick, label_of = objs.tables()
    no_label = np.full_like(label_of, -1)
    sdf = np.empty(grid.zyx, dtype=np.float32)
    obj = np.empty(grid.zyx, dtype=np.int16)
    if clinical is not None:
        _pass(clinical.organs, grid, sdf, obj, blur)
        _sdf.composite(hu, lab, sdf, obj, core, shell, thick, no_label, grid.spacing)
    _pass(scene.soft, grid, sdf, obj, blur)
    _sdf.composite(hu, lab, sdf, obj, core, shell, thick, no_label, grid.spacing)
    if clinical is not None:
        _pass(clinical.vessels, grid, sdf, obj, blur)
        _sdf.composite(hu, lab, sdf, obj, core, shell, thick, no_label, grid.spacing)
    _pass(scene.bone, grid, sdf, obj, blur)
    _sdf.composite(hu, lab, sdf, obj, core, shell, thick, label_of, grid.spacing)
    if r_texture is not None:
        sclerotic_endplates(hu, lab, spine, grid.origin, grid.spacing, r_texture)
        bone_texture(hu, sdf < 0, grid.spacing, r_texture)
    if r_metal is not None:
        _pass(scene.metal, grid, sdf, obj, blur)
        _sdf.composite(hu, lab, sdf, obj, core, shell, thick, no_label, grid.spacing)
        sources = _metal_sources(scene.metal, grid, r_metal)
        if sources is not None:
            slices, points, count, angles = sources
            _sdf.streaks(hu, slices, grid.origin, grid.spacing, points, count, angles,
                         r_metal.uniform(100, 300), r_metal.uniform(0.8, 1.5),
                         r_metal.uniform(25, 50), r_metal.uniform(60, 180))
    return hu, lab


def _mask_centroids(lab: np.ndarray, grid: _Grid, full: dict[int, int]):
    """Centre of mass (world mm) of each vertebra label and its visible fraction."""
    from scipy import ndimage

    found = ndimage.find_objects(lab)
    centroids, visible = {}, {}
    for vid in vlabels.VERSE_IDS:
        if vid > len(found) or found[vid - 1] is None:
            continue
        sl = found[vid - 1]
        idx = np.nonzero(lab[sl] == vid)
        count = len(idx[0])
        frac = min(1.0, count / full[vid]) if vid in full and full[vid] > 0 else 1.0
        visible[vid] = float(frac)
        if frac < MIN_VISIBLE:
            continue
        kji = np.array([idx[a].mean() + sl[a].start for a in range(3)])
        ijk = kji[::-1]
        centroids[vid] = grid.origin + grid.spacing * ijk
    order = vlabels.sort_anatomical(centroids)
    vis_order = vlabels.sort_anatomical(visible)
    return {v: centroids[v] for v in order}, {v: visible[v] for v in vis_order}


def save_phantom(phantom: SpinePhantom, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write a phantom in the VerSe folder layout.

    Files::

        OUT/rawdata/sub-NAME/sub-NAME_ct.nii.gz                  (HU, int16)
        OUT/derivatives/sub-NAME/sub-NAME_seg-vert_msk.nii.gz    (VerSe ids, uint8)
        OUT/derivatives/sub-NAME/sub-NAME_seg-subreg_ctd.json    (verse20 centroids)

    (the centroid file carries VerSe's ``seg-subreg`` entity so that
    :class:`vertebra.data.VerseDataset` pairs it with the CT).

    Returns:
        {"ct": path, "mask": path, "centroids": path}.
    """
    from vertebra.data.verse import write_centroids

    name = str(name)
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise VertebraError(f"a case name must be a plain word without spaces or slashes, "
                            f"got {name!r}")
    out = Path(out_dir)
    raw = out / "rawdata" / f"sub-{name}"
    der = out / "derivatives" / f"sub-{name}"
    raw.mkdir(parents=True, exist_ok=True)
    der.mkdir(parents=True, exist_ok=True)
    paths = {"ct": raw / f"sub-{name}_ct.nii.gz",
             "mask": der / f"sub-{name}_seg-vert_msk.nii.gz",
             "centroids": der / f"sub-{name}_seg-subreg_ctd.json"}
    ct = phantom.ct
    ct.with_data(np.round(ct.data).astype(np.int16)).save(paths["ct"])
    phantom.labels.save(paths["mask"])
    write_centroids(paths["centroids"], phantom.centroids, phantom.labels)
    return paths


def write_phantoms(out_dir: str | Path, seeds, *, prefix: str = "phantom", **options
                   ) -> list[str]:
    """Make and save several phantoms atomically (a temporary folder renamed into place).

    Args:
        out_dir: destination; must not exist yet, or be an empty folder.
        seeds: iterable of integer seeds, one case each, named ``{prefix}{seed:04d}``.
        options: passed to :func:`make_spine_phantom`.

    Returns:
        the case names written.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VertebraError(f"{out} already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    names = []
    try:
        for seed in seeds:
            case = f"{prefix}{int(seed):04d}"
            save_phantom(make_spine_phantom(int(seed), **options), tmp, case)
            names.append(case)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names
