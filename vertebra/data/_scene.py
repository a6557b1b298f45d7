"""The synthetic patient as implicit primitives: bones, discs, organs, metal.

Builds, for a placed :class:`~vertebra.data.anatomy.Spine`, the primitive lists that
:mod:`vertebra.data.phantom` rasterises: a *soft* pass (lungs, airway, bowel gas,
sinuses), a *bone* pass (vertebrae, discs, ribs and costal cartilage, sternum,
clavicles, scapulae, sacrum, coccyx, hip bones, femora, skull base, mandible, teeth)
and a *metal* pass (pedicle screws and rods), with a material table per object.

All positions are world LPS mm. Per-vertebra shapes are written in the vertebra's local
frame (x left, y posterior, z along the spine, origin at the body centre); the hip bones
in an upright pelvic frame at S1's centre; the skull in a head frame at C1's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vertebra import labels as vlabels
from vertebra.data import _sdf
from vertebra.data._clinical import Clinical, build_clinical, restyle_bone
from vertebra.data.anatomy import LevelDims, Spine, rot_x

AIR = -1000.0
METAL_HU = 3000.0


#: Share of the clinical scans with the arms raised beside the head (as chest and abdomen
#: CTs are taken), of which :data:`ARMS_OUT_OF_VIEW` have them wholly above the scan.
ARMS_RAISED = 0.6
ARMS_OUT_OF_VIEW = 0.25 / 0.6


@dataclass(frozen=True)
class ShoulderPose:
    """Where a clinical scan's arms are and how its shoulder girdle sits with them.

    Attributes:
        raised: the arms are raised beside the head (else at the sides).
        arms_shown: the arms are drawn (raised arms may lie wholly above the scan).
        turn_deg: the scapulae's upward turn in their plane about the root of the
            scapular spine (lateral side up, inferior angle out), degrees; it lifts the
            glenoid, the humeral head and the clavicle's lateral end with it.
        shrug_mm: the whole girdle's lift above its arms-at-the-sides place, mm.
    """

    raised: bool
    arms_shown: bool
    turn_deg: float
    shrug_mm: float


def draw_shoulder_pose(rng: np.random.Generator) -> ShoulderPose:
    """A clinical scan's :class:`ShoulderPose`: arms raised on :data:`ARMS_RAISED` of the
    scans, the scapulae then turned up 10-30 degrees, else at the sides, turned -5 to 5
    degrees; the girdle shrugged -5 to 15 mm either way. The humeral heads' centres then
    lie level with C4-T1 with raised arms and with T1-T3 at the sides (decision
    ``shoulder-girdle-and-thick-slices`` compares them with a real chest CT)."""
    u = rng.random()
    raised = bool(u < ARMS_RAISED)
    shown = bool(not raised or u < ARMS_RAISED * (1.0 - ARMS_OUT_OF_VIEW))
    turn = rng.uniform(10.0, 30.0) if raised else rng.uniform(-5.0, 5.0)
    return ShoulderPose(raised, shown, float(turn), float(rng.uniform(-5.0, 15.0)))


# ---------------------------------------------------------------------- materials
class Objects:
    """Material table: per object (core HU, shell HU, shell thickness mm, label)."""

    def __init__(self) -> None:
        self.core: list[float] = []
        self.shell: list[float] = []
        self.thick: list[float] = []
        self.label: list[int] = []

    def add(self, core, shell=None, thick=0.0, label=-1) -> int:
        self.core.append(float(core))
        self.shell.append(float(core if shell is None else shell))
        self.thick.append(float(thick))
        self.label.append(int(label))
        return len(self.core) - 1

    def tables(self):
        return (np.asarray(self.core, dtype=np.float64), np.asarray(self.shell, dtype=np.float64),
                np.asarray(self.thick, dtype=np.float64), np.asarray(self.label, dtype=np.int64))


class _Local:
    """A local frame: origin ``c`` (3,) and columns ``F`` (3, 3) in world."""

    def __init__(self, c, F) -> None:
        self.c = np.asarray(c, dtype=np.float64)
        self.F = np.asarray(F, dtype=np.float64)

    def p(self, x, y, z) -> np.ndarray:
        return self.c + self.F @ np.array([x, y, z], dtype=np.float64)

    def pts(self, xyz) -> np.ndarray:
        return self.c + np.asarray(xyz, dtype=np.float64) @ self.F.T


def _bar(shapes, o, loc, a, b, half_w, half_h, up=(0.0, 0.0, 1.0), *, rounding=None,
         smooth=0.0, op=_sdf.UNION):
    """A box from local point a to b, ``half_w`` across and ``half_h`` towards ``up``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    u = b - a
    length = float(np.linalg.norm(u))
    u /= length
    up = np.asarray(up, dtype=np.float64)
    v = up - (up @ u) * u
    nv = np.linalg.norm(v)
    v = np.array([0.0, 0.0, 1.0]) if nv < 1e-6 else v / nv
    w = np.cross(v, u)
    frame = loc.F @ np.column_stack([u, w, v])
    r = 0.9 * min(half_w, half_h) if rounding is None else rounding
    shapes.box(o, loc.p(*(0.5 * (a + b))), frame, (0.5 * length + r * 0.3, half_w, half_h),
               rounding=r, smooth=smooth, op=op)


