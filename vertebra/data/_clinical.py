"""What a clinical CT holds besides the skeleton: organs, contrast, arms, wires, its scanner.

The plain phantom is a skeleton in a uniform soft-tissue trunk with lungs, airway and
gas. Networks trained on it only ever see bone against flat grey, and on real scans they
take a contrast-filled vein, the heart or an arm for bone. This module adds, for
``make_spine_phantom(clinical=True)``, what real scans put in the way, each part drawn
at random per scan so that no single appearance is learnt:

* a contrast phase (none, arterial, venous) that sets the blood's CT number in the
  heart, aorta, venae cavae and pulmonary vessels, and often a dense undiluted bolus
  from the injected arm's veins through the superior vena cava, diluting on its way to
  the right atrium;
* organs at their own CT numbers: liver, spleen, kidneys (cortex brighter in contrast),
  psoas muscles, visceral fat, bowel with or without oral contrast, lung vessels;
* arms down at the sides or raised above the head, with humerus, radius and ulna;
* aortic wall calcification, ECG electrodes and leads, sternal wires;
* the bone itself at a per-scan density, from dense to osteoporotic (trabecular core
  80-250 HU, cortex 300-800 HU, ribs from a little fainter to denser than the
  vertebrae), drawn in :func:`restyle_bone`;
* sclerotic endplates (:func:`sclerotic_endplates`) and, drawn in
  :func:`vertebra.data.phantom.make_spine_phantom`, thin degenerated discs;
* the scanner: its blur (:func:`scanner_blur`) and the reconstruction circle that cuts a
  large patient's outline (:func:`fov_cut`), or, drawn in
  :func:`vertebra.data.phantom.make_spine_phantom`, a spine protocol's small field of view
  centred on the spine.

All positions are world LPS mm, written in the local frames of the placed spine (x left,
y posterior, z along the spine; see :mod:`vertebra.data.anatomy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vertebra.data import _sdf
from vertebra.data.anatomy import Spine
from vertebra.errors import VertebraError

#: CT number outside the reconstruction circle.
OUTSIDE_FOV_HU = -1024.0

#: Densest undiluted contrast (HU): scanners store CT numbers up to about 3000, and a
#: bolus in the arm veins reaches it.
BOLUS_CEILING_HU = 3000.0

#: Shares of the arterial and of the portal-venous scans with undiluted contrast in the
#: injected arm's veins: an arterial scan starts while the injection still runs, and the
#: arm and brachiocephalic veins of a venous scan often still hold the last of it.
ARTERIAL_BOLUS, VENOUS_BOLUS = 0.85, 0.4


@dataclass
class Clinical:
    """The extra primitives of one clinical scan.

    Attributes:
        organs: composited over the body before the lungs (organs, vessels of the
            trunk, muscles, arms' soft tissue).
        vessels: composited after the lungs and before the skeleton (lung vessels, the
            great vessels of the mediastinum, a dense contrast bolus, calcification, arm
            bones, electrodes and wires): the skeleton's pass and its label mask are
            built as in the plain phantom.
        tissue_hu: CT number of the trunk's soft tissue (muscle and fat mixed).
    """

    organs: _sdf.Shapes
    vessels: _sdf.Shapes
    tissue_hu: float


def restyle_bone(objs, vertebra_objects: dict[int, int], m: dict, rng) -> None:
    """Redraw the bones' CT numbers in place: one density per scan, from dense to
    osteoporotic, with per-vertebra spread, thinner and fainter cortices than the plain
    phantom's, and the ribs' density against the vertebrae's drawn per scan."""
    trab = rng.uniform(80.0, 250.0)
    cort = rng.uniform(300.0, 800.0)
    thick = rng.uniform(0.7, 1.6)
    for o in vertebra_objects.values():
        objs.core[o] = trab + rng.normal(0.0, 25.0)
        objs.shell[o] = cort * rng.uniform(0.85, 1.15)
        objs.thick[o] = thick
    # ribs from a little fainter than the vertebrae to clearly denser, cortex and core
    # together (``benchmarks/decisions.md``, ``ribs``)
    rib = rng.uniform(0.0, 1.0)
    for name, dc, fc in (("rib", 40 + 160 * rib, 0.7 + 0.9 * rib), ("bone", 30, 1.0),
                         ("sacrum", 0, 0.9), ("coccyx", 0, 0.9), ("femur_head", 20, 1.1)):
        o = m[name]
        objs.core[o] = trab + dc
        objs.shell[o] = cort * fc
    objs.thick[m["rib"]] = 1.2 + rib  # mm of cortex
    objs.core[m["disc"]] = rng.uniform(50.0, 110.0)


def _phase(rng) -> dict[str, float]:
    """Blood CT numbers (HU) of one scan's contrast phase."""
    draw = rng.random()
    plain = rng.uniform(30.0, 55.0)
    if draw < 0.3:  # no contrast
        return {"arterial": plain, "venous": plain, "heart_r": plain, "heart_l": plain,
                "kidney": rng.uniform(25.0, 40.0), "liver": rng.uniform(45.0, 70.0),
                "bolus": 0.0}
    if draw < 0.65:  # arterial
        art = rng.uniform(200.0, 500.0)
        ven = rng.uniform(40.0, 120.0)
        return {"arterial": art, "venous": ven, "heart_r": rng.uniform(ven, art),
                "heart_l": art, "kidney": rng.uniform(150.0, 280.0),
                "liver": rng.uniform(60.0, 90.0),
                "bolus": rng.uniform(600.0, 2500.0) if rng.random() < ARTERIAL_BOLUS else 0.0}
    ven = rng.uniform(120.0, 220.0)  # portal-venous
    return {"arterial": ven + rng.uniform(0.0, 40.0), "venous": ven, "heart_r": ven,
            "heart_l": ven + rng.uniform(0.0, 30.0), "kidney": rng.uniform(140.0, 220.0),
            "liver": rng.uniform(90.0, 140.0),
            "bolus": rng.uniform(400.0, 1500.0) if rng.random() < VENOUS_BOLUS else 0.0}


def _level(spine: Spine, name: str, fallback: int) -> int:
    return spine.names.index(name) if name in spine.names else fallback


@dataclass
class _Patient:
    """What the parts of :func:`build_clinical` share: the spine's frames, the material
    table, the two passes being filled, the blood's CT numbers and the random stream."""

    spine: Spine
    objs: object
    locs: list
    width: float
    shoulders: np.ndarray
    rng: np.random.Generator
    blood: dict
    pose: object = None  # the scene's ShoulderPose, or None
    organs: _sdf.Shapes = field(default_factory=_sdf.Shapes)
    vessels: _sdf.Shapes = field(default_factory=_sdf.Shapes)
    hw: float = 1.0  # the heart's and great vessels' size factor

    def __post_init__(self) -> None:
        dims = self.spine.dims
        self.dims = dims
        self.thor = [i for i, d in enumerate(dims) if d.region == "thoracic"]
        self.lumb = [i for i, d in enumerate(dims) if d.region == "lumbar"]
        self.mid = self.locs[self.thor[min(7, len(self.thor) - 1)]]  # heart level

    def add(self, core, shell=None, thick=0.0) -> int:
        """A material that writes no label."""
        return self.objs.add(core, shell, thick, -1)


def build_clinical(spine: Spine, objs, locs, width: float, shoulders, rng,
                   pose=None) -> Clinical:
    """Organs, vessels, arms, calcification and leads around ``spine``.

    Args:
        spine: the placed spine.
        objs: the scene's material table (objects are appended).
        locs: per-level local frames (``_Local`` with ``p``), cranio-caudal.
        width: the patient's body-width factor (1 = average).
        shoulders: (2, 3) world mm of the right and left humeral heads.
        rng: random generator, consumed in a fixed order (the parts below, in turn).
        pose: the arms' pose (:class:`vertebra.data._scene.ShoulderPose`, whose girdle
            ``shoulders`` already follows); None: drawn from ``rng`` among arms at the
            sides, raised and out of view.
    """
    blood = _phase(rng)
    tissue = rng.uniform(-40.0, 50.0)
    p = _Patient(spine, objs, locs, width, shoulders, rng, blood, pose)
    for part in (_heart, _aorta, _veins, _lung_vessels, _abdomen, _arms, _leads):
        part(p)
    return Clinical(p.organs, p.vessels, float(tissue))


def _heart(p: _Patient) -> None:
    """Left and right blood pools inside a myocardial wall; draws the size factor ``hw``."""
    rng, blood, mid = p.rng, p.blood, p.mid
    myo = rng.uniform(60.0, 130.0) if blood["bolus"] or blood["arterial"] > 100 else 45.0
    p.hw = hw = p.width * rng.uniform(0.9, 1.15)
    for side, key in ((1, "heart_l"), (-1, "heart_r")):
        o = p.add(blood[key], myo, rng.uniform(5.0, 10.0))
        p.organs.ellipsoid(o, mid.p((15 + side * 22) * hw, (-95 + side * 8) * hw, side * 6),
                           mid.F, (34 * hw, 42 * hw, 55))


def _aorta(p: _Patient) -> None:
    """Ascending aorta, arch, descending along the left of the bodies (beside them or over
    their left half), iliac bifurcation, and calcified plaques on its wall in half of the
    patients."""
    rng, locs, dims, hw, spine = p.rng, p.locs, p.dims, p.hw, p.spine
    aorta = p.add(p.blood["arterial"])
    r_aorta = rng.uniform(0.8, 1.3)
    # how far left of the bodies it runs: from beside them to over their left half, as
    # the descending aorta does from patient to patient (it then overlaps the spine in
    # frontal views)
    lateral, gap = rng.uniform(0.15, 0.5), rng.uniform(0.0, 12.0)
    t4 = p.thor[3]
    path = [p.mid.p(5 * hw, -85 * hw, 45), locs[p.thor[2]].p(-5 * hw, -70 * hw, 10),
            locs[t4].p(12 * hw, -38, 18)]
    radii = [15.0, 14.0, 13.0]
    for i in range(t4 + 1, len(dims)):
        d = dims[i]
        if i > _level(spine, "L4", len(dims) - 1):
            break
        if d.region == "thoracic":
            path.append(locs[i].p(lateral * d.width + gap * r_aorta, -0.4 * d.depth, 0))
        else:
            path.append(locs[i].p(0.15 * d.width, -0.55 * d.depth - 13, 0))
        radii.append(12.0 if d.region == "thoracic" else 10.0)
    p.vessels.chain(aorta, np.array(path), np.array(radii) * r_aorta)
    end = path[-1]
    for s in (-1, 1):  # common iliac arteries
        p.vessels.capsule(aorta, end, end + np.array([s * 45.0, -5.0, -70.0]), 7.0, 6.0)
    if rng.random() < 0.5:
        calc = p.add(rng.uniform(300.0, 1200.0))
        for _ in range(int(rng.integers(3, 25))):
            k = int(rng.integers(2, len(path)))
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            p.vessels.ellipsoid(calc, path[k] + u * radii[k] * r_aorta, np.eye(3),
                                rng.uniform(1.0, 3.5, 3))


def _veins(p: _Patient) -> None:
    """Inferior and superior venae cavae and the brachiocephalic veins to both shoulders,
    one of them and the superior vena cava full of contrast when the phase has a bolus
    (:func:`_bolus`)."""
    rng, locs, dims, hw, spine = p.rng, p.locs, p.dims, p.hw, p.spine
    ven = p.add(p.blood["venous"])
    ivc = []
    for i in range(_level(spine, "T10", p.thor[-1]), _level(spine, "L4", len(dims) - 1) + 1):
        d = dims[i]
        ivc.append(locs[i].p(-0.55 * d.width - 8, -0.55 * d.depth - 10, 0))
    if len(ivc) >= 2:
        p.organs.chain(ven, np.array(ivc), 11.0 * rng.uniform(0.8, 1.2))
    # the superior vena cava's distance right of the spine: from over the bodies' right
    # half (it then overlaps them in frontal views) to well beside them
    right = rng.uniform(8.0, 32.0)
    svc = [p.mid.p(-right * hw, -85 * hw, 40), locs[p.thor[1]].p(-right * hw, -60 * hw, 0)]
    arm_side = 1 if rng.random() < 0.5 else -1
    bolus = p.blood["bolus"]
    if not bolus:
        p.vessels.chain(ven, np.array(svc), 10.0)
    top = locs[p.thor[0]]
    for s in (-1, 1):
        brachio = [svc[-1], top.p(s * 30 * hw, -45 * hw, 5), top.p(s * 75 * hw, -40 * hw, 0),
                   p.shoulders[(s + 1) // 2] + np.array([0.0, -15.0, -5.0])]
        radii = np.array([9.0, 8.0, 7.0, 6.0]) * rng.uniform(0.7, 1.2)
        if bolus and s == arm_side:
            _bolus(p, np.array(brachio[::-1] + svc[:1]), np.r_[radii[:0:-1], 10.0, 10.0],
                   arm=_arm_direction(p.pose, s))
        else:
            p.vessels.chain(ven, np.array(brachio), radii)


def _arm_direction(pose, side: int) -> np.ndarray | None:
    """(3,) world unit vector from a humeral head towards its elbow, the mean of the
    directions :func:`_arms` draws (up beside the head when raised, down at the side), or
    None when the scan shows no arm. ``side``: -1 right, 1 left."""
    if pose is None or not pose.arms_shown:
        return None
    way = np.array([side * 0.05, -0.05, 1.0]) if pose.raised else np.array(
        [side * 0.15, 0.03, -1.0])
    return way / np.linalg.norm(way)


def _bolus(p: _Patient, path: np.ndarray, radii: np.ndarray,
           arm: np.ndarray | None = None) -> None:
    """Undiluted contrast flowing from the injected arm's shoulder down ``path`` (N, 3)
    world mm, radii (N,) mm, to the superior vena cava's lower end, then into the right
    atrium; with ``arm`` (a unit vector from the shoulder towards the elbow), from the arm's
    veins first: 60-280 mm of the brachial and basilic veins, medial to the humerus,
    between the injection site at the elbow and the shoulder.

    The contrast is densest in the arm and brachiocephalic veins (up to
    :data:`BOLUS_CEILING_HU`) and mixes with unopacified blood on its way down: each
    segment's CT number falls from the peak towards a fraction of it at the atrium, with
    a per-segment jitter for the layering of contrast and blood. A jet of mixed contrast
    often reaches into the right atrium. Drawn from a stream of its own (spawned from the
    scan's), so that the rest of the scan is the same with or without a bolus.
    """
    rng = p.rng.spawn(1)[0]
    bolus = p.blood["bolus"]
    peak = min(bolus * rng.uniform(1.0, 1.6), BOLUS_CEILING_HU)
    low = bolus * rng.uniform(0.25, 0.8)
    if arm is not None:
        reach = rng.uniform(60.0, 280.0)
        medial = np.array([-np.sign(arm[0]) * rng.uniform(5.0, 20.0), -5.0, 0.0])
        vein = [path[0] + reach * f * arm + f * medial for f in (1.0, 0.5)]
        path = np.concatenate([vein, path])
        radii = np.r_[rng.uniform(3.0, 5.0, 2), radii]
    n = len(path) - 1
    bend = rng.uniform(0.5, 2.0)  # how soon along the path the contrast mixes
    for k in range(n):
        t = k / max(n - 1, 1)  # 0 at the shoulder, 1 in the vena cava's last segment
        hu = (peak + (low - peak) * t ** bend) * rng.uniform(0.9, 1.1)
        p.vessels.capsule(p.add(min(hu, BOLUS_CEILING_HU)), path[k], path[k + 1],
                          radii[k], radii[k + 1])
    if rng.random() < 0.8:
        atrium = p.mid.p(-7 * p.hw, -100 * p.hw, rng.uniform(-30.0, 10.0))
        jet = path[-1] + rng.uniform(0.4, 1.0) * (atrium - path[-1])
        p.vessels.capsule(p.add(low * rng.uniform(0.6, 1.0)), path[-1], jet,
                          rng.uniform(6.0, 12.0), rng.uniform(4.0, 10.0))


def _lung_vessels(p: _Patient) -> None:
    """Pulmonary arteries from the heart to each hilum and vessels fanning into the lungs."""
    rng, hw = p.rng, p.hw
    pulm = p.add(p.blood["heart_r"])
    hilum = p.locs[p.thor[min(5, len(p.thor) - 1)]]
    branches = p.add(p.blood["heart_r"] * 0.6 + 0.4 * p.blood["heart_l"])
    for s in (-1, 1):
        root = hilum.p(s * 45 * hw, -25 * hw, 0)
        p.vessels.capsule(pulm, p.mid.p(s * 10 * hw, -80 * hw, 50), root, 11.0, 9.0)
        for _ in range(int(rng.integers(15, 35))):
            u = np.array([s * rng.uniform(0.3, 1.0), rng.uniform(-0.6, 0.6),
                          rng.uniform(-1.0, 1.0)])
            u /= np.linalg.norm(u)
            length = rng.uniform(40.0, 120.0) * hw
            a = root + u * rng.uniform(0.0, 15.0)
            p.vessels.capsule(branches, a, a + u * length, rng.uniform(2.0, 5.0), 1.0)


def _abdomen(p: _Patient) -> None:
    """Liver, spleen, kidneys (cortex and medulla), psoas muscles, and bowel loops (with or
    without oral contrast) among visceral fat."""
    rng, locs, dims, width, lumb = p.rng, p.locs, p.dims, p.width, p.lumb
    low = locs[p.thor[min(8, len(p.thor) - 1)]]
    liver = p.add(p.blood["liver"])
    p.organs.ellipsoid(liver, low.p(-60 * width, -55 * width, -85), low.F,
                       (95 * width, 85 * width, 85))
    spleen = p.add(p.blood["liver"] + rng.uniform(-10.0, 20.0))
    p.organs.ellipsoid(spleen, low.p(80 * width, 15 * width, -70), low.F, (32, 50, 55))
    l1 = locs[_level(p.spine, "L1", lumb[0] if lumb else len(dims) - 1)]
    for s in (-1, 1):
        cortex = p.blood["kidney"]
        o = p.add(0.5 * (cortex + 30.0), cortex, rng.uniform(4.0, 8.0))
        p.organs.ellipsoid(o, l1.p(s * 62 * width, 5 * width, s * 8), l1.F, (28, 30, 52))
    if lumb:
        psoas = p.add(rng.uniform(35.0, 60.0))
        for s in (-1, 1):
            pts = [locs[i].p(s * (0.5 * dims[i].width + 4 + 4 * k), -0.1 * dims[i].depth, 0)
                   for k, i in enumerate(lumb)]
            radii = [9.0 + 4.0 * k for k in range(len(pts))]
            p.organs.chain(psoas, np.array(pts), np.array(radii))
    oral = rng.random() < 0.3
    gut = p.add(rng.uniform(150.0, 600.0) if oral else rng.uniform(10.0, 40.0))
    fat = p.add(rng.uniform(-110.0, -70.0))
    for _ in range(int(rng.integers(6, 20))):
        i = int(rng.integers(max(0, (lumb[0] if lumb else len(dims)) - 2), len(dims)))
        c = locs[i].p(rng.uniform(-90, 90) * width, -dims[i].depth - rng.uniform(15, 80),
                      rng.uniform(-20, 20))
        p.organs.ellipsoid(gut if rng.random() < 0.6 else fat, c, np.eye(3),
                           rng.uniform(8.0, 25.0, 3))


def _arms(p: _Patient) -> None:
    """Arms with humerus, radius and ulna, from the humeral heads: as ``p.pose`` has them,
    or, without a pose, at the sides (40 %), raised beside the head (35 %) or out of view
    (25 %)."""
    rng = p.rng
    draw = rng.random()  # drawn with a pose too, so every later draw stays as it was
    raised, shown = ((draw < 0.35, draw < 0.75) if p.pose is None
                     else (p.pose.raised, p.pose.arms_shown))
    if not shown:
        return
    arm = p.add(rng.uniform(20.0, 55.0), -100.0, rng.uniform(4.0, 15.0))
    cortex = p.add(rng.uniform(-60.0, 40.0), rng.uniform(900.0, 1600.0), 3.0)
    for s, head in zip((-1, 1), p.shoulders):
        if raised:
            elbow = head + np.array([s * rng.uniform(-10, 30), rng.uniform(-40, 10), 290])
            hand = elbow + np.array([-s * rng.uniform(40, 120), rng.uniform(-40, 20), 220])
        else:
            elbow = head + np.array([s * rng.uniform(25, 60), rng.uniform(-10, 30), -290])
            hand = elbow + np.array([s * rng.uniform(-20, 30), rng.uniform(-120, -20), -230])
        r_arm = rng.uniform(38.0, 55.0) * p.width
        p.organs.capsule(arm, head, elbow, r_arm, 0.8 * r_arm)
        p.organs.capsule(arm, elbow, hand, 0.8 * r_arm, 0.55 * r_arm)
        p.vessels.capsule(cortex, head, elbow, 11.0, 9.0)
        for off in (-8.0, 8.0):
            shift = np.array([off, off * 0.3, 0.0])
            p.vessels.capsule(cortex, elbow + shift, hand + 0.6 * shift, 7.0, 6.0)


def _leads(p: _Patient) -> None:
    """ECG electrodes with their leads (35 %) and sternal wires (10 %), drawn without
    streaks."""
    rng, dims, thor, width = p.rng, p.dims, p.thor, p.width
    if rng.random() < 0.35:
        steel = p.add(rng.uniform(1500.0, 3000.0))
        front = p.mid.p(0, -0.5 * dims[thor[0]].depth - 150 * width, 0)
        for _ in range(int(rng.integers(3, 7))):
            c = front + np.array([rng.uniform(-120, 120) * width, rng.uniform(-15, 15),
                                  rng.uniform(-150, 100)])
            p.vessels.ellipsoid(steel, c, np.eye(3), (5.0, 5.0, 1.5))
            tail = c + np.array([rng.uniform(-150, 150), rng.uniform(-10, 10),
                                 rng.uniform(-200, 200)])
            p.vessels.capsule(steel, c, tail, 0.8, 0.8)
    if rng.random() < 0.1:
        steel = p.add(3000.0)
        depth = -0.5 * dims[thor[0]].depth - 90 * width
        for k in range(int(rng.integers(4, 8))):
            c = p.locs[thor[min(1 + k, len(thor) - 1)]].p(0, depth, 0)
            p.vessels.capsule(steel, c + np.array([-12.0, 0, 0]), c + np.array([12.0, 0, 0]),
                              1.0, 1.0)


def fov_cut(hu: np.ndarray, origin, spacing, rng) -> None:
    """Set the voxels outside a reconstruction circle to :data:`OUTSIDE_FOV_HU`, in place,
    on about half of the scans: a circle about the grid's centre whose diameter is
    0.9-1.0 of the grid's smaller in-plane side, as scanners reconstruct a disc.

    Args:
        hu: (Z, Y, X) float32 of an identity-direction grid.
        origin, spacing: (3,) world mm of voxel (0, 0, 0) and voxel size along x, y, z.
    """
    if rng.random() >= 0.5:
        return
    _, ny, nx = hu.shape
    r = 0.5 * rng.uniform(0.9, 1.0) * min(nx * spacing[0], ny * spacing[1])
    x = (np.arange(nx) - 0.5 * (nx - 1)) * spacing[0]
    y = (np.arange(ny) - 0.5 * (ny - 1)) * spacing[1]
    outside = (x[None, :] ** 2 + y[:, None] ** 2) > r * r
    hu[:, outside] = OUTSIDE_FOV_HU


def bone_texture(hu: np.ndarray, inside: np.ndarray, spacing, rng) -> None:
    """Add a smooth random texture to the bone voxels, in place, as trabecular bone and
    uneven mineralisation give real vertebrae (their CT numbers spread over hundreds of
    HU) where the phantom's primitives are uniform.

    The texture is white noise on a coarse grid of 2-5 mm cells, trilinearly
    interpolated to the voxels, scaled to a standard deviation of 20-90 HU drawn per scan.

    Args:
        hu: (Z, Y, X) float32 CT numbers.
        inside: (Z, Y, X) bool, the voxels to texture.
        spacing: (3,) voxel size along x, y, z, mm.
        rng: random generator.
    """
    from scipy.ndimage import map_coordinates

    cell = rng.uniform(2.0, 5.0)
    amp = rng.uniform(20.0, 90.0)
    shape = np.asarray(hu.shape)
    step = np.asarray(spacing, dtype=np.float64)[::-1] / cell  # coarse cells per voxel
    coarse = rng.standard_normal(tuple(np.ceil(shape * step).astype(int) + 2)).astype(np.float32)
    idx = np.nonzero(inside)
    if not len(idx[0]):
        return
    coords = np.stack([i * s for i, s in zip(idx, step)])
    # linear interpolation of unit white noise shrinks its variance; undo it on average
    values = map_coordinates(coarse, coords, order=1, mode="nearest")
    hu[idx] += (amp / max(float(values.std()), 1e-6)) * values


def sclerotic_endplates(hu: np.ndarray, lab: np.ndarray, spine: Spine, origin, spacing,
                        rng) -> None:
    """Make the top and bottom of every vertebral body denser, in place, as the endplates
    and the subchondral bone under them show in real scans (where degenerated discs make
    them brightest): in a clinical CT the junction of two vertebrae is the densest part
    of the column, while the phantom's uniform shell makes it a dark gap between two thin
    lines, which teaches a localizer to mark the wrong rhythm along the spine.

    Per scan, a band 1-3.5 mm deep gets 80-450 HU more, with a 0.6-1.3 spread per
    vertebra. The band is every voxel of a vertebra's label in front of its body's
    posterior wall (local y < 0.45 depth) and farther from the body's centre along the
    spine than half its height less that depth: the endplates, and with them whatever
    of the vertebra reaches past the body's planes in front of that wall (C2's dens, the
    roots of the cervical transverse processes). The atlas, which has no body, is left
    as it is. Labels are unchanged.

    Args:
        hu: (Z, Y, X) float32 CT numbers on the canonical grid.
        lab: (Z, Y, X) VerSe ids on the same grid.
        spine: the placed spine (body centres and frames, world LPS mm).
        origin: (3,) world mm of voxel (0, 0, 0); spacing: (3,) mm along x, y, z.
        rng: random generator.
    """
    from scipy.ndimage import find_objects

    from vertebra import labels as vlabels

    depth = rng.uniform(1.0, 3.5)
    boost = rng.uniform(80.0, 450.0)
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    boxes = find_objects(lab)  # one pass: each label's bounding box (or None)
    for d, centre, frame in zip(spine.dims, spine.centres, spine.frames):
        gain = boost * rng.uniform(0.6, 1.3)
        vid = vlabels.by_name(d.name).verse_id
        if d.name == "C1" or vid > len(boxes) or boxes[vid - 1] is None:
            continue  # the atlas has no body; a level outside the volume has no voxels
        box = boxes[vid - 1]
        idx = tuple(i + b.start for i, b in zip(np.nonzero(lab[box] == vid), box))
        world = origin + np.stack(idx[::-1], axis=1) * spacing  # (n, 3) x, y, z
        local = (world - centre) @ frame  # columns: left, posterior, superior
        band = ((np.abs(local[:, 2]) > d.height / 2 - depth)
                & (local[:, 1] < 0.45 * d.depth))
        hu[tuple(i[band] for i in idx)] += gain


#: Share of the clinical scans reconstructed in thick slices (:func:`thick_slices`), and
#: the range of their slice thickness (mm), as routine chest and abdomen CTs often are.
THICK_SLICE_SHARE = 0.3
THICK_SLICE_MM = (3.0, 5.0)
#: Slab thickness range (mm) of the clinical scans stored as sagittal reformats (thin in
#: the sagittal plane, thick from left to right), as spine CTs often are.
SAGITTAL_SLICE_MM = (2.0, 4.0)


def slice_profile(thickness: float, spacing: float) -> np.ndarray:
    """(n,) weights of a slice ``thickness`` mm thick on slices ``spacing`` mm apart: the
    overlap of each voxel's slab ``[i s - s/2, i s + s/2]`` with ``[-T/2, T/2]``, over
    ``T`` (a box profile, as a scanner's thick reconstruction integrates the CT; odd
    length, symmetric, summing to 1; one tap when ``T <= spacing``)."""
    if not (thickness > 0 and spacing > 0):
        raise VertebraError("slice thickness and spacing must be positive mm")
    half = 0.5 * max(float(thickness), float(spacing))
    n = int(np.ceil(half / spacing - 0.5))
    centres = np.arange(-n, n + 1) * float(spacing)
    lo = np.maximum(centres - 0.5 * spacing, -half)
    hi = np.minimum(centres + 0.5 * spacing, half)
    weights = np.clip(hi - lo, 0.0, None)
    return weights / weights.sum()


def thick_slices(hu: np.ndarray, spacing: float, rng, share: float = THICK_SLICE_SHARE,
                 *, axis: int = 0, mm: tuple[float, float] = THICK_SLICE_MM) -> float | None:
    """Reconstruct the CT numbers, in place, in thick slices on ``share`` of the scans
    (:data:`THICK_SLICE_SHARE` by default): each slice becomes the mean of the CT over a
    slab ``mm`` thick (3-5 mm by default; :func:`slice_profile`) about its centre, which
    merges thin discs with their endplates and blurs every level's edges along the spine;
    the grid keeps its slices. Returns the thickness (mm) or None when the scan keeps its
    slices. Along axis 2 (world x) the slabs are a sagittal reformat's slices
    (:data:`SAGITTAL_SLICE_MM`).

    Args:
        hu: (Z, Y, X) float32 CT numbers, axis 0 along the slices.
        spacing: voxel spacing along ``axis``, mm.
        rng: random generator (draws two numbers either way, so a larger ``share`` keeps
            every scan that a smaller one thickens, at the same thickness).
        share: probability of thick slices, [0, 1].
        axis: the numpy axis the slabs are thick along (0 z: axial slices; 2 x: sagittal).
        mm: (low, high) range of the slab thickness, mm.
    """
    from scipy.ndimage import correlate1d

    thick, thickness = rng.random() < share, rng.uniform(*mm)
    if not thick or thickness <= spacing:
        return None
    correlate1d(hu, slice_profile(thickness, spacing), axis=axis, output=hu, mode="nearest")
    return float(thickness)


def scanner_blur(hu: np.ndarray, rng) -> None:
    """Blur the CT numbers, in place, by a per-scan point spread: a real reconstruction
    is smoother than one voxel's box (its kernel in plane, its slice profile along z),
    which merges thin discs and endplates into one band in thick-slice scans.

    Sampled Gaussian kernels (``exp(-i^2 / 2 sigma^2)`` at the integer offsets
    ``|i| <= 3 sigma + 0.5``), sigma in voxels drawn per scan: 0-0.45 along the two
    in-plane axes, 0.1-0.6 along the slice axis (axis 0). Below half a voxel a sampled
    kernel spreads less than sigma, and below about 0.17 voxel it is a single tap that
    leaves the axis as it is: the blur is at most about half a voxel.

    Args:
        hu: (Z, Y, X) float32 CT numbers, axis 0 along the slices.
        rng: random generator.
    """
    from scipy.ndimage import gaussian_filter

    in_plane = rng.uniform(0.0, 0.45)
    along = rng.uniform(0.1, 0.6)
    gaussian_filter(hu, sigma=(along, in_plane, in_plane), output=hu, mode="nearest",
                    truncate=3.0)