# ---------------------------------------------------------------------- vertebrae
def _vertebra(shapes: _sdf.Shapes, canals: _sdf.Shapes, o: int, loc: _Local, d: LevelDims):
    """Primitives of one vertebra in its local frame (see :mod:`vertebra.data.anatomy`)."""
    name = d.name
    if name == "C1":
        _atlas(shapes, o, loc, d)
        return
    w2, hh = d.width / 2, d.height / 2
    front, back = 0.55 * d.depth, 0.45 * d.depth
    cw, cd, pw = d.canal_w, d.canal_d, d.ped_w
    k = 2.0  # fillet radius
    shapes.body(o, loc.c, loc.F, w2, front, back, hh, waist=0.07,
                rounding=min(2.0, 0.3 * hh), smooth=k)
    cerv = d.region == "cervical"
    lumb = d.region == "lumbar"
    if name == "C2":
        shapes.capsule(o, loc.p(0, 0.5, hh - 3), loc.p(0, 2.0, hh + 14), 5.2, 4.2, smooth=k)
        for s in (-1, 1):
            shapes.ellipsoid(o, loc.p(s * 12, 1.5, hh + 0.5), loc.F, (7, 8, 4), smooth=k)
    y_ped = back + 0.55 * cd
    for s in (-1, 1):
        xp = s * (cw / 2 + pw / 2)
        _bar(shapes, o, loc, (xp, back - 3, 0.12 * d.height), (1.05 * xp, y_ped, 0.1 * d.height),
             pw / 2, d.ped_h / 2, smooth=k)
        lam_h = (0.3 if cerv else 0.4) * d.height
        _bar(shapes, o, loc, (s * (cw / 2 + 0.4 * pw), y_ped, 0.05 * d.height),
             (0, back + cd + d.lamina / 2, -0.05 * d.height), d.lamina / 2, lam_h, smooth=k)
        if cerv:
            pillar_x = s * (cw / 2 + 0.5 * pw + 2)
            shapes.ellipsoid(o, loc.p(pillar_x, back + 0.35 * cd, 0), loc.F,
                             (6.0, 7.0, hh + 0.4 * d.disc), smooth=k)
            tip = (s * d.tp_span / 2, 0.6 * back, -0.15 * d.height)
            shapes.capsule(o, loc.p(s * 0.85 * w2, -0.05 * d.depth, -0.1 * d.height), loc.p(*tip),
                           2.6, 3.0, smooth=k)
            shapes.capsule(o, loc.p(pillar_x, back + 0.3 * cd, -0.1 * d.height), loc.p(*tip),
                           2.8, 3.0, smooth=k)
        else:
            kx_s, kx_i, ky_s, ky_i = (1.1, 0.25, 0.6, 0.8) if lumb else (0.5, 0.5, 0.45, 0.75)
            r = (0.35 * pw + 2.0, 4.0, 0.45 * hh + 0.2 * d.disc)
            shapes.ellipsoid(o, loc.p(s * (cw / 2 + kx_s * pw), back + ky_s * cd,
                                      hh + 0.35 * d.disc), loc.F, r, smooth=k)
            shapes.ellipsoid(o, loc.p(s * (cw / 2 + kx_i * pw), back + ky_i * cd + 2,
                                      -hh - 0.35 * d.disc), loc.F, r, smooth=k)
            base = (s * (cw / 2 + 0.5 * pw), back + (0.3 if lumb else 0.5) * cd,
                    (0.0 if lumb else 0.1) * d.height)
            if lumb:
                tip = (s * d.tp_span / 2, base[1] + 6, -2.0)
                thick = 8.0 if name in ("L5", "L6") else 5.0
                _bar(shapes, o, loc, base, tip, 3.0 if thick < 6 else 5.0, thick, smooth=k)
            else:
                tip = (s * d.tp_span / 2, base[1] + 14, base[2] + 3)
                shapes.capsule(o, loc.p(*base), loc.p(*tip), 4.5, 5.5, smooth=k)
    # spinous process
    phi = math.radians(d.sp_angle)
    base = np.array([0.0, back + cd + 0.5 * d.lamina, -0.05 * d.height])
    direction = np.array([0.0, math.cos(phi), -math.sin(phi)])
    tip = base + d.sp_len * direction
    _bar(shapes, o, loc, base - 2 * direction, tip, d.sp_t / 2, d.sp_h / 2,
         up=(0.0, math.sin(phi), math.cos(phi)), smooth=k)
    if cerv and name != "C7":
        for s in (-1, 1):
            shapes.ellipsoid(o, loc.p(s * 4.0, tip[1], tip[2]), loc.F, (3.5, 3.5, 4.0), smooth=k)
    else:
        shapes.ellipsoid(o, loc.p(*tip), loc.F, (0.7 * d.sp_t, 4.0, 0.5 * d.sp_h), smooth=k)
    # the spinal canal, carved from everything once all vertebrae are in
    canals.body(o, loc.p(0, back + cd / 2, 0), loc.F, cw / 2, cd / 2, cd / 2,
                hh + 0.6 * d.disc, rounding=0.5, op=_sdf.SUBTRACT_ALL)


def _atlas(shapes, o, loc, d):
    """C1: anterior arch, lateral masses, posterior arch, transverse processes; no body."""
    k = 2.0
    f = d.width / 16.0
    arch = np.array([(-13, -4, 0), (-7, -10, 0), (0, -12, 0), (7, -10, 0), (13, -4, 0)]) * f
    shapes.chain(o, loc.pts(arch), 4.2, smooth=k)
    shapes.ellipsoid(o, loc.p(0, -13 * f, 0), loc.F, (5, 3, 6), smooth=k)
    for s in (-1, 1):
        shapes.ellipsoid(o, loc.p(s * 16 * f, 2 * f, 0), loc.F, (7, 10, 7.5), smooth=k)
        post = np.array([(s * 16, 10, -1), (s * 14, 20, -1), (s * 8, 27, -1), (0, 29, -1)]) * f
        shapes.chain(o, loc.pts(post), 3.5, smooth=k)
        shapes.capsule(o, loc.p(s * 20 * f, 1, 0), loc.p(s * d.tp_span / 2, 2, 1), 4.5, 5.5,
                       smooth=k)
    shapes.ellipsoid(o, loc.p(0, 30 * f, -1), loc.F, (5, 3.5, 5), smooth=k)


def _disc(shapes, o, upper: _Local, du: LevelDims, lower: _Local, dl: LevelDims):
    """Intervertebral disc filling the (wedge-shaped) gap between two endplates."""
    ez_l, ez_u = lower.F[:, 2], upper.F[:, 2]
    p_lo = lower.c + ez_l * (dl.height / 2 + 0.2)
    p_hi = upper.c - ez_u * (du.height / 2 + 0.2)
    centre_local = 0.5 * (p_lo + p_hi)
    frame = upper.F
    depth = min(du.depth, dl.depth)
    centre = centre_local - frame[:, 1] * 0.05 * depth
    n1, n2 = -ez_l, ez_u
    shapes.slab(o, centre, frame, 0.5 * min(du.width, dl.width), 0.5 * depth,
                n1, float(n1 @ p_lo), n2, float(n2 @ p_hi), reach=0.5 * dl.disc + 0.3 * depth + 3)


# ---------------------------------------------------------------------- ribs and chest
_RIB_A = (55, 75, 95, 108, 118, 124, 128, 130, 130, 128, 122, 112, 100)
_RIB_B = (40, 55, 65, 72, 78, 82, 85, 88, 90, 92, 90, 88, 86)
_RIB_DROP = (30, 45, 60, 72, 76, 78, 78, 76, 74, 70, 60, 50, 40)


def _rib_joint_heights(d: LevelDims) -> tuple[float, float]:
    """Height of a rib's head above its vertebra's body centre, and of its tubercle
    above the transverse process's tip, mm (local z).

    Ribs 2 to 10 articulate across the disc above their vertebra (demifacets), so the
    head lies at that disc and the neck runs level to the tubercle, which rests on the
    upper side of the transverse process; the first rib and the floating ribs
    articulate with their own body only, and the floating ribs have no costotransverse
    joint, so their necks fall from the middle of the body (``benchmarks/decisions.md``,
    ``ribs``).
    """
    hh = d.height / 2
    if d.rib_index == 1:
        return 0.5 * hh, 3.0
    if d.ribs in ("floating", "short"):
        return 0.0, -4.0
    return hh + 0.4 * d.disc, 3.0


def _rib_path(loc: _Local, d: LevelDims, side: int, width: float, rng) -> tuple:
    """World points (N, 3) and radii (N,) of one rib from head to bony end, plus its
    lateral-anterior ellipse parameters for the cartilage."""
    r = d.rib_index - 1
    A = _RIB_A[min(r, 12)] * width * (1 + 0.03 * rng.standard_normal())
    B = _RIB_B[min(r, 12)] * width * (1 + 0.03 * rng.standard_normal())
    drop = _RIB_DROP[min(r, 12)] * (1 + 0.08 * rng.standard_normal())
    w2 = d.width / 2
    back = 0.45 * d.depth
    tp = np.array([side * d.tp_span / 2, back + 0.5 * d.canal_d + 14, 0.1 * d.height + 3])
    head_z, tub_dz = _rib_joint_heights(d)
    head = np.array([side * (w2 - 1), back - 4, head_z])
    tub = tp + np.array([0.0, 6.0, tub_dz])
    x_t = abs(tub[0])
    off = min(x_t + 15.0, 0.6 * A)
    a_ = A - off
    phi_t = math.asin(max(min((x_t - off) / a_, 0.95), -0.95))
    yc = tub[1] - B * math.cos(phi_t)
    end = {"true": 150.0, "false": 148.0, "floating": 100.0 if d.rib_index % 2 else 78.0,
           "short": 50.0}[d.ribs]
    if d.ribs == "floating" and d.rib_index >= 12:
        end = 78.0
    phi = np.linspace(phi_t, math.radians(end), 24)
    s = (phi - phi_t) / (math.pi - phi_t)
    x = side * (off + a_ * np.sin(phi))
    y = yc + B * np.cos(phi)
    z = tub[2] - drop * s ** 1.3
    shaft = np.column_stack([x, y, z])
    pts = np.vstack([head, 0.5 * (head + tub), shaft])
    base_r = {"true": 4.8, "false": 4.6, "floating": 4.0, "short": 3.6}[d.ribs]
    if d.rib_index == 1:
        base_r = 5.2
    radii = np.concatenate([[5.5, 4.5], np.linspace(base_r, base_r * 1.1, len(shaft))])
    return loc.pts(pts), radii


def _loft(shapes, o, upper, lower, half_t, *, smooth=4.0):
    """A thin curved plate between two polylines ``upper`` and ``lower`` (N, 3), world
    mm, as N-1 boxes ``half_t`` mm thick (one per quad of the strip)."""
    for i in range(len(upper) - 1):
        a0, a1, b0, b1 = upper[i], upper[i + 1], lower[i], lower[i + 1]
        e1 = 0.5 * (a0 + a1) - 0.5 * (b0 + b1)
        e2 = 0.5 * (a1 - a0) + 0.5 * (b1 - b0)
        v = e1 / np.linalg.norm(e1)
        u = e2 - (e2 @ v) * v
        u /= np.linalg.norm(u)
        frame = np.column_stack([u, v, np.cross(u, v)])
        half = (0.5 * np.linalg.norm(e2) + 3.0, 0.5 * np.linalg.norm(e1) + 1.0, half_t)
        shapes.box(o, 0.25 * (a0 + a1 + b0 + b1), frame, half, rounding=half_t * 0.9,
                   smooth=smooth)


_SACRAL_DEPTH = (34.0, 28.0, 22.0, 17.0, 13.0)


def _sacrum(bone, sacrum, coccyx, sac_locs, dims):
    """Sacrum (S1 body and promontory, a tapering plate with the alae, dorsal crest,
    foramina and canal) and a three-piece coccyx."""
    for s_i, (loc, d) in enumerate(zip(sac_locs, dims)):
        hh = d.height / 2
        depth = _SACRAL_DEPTH[s_i] * d.width / (50.0 * (1.0, 0.8, 0.62, 0.48, 0.36)[s_i])
        if s_i == 0:
            bone.body(sacrum, loc.c, loc.F, d.width / 2, 0.55 * d.depth, 0.45 * d.depth, hh,
                      rounding=2.0, smooth=4.0)
            for s in (-1, 1):
                bone.ellipsoid(sacrum, loc.p(s * (d.canal_w / 2 + 4), 0.45 * d.depth + 12,
                                             hh + 4), loc.F, (6, 5, 7), smooth=3.0)
        bone.box(sacrum, loc.p(0, 0.2 * depth, -1.0), loc.F,
                 (d.tp_span / 2, depth / 2, hh + 3.0), rounding=min(depth / 2 - 0.5, 7.0),
                 smooth=5.0)
        bone.ellipsoid(sacrum, loc.p(0, 0.7 * depth, 0), loc.F, (3.5, 4, 0.4 * d.height),
                       smooth=3.0)
    for s_i, (loc, d) in enumerate(zip(sac_locs, dims)):
        if s_i < 4:
            for s in (-1, 1):
                x = s * (0.17 * d.tp_span + 6)
                bone.capsule(sacrum, loc.p(x, -40, -d.height / 2), loc.p(x, 40, -d.height / 2),
                             4.0, op=_sdf.SUBTRACT_OWN)
        bone.body(sacrum, loc.p(0, 0.45 * d.depth + 3, 0), loc.F, 0.28 * d.canal_w, 4.0, 4.0,
                  d.height / 2 + 3, rounding=1.0, op=_sdf.SUBTRACT_OWN)
    last = sac_locs[-1]
    ez = last.F[:, 2]
    pts = [last.c - ez * (dims[-1].height / 2 + 2)]
    direction = -ez
    for _ in range(3):
        direction = direction - 0.25 * last.F[:, 1]
        direction /= np.linalg.norm(direction)
        pts.append(pts[-1] + 11 * direction)
    bone.chain(coccyx, np.array(pts), (6.0, 5.0, 4.0, 3.0))


def _pelvis(bone, other, fem_head, fem_shaft, spine: Spine, f: float):
    """Hip bones (iliac wings lofted between crest and pelvic brim, acetabula, obturator
    rings, pubis, ischium) and proximal femora, in the upright pelvic frame at S1
    (x left, y posterior, z up; mm scaled by ``f``)."""
    P = _Local(spine.sacrum_centres[0], spine.pelvis_frame)
    for s in (-1, 1):
        def pts(rows, s=s):
            return P.pts(np.array(rows, dtype=np.float64) * np.array([s * f, f, f]))

        crest = pts([(40, 38, 8), (70, 32, 36), (100, 12, 48), (122, -18, 42), (130, -48, 20),
                     (120, -74, -18)])
        brim = pts([(42, 12, -12), (52, 2, -32), (64, -10, -52), (72, -26, -68),
                    (78, -42, -78), (80, -58, -80)])
        _loft(bone, other, crest, brim, 3.5)
        bone.chain(other, crest, np.array([7.0, 6.0, 5.5, 5.5, 5.5, 6.5]), smooth=3.0)
        pubic = pts([(80, -58, -80), (60, -74, -96), (34, -82, -112), (8, -84, -124)])
        bone.chain(other, np.vstack([brim, pubic[1:]]), 5.0, smooth=3.0)
        bone.ellipsoid(other, pts([(46, 20, -5)])[0], P.F, (12, 16, 30), smooth=4.0)
        bone.capsule(other, pts([(52, 8, -25)])[0], pts([(84, -28, -88)])[0], 15, 17,
                     smooth=4.0)
        hip = pts([(88, -32, -98)])[0]
        bone.ellipsoid(other, pts([(82, -30, -96)])[0], P.F, (17, 26, 26), smooth=4.0)
        # obturator ring: pubic rami in front, ischium behind
        ring = [(48 + 22 * math.sin(t) * 0.35, -52 + 22 * math.sin(t), -128 + 26 * math.cos(t))
                for t in np.linspace(0, 2 * math.pi, 11)]
        bone.chain(other, pts(ring), 6.5, smooth=3.0)
        bone.ellipsoid(other, pts([(10, -84, -128)])[0], P.F, (10, 12, 20), smooth=3.0)
        bone.ellipsoid(other, pts([(56, -22, -156)])[0], P.F, (14, 18, 14), smooth=3.0)
        bone.capsule(other, pts([(80, -24, -108)])[0], pts([(58, -24, -150)])[0], 12, 12,
                     smooth=3.0)
        bone.ellipsoid(other, hip, P.F, (25 * f,) * 3, op=_sdf.SUBTRACT_OWN)
        bone.ellipsoid(fem_head, hip, P.F, (22.5 * f,) * 3)
        neck_end = pts([(122, -26, -124)])[0]
        bone.capsule(fem_head, hip, neck_end, 15, 16)
        bone.ellipsoid(fem_head, pts([(128, -20, -118)])[0], P.F, (14, 17, 22), smooth=3.0)
        bone.ellipsoid(fem_head, pts([(110, -18, -150)])[0], P.F, (9, 9, 10), smooth=3.0)
        bone.capsule(fem_shaft, pts([(120, -28, -130)])[0], pts([(104, -32, -480)])[0], 16, 13)


# ---------------------------------------------------------------------- the scene
@dataclass
class Scene:
    """Everything to rasterise.

    Attributes:
        objects: material table (one row per object).
        soft, bone, metal: primitives of the three passes (in that order).
        vertebra_objects: {VerSe id: object index} of every vertebra.
        head: (origin (3,), frame (3, 3)) of the head.
        rib_levels: names of the rib-bearing vertebrae, cranio-caudal.
        clinical: organs, contrast, arms and leads of a clinical scan (None: plain).
    """

    objects: Objects
    soft: _sdf.Shapes
    bone: _sdf.Shapes
    metal: _sdf.Shapes
    vertebra_objects: dict[int, int]
    head: tuple[np.ndarray, np.ndarray]
    rib_levels: tuple[str, ...]
    clinical: Clinical | None = None


def build_scene(spine: Spine, rng: np.random.Generator, metal_levels=(),
                clinical_rng: np.random.Generator | None = None,
                lungs: tuple[float, float, float] = (1.0, 1.0, 0.0),
                ribless_hu: float | None = None,
                calcified_discs: dict[int, float] | None = None,
                shoulder_pose: ShoulderPose | None = None) -> Scene:
    """All primitives and materials of one patient.

    Args:
        spine: placed vertebrae (every level, also those that will fall outside the grid).
        rng: random generator, consumed in a fixed order.
        metal_levels: indices into ``spine.dims`` of the vertebrae that get screws.
        clinical_rng: a second generator that, when given, redraws the bone densities and
            adds organs, contrast, arms and leads (:mod:`vertebra.data._clinical`); the
            draws of ``rng`` stay the same, so a seed's skeleton does not change.
        lungs: (transverse, anteroposterior) size factors of the lungs and how far (mm)
            the diaphragm sits lower than its plain-phantom place (see :func:`_organs`).
        ribless_hu: with ``clinical_rng``, the ribs' CT number, core and cortex alike (a
            muscle's: ribs that do not show; they keep their place in the scene, so every
            other draw stays the same); None: the ribs as drawn.
        calcified_discs: {i: HU} for the discs above ``spine.dims[i]`` that are calcified
            or ossified (a material of their own at that CT number, bone-like: the two
            vertebrae then look joined across the disc, as in degenerated, calcified or
            bridged discs); None or empty: every disc is soft.
        shoulder_pose: with ``clinical_rng``, the arms' and girdle's pose
            (:func:`draw_shoulder_pose`); None: the arms-at-the-sides girdle.
    """
    objs = Objects()
    soft, bone, canals, metal = _sdf.Shapes(), _sdf.Shapes(), _sdf.Shapes(), _sdf.Shapes()
    trab = rng.uniform(130, 300)
    cort = rng.uniform(750, 1100)
    thick = rng.uniform(1.0, 1.8)
    vert_obj = {}
    for d in spine.dims:
        vid = vlabels.by_name(d.name).verse_id
        vert_obj[vid] = objs.add(trab + rng.normal(0, 20), cort, thick, vid)
    m = {
        "disc": objs.add(rng.uniform(70, 100), label=0),
        "rib": objs.add(trab + 40, cort * 0.9, 1.2, 0),
        "cartilage": objs.add(rng.uniform(90, 180), rng.uniform(150, 400), 0.8, 0),
        "bone": objs.add(trab + 30, cort, 1.5, 0),  # sternum, clavicles, scapulae, hip bones
        "sacrum": objs.add(trab, cort * 0.9, thick, vlabels.SACRUM),
        "coccyx": objs.add(trab, cort * 0.9, thick, vlabels.COCCYX),
        "femur_head": objs.add(trab + 20, cort * 1.1, 1.5, 0),
        "femur_shaft": objs.add(rng.uniform(-60, 40), 1300.0, 5.0, 0),
        "skull": objs.add(rng.uniform(550, 800), 1400.0, 1.8, 0),
        "teeth": objs.add(2000.0, 2600.0, 1.0, 0),
        "lung": objs.add(rng.uniform(-880, -800), label=-1),
        "air": objs.add(AIR, label=-1),
        "steel": objs.add(METAL_HU, label=-1),
    }
    width = spine.dims[0].width / 16.0 * rng.uniform(0.95, 1.08)
    locs = [_Local(spine.centres[i], spine.frames[i]) for i in range(len(spine.dims))]
    sac_locs = [_Local(spine.sacrum_centres[s], spine.sacrum_frames[s]) for s in range(5)]

    for i, d in enumerate(spine.dims):
        _vertebra(bone, canals, vert_obj[vlabels.by_name(d.name).verse_id], locs[i], d)
    for i in range(1, len(spine.dims)):
        if spine.dims[i - 1].name != "C1":
            hu = (calcified_discs or {}).get(i)
            o = m["disc"] if hu is None else objs.add(hu, label=0)
            _disc(bone, o, locs[i - 1], spine.dims[i - 1], locs[i], spine.dims[i])
    _disc(bone, m["disc"], locs[-1], spine.dims[-1], sac_locs[0], spine.sacrum_dims[0])
    pose = shoulder_pose if clinical_rng is not None else None
    rib_levels, shoulders = _chest(bone, m, spine, locs, width, rng, pose)
    _sacrum(bone, m["sacrum"], m["coccyx"], sac_locs, spine.sacrum_dims)
    _pelvis(bone, m["bone"], m["femur_head"], m["femur_shaft"], spine,
            width * rng.uniform(0.95, 1.1))
    head = _head(bone, soft, m, locs[spine.index("C1")], width * rng.uniform(0.95, 1.08),
                 rng.uniform(-8, 15))
    _organs(soft, m, spine, locs, width, rng, lungs)
    _screws(metal, m["steel"], spine, locs, metal_levels)
    clinical = None
    if clinical_rng is not None:
        restyle_bone(objs, vert_obj, m, clinical_rng)
        clinical = build_clinical(spine, objs, locs, width, shoulders, clinical_rng, pose)
        if ribless_hu is not None:
            objs.core[m["rib"]] = objs.shell[m["rib"]] = float(ribless_hu)
    bone.extend(canals)  # the spinal canal is carved last, from every bone
    return Scene(objs, soft, bone, metal, vert_obj, (head.c, head.F), rib_levels, clinical)


def _chest(bone, m, spine: Spine, locs, width, rng, pose: ShoulderPose | None = None
           ) -> tuple[tuple[str, ...], np.ndarray]:
    """Ribs on every thoracic level, costal cartilage, sternum, clavicles, scapulae and
    humeral heads, the shoulder girdle placed by ``pose`` (None: the arms-at-the-sides
    girdle, no draws). Returns the names of the rib-bearing levels and the (2, 3) world
    centres of the right and left humeral heads."""
    rib_ends = {}
    with_ribs = []
    for i, d in enumerate(spine.dims):
        if d.ribs == "none":
            continue
        with_ribs.append(d.name)
        for s in (-1, 1):
            pts, radii = _rib_path(locs[i], d, s, width, rng)
            bone.chain(m["rib"], pts, radii)
            rib_ends[(d.rib_index, s)] = pts[-1]
    thor = [i for i, d in enumerate(spine.dims) if d.region == "thoracic"]
    t2, t9 = locs[thor[1]], locs[thor[8]]
    ys = [rib_ends[(r, s)][1] for r in range(2, 8) for s in (-1, 1)]
    xm = float(np.mean([loc.c[0] for loc in locs[thor[0]:thor[8] + 1]]))
    y_front = float(np.min(ys)) - 6.0
    top = np.array([xm, y_front + 14, t2.c[2] - 4])
    bot = np.array([xm, y_front - 6, t9.c[2] - 5])
    axis = (bot - top) / np.linalg.norm(bot - top)
    frame = np.column_stack([[1.0, 0, 0], np.cross(axis, [1.0, 0, 0]), -axis])
    length = float(np.linalg.norm(bot - top))
    other = m["bone"]
    bone.box(other, top + axis * 0.15 * length, frame, (26, 6, 0.15 * length + 2), rounding=4)
    bone.box(other, top + axis * 0.6 * length, frame, (15, 6, 0.4 * length), rounding=4)
    bone.ellipsoid(other, bot + axis * 12, frame, (9, 3, 14))
    for r in range(1, 11):
        for s in (-1, 1):
            e = rib_ends[(r, s)]
            if r <= 7:  # true ribs: cartilage to the sternum
                t = (r - 1) / 6.0
                attach = top + axis * (0.05 + 0.88 * t) * length
                attach = attach + np.array([s * (22 if r == 1 else 14), 0, 0])
                mid = np.array([0.5 * (e[0] + attach[0]), min(e[1], attach[1]) - 4,
                                0.5 * (e[2] + attach[2]) - 4 * t])
                bone.chain(m["cartilage"], np.array([e, mid, attach]), 5.0)
            else:  # false ribs: cartilage up to the costal margin
                up = rib_ends[(r - 1, s)]
                target = 0.4 * e + 0.6 * up + np.array([-s * 10.0, -5.0, 0.0])
                bone.chain(m["cartilage"], np.array([e, target]), 4.5)
    t3, t7 = locs[thor[2]], locs[thor[6]]
    shoulders = []
    for s in (-1, 1):
        a = top + np.array([s * 24, 0, 4])  # the sternoclavicular joint stays in place
        b = a + np.array([s * 140 * width, 75, 18])
        mid = a + np.array([s * 70 * width, 25, 8])
        centre = np.array([xm + s * 92 * width, max(t3.c[1], t7.c[1]) + 38,
                           0.5 * (t3.c[2] + t7.c[2]) + 10])
        u = np.array([s * 0.8, -0.6, 0.0])
        sframe = np.column_stack([u, [0.0, 0.0, 1.0], np.cross(u, [0.0, 0.0, 1.0])])
        root = centre + np.array([-s * 25 * width, 14, 45])  # the scapular spine's root
        glenoid = b + np.array([0, -10, -8])
        head = b + np.array([s * 12, -28, -30])
        if pose is not None:
            turn = _scapular_turn(sframe, math.radians(pose.turn_deg))
            lift = np.array([0.0, 0.0, pose.shrug_mm])
            centre, glenoid, head = (root + turn @ (q - root) + lift
                                     for q in (centre, glenoid, head))
            sframe = turn @ sframe
            root = root + lift
            raised = glenoid - np.array([0, -10, -8])  # the acromion follows the glenoid
            mid, b = mid + 0.5 * (raised - b), raised
        bone.chain(other, np.array([a, mid, b]), (7.0, 6.0, 7.5))
        bone.box(other, centre, sframe, (38 * width, 70, 2.5), rounding=2.0)
        bone.capsule(other, root, glenoid, 5.0, 7.0)
        shoulders.append(head)
        bone.ellipsoid(m["femur_head"], head, np.eye(3), (22, 22, 23))
    return tuple(with_ribs), np.array(shoulders)


def _scapular_turn(frame: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` (rad) in the scapula's plane (``frame``'s first two
    columns: lateral, up) that turns its lateral side up and its inferior angle out, as
    the scapula turns when the arm is raised."""
    u, z = frame[:, 0], frame[:, 1]
    return (np.eye(3) + math.sin(angle) * (np.outer(z, u) - np.outer(u, z))
            + (math.cos(angle) - 1.0) * (np.outer(u, u) + np.outer(z, z)))


def _head(bone, soft, m, c1: _Local, hs: float, pitch: float) -> _Local:
    """Skull (a shell with the foramen magnum, condyles, petrous bones, clivus), mandible,
    maxilla, teeth and the air of the nasal cavity and maxillary sinuses."""
    H = _Local(c1.c, c1.F @ rot_x(pitch))
    skull = m["skull"]
    bone.ellipsoid(skull, H.p(0, -15 * hs, 86 * hs), H.F, (70 * hs, 92 * hs, 74 * hs), onion=3.5)
    bone.capsule(skull, H.p(0, 8, 0), H.p(0, 8, 40), 16 * hs, op=_sdf.SUBTRACT_OWN)
    for s in (-1, 1):
        bone.ellipsoid(skull, H.p(s * 12 * hs, 6, 11), H.F, (6, 10, 5), smooth=3.0)
        bone.ellipsoid(skull, H.p(s * 42 * hs, 0, 24 * hs), H.F, (22, 11, 10), smooth=4.0)
    _bar(bone, skull, H, (0, -8 * hs, 16 * hs), (0, -38 * hs, 40 * hs), 9, 4, smooth=3.0)
    for s in (-1, 1):
        jaw = np.array([(s * 48, -5, 8), (s * 47, -18, -35), (s * 35, -55, -45),
                        (0, -78, -42)]) * hs
        bone.chain(m["bone"], H.pts(jaw), (5.0, 6.5, 7.0, 7.5), smooth=2.0)
    bone.ellipsoid(m["bone"], H.p(0, -60 * hs, -10 * hs), H.F, (28 * hs, 20 * hs, 8), onion=1.5)
    for s in (-1, 1):
        for t in np.linspace(0.0, 1.0, 6):
            x, y = s * (32 - 28 * t ** 1.5) * hs, (-40 - 37 * t) * hs
            for z in (-27, -19):
                bone.ellipsoid(m["teeth"], H.p(x, y, z * hs), H.F, (3.2, 3.8, 4.5))
        soft.ellipsoid(m["air"], H.p(s * 24 * hs, -62 * hs, 6 * hs), H.F, (11, 14, 15))
    soft.ellipsoid(m["air"], H.p(0, -70 * hs, 18 * hs), H.F, (7, 24, 14))
    return H


#: Diaphragm drop (mm) beyond which the last rib level gets a lung lobe too.
LAST_LOBE_DROP = 60.0


def _organs(soft, m, spine: Spine, locs, width, rng, lungs=(1.0, 1.0, 0.0)):
    """Lungs (lobes per rib level, minus diaphragm, heart and mediastinum), pharynx,
    trachea and main bronchi, bowel and stomach gas.

    ``lungs`` = (fx, fy, drop): fx and fy grow each lobe's transverse and anteroposterior
    radius (>= 1, a deeper inspiration or a slimmer chest wall; the lobe keeps its lateral
    edge and grows towards the mediastinum, which stays carved out); drop > 0 lowers the
    diaphragm domes by that many mm and gives the second-last rib level a lobe too (beyond
    :data:`LAST_LOBE_DROP` mm the last one as well), so the lungs reach the posterior
    costophrenic recesses as in a full inspiration.
    """
    lung, air = m["lung"], m["air"]
    rib_levels = [i for i, d in enumerate(spine.dims) if d.ribs != "none"]
    fx, fy, drop = lungs
    left_out = 0 if drop > LAST_LOBE_DROP else 1 if drop > 0 else 2
    for i in rib_levels[:len(rib_levels) - left_out]:
        d = spine.dims[i]
        r = d.rib_index - 1
        A, B = _RIB_A[min(r, 12)] * width, _RIB_B[min(r, 12)] * width
        yc = 0.45 * d.depth + 0.5 * d.canal_d + 22 - B * 0.95
        step = d.height + d.disc
        rx, ry = 0.42 * A * fx, 0.74 * B * fy
        for s in (-1, 1):
            x = s * (0.52 * A + 2 - (rx - 0.42 * A))
            soft.ellipsoid(lung, locs[i].p(x, yc - 0.05 * B, -0.2 * step), locs[i].F,
                           (rx, ry, 0.95 * step), smooth=10.0)
    top = locs[rib_levels[0]]
    low, mid = locs[rib_levels[8]], locs[rib_levels[7]]
    for s in (-1, 1):  # diaphragm domes
        soft.ellipsoid(lung, low.p(s * 55 * width, -70 * width, -95 - drop), low.F,
                       (120 * width, 120 * width, 105), op=_sdf.SUBTRACT_OWN)
    soft.ellipsoid(lung, mid.p(15 * width, -95 * width, 0), mid.F,  # heart
                   (55 * width, 48 * width, 62), op=_sdf.SUBTRACT_OWN)
    soft.chain(lung, np.array([locs[i].c for i in rib_levels]),  # posterior mediastinum
               spine.dims[rib_levels[-1]].width / 2 + 8, op=_sdf.SUBTRACT_OWN)
    _bar(soft, lung, top, (0, -25, 0), (0, -25, -200), 14, 60 * width,  # anterior
         up=(0.0, 1.0, 0.0), rounding=6, op=_sdf.SUBTRACT_OWN)
    names = spine.names
    thor = [i for i, d in enumerate(spine.dims) if d.region == "thoracic"]
    i2, i6 = names.index("C2"), names.index("C6")
    l4 = locs[thor[4]]
    airway = [locs[i].p(0, -0.55 * spine.dims[i].depth - (14 if i < i6 else 18), 0)
              for i in range(i2, i6 + 1)]
    airway += [locs[thor[0]].p(0, -0.55 * spine.dims[thor[0]].depth - 20, 0),
               l4.p(0, -0.55 * spine.dims[thor[4]].depth - 14, 0)]
    soft.chain(air, np.array(airway), 8.5 * width)
    for s in (-1, 1):
        soft.capsule(air, airway[-1], l4.p(s * 45 * width, -0.55 * spine.dims[thor[4]].depth - 5,
                                           -35 + 8 * s), 6.0, 5.0)
    lumbar = [i for i, d in enumerate(spine.dims) if d.region == "lumbar"]
    for _ in range(int(rng.integers(4, 16))):
        i = int(rng.integers(lumbar[0] - 1, len(names)))
        soft.ellipsoid(air, locs[i].p(rng.uniform(-90, 90) * width,
                                      -spine.dims[i].depth - rng.uniform(20, 90),
                                      rng.uniform(-20, 20)), np.eye(3), rng.uniform(6, 24, 3))
    soft.ellipsoid(air, locs[thor[10]].p(70 * width, -110 * width, 0), np.eye(3), (35, 18, 22))


def _screws(metal, steel, spine: Spine, locs, metal_levels):
    """Bilateral pedicle screws (with tulip heads) on ``metal_levels`` joined by rods."""
    heads = {-1: [], 1: []}
    for i in metal_levels:
        d, loc = spine.dims[i], locs[i]
        back = 0.45 * d.depth
        for s in (-1, 1):
            entry = np.array([s * (d.canal_w / 2 + 0.5 * d.ped_w), back + 0.55 * d.canal_d + 6,
                              0.1 * d.height])
            target = np.array([s * 0.15 * d.width / 2, -0.45 * 0.55 * d.depth, 0.05 * d.height])
            u = (target - entry) / np.linalg.norm(target - entry)
            length = min(float(np.linalg.norm(target - entry)) + 4, 50.0)
            radius = 3.25 if d.region == "lumbar" else 2.75
            metal.capsule(steel, loc.p(*entry), loc.p(*(entry + u * length)), radius, radius * 0.8)
            head = entry - u * 6
            metal.ellipsoid(steel, loc.p(*head), loc.F, (6.0, 6.0, 7.0))
            heads[s].append(loc.p(*(head + np.array([0, 3.0, 0]))))
    for s in (-1, 1):
        if len(heads[s]) >= 2:
            h = np.array(heads[s])
            ext0 = h[0] + 8 * (h[0] - h[1]) / np.linalg.norm(h[0] - h[1])
            ext1 = h[-1] + 8 * (h[-1] - h[-2]) / np.linalg.norm(h[-1] - h[-2])
            metal.chain(steel, np.vstack([ext0, h, ext1]), 2.75)
