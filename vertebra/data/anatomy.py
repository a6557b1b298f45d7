"""Per-level vertebra dimensions and the spine curve used by the synthetic CTs.

Dimensions are typical adult values in mm, read off the morphometry literature
(vertebral body width/depth/height, pedicle and canal sizes, process lengths) to within
roughly 10-20 %; they only need to grow craniocaudally the way real spines do, so that a
vertebra's level can be told from its size and neighbours. Values between the anchor
levels below are interpolated.

Local frame of a vertebra (right-handed, like world LPS): x towards the patient's left,
y posterior, z along the spine towards the head; the origin is the centre of the
vertebral body (for C1, the centre of the atlas ring around the dens).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vertebra.errors import VertebraError

#: The 24 standard vertebrae, cranio-caudal.
STANDARD = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
)

TRANSITIONAL = ("t13", "l6")

# anchors: (level, value) on the standard 24 levels; linear in between, flat outside
_ANCHORS: dict[str, tuple[tuple[str, float], ...]] = {
    "width": (("C1", 16), ("C3", 17), ("C7", 23), ("T1", 26), ("T4", 27), ("T8", 31),
              ("T12", 40), ("L1", 42), ("L3", 47), ("L5", 50)),
    "depth": (("C1", 15), ("C3", 15.5), ("C7", 16.5), ("T1", 16), ("T4", 19), ("T8", 26),
              ("T12", 30), ("L1", 31), ("L3", 34), ("L5", 35)),
    "height": (("C1", 10), ("C2", 17), ("C3", 13), ("C7", 14), ("T1", 16), ("T4", 18),
               ("T8", 20), ("T12", 24), ("L1", 25), ("L3", 27), ("L5", 26)),
    "disc": (("C1", 4), ("C2", 4.5), ("C3", 5), ("C7", 5), ("T1", 4), ("T4", 4),
             ("T8", 5), ("T11", 6.5), ("T12", 8), ("L1", 9), ("L3", 11), ("L4", 12),
             ("L5", 12)),
    "canal_w": (("C1", 26), ("C3", 24), ("C7", 24), ("T1", 20), ("T4", 16), ("T8", 16),
                ("T12", 20), ("L1", 22), ("L5", 24)),
    "canal_d": (("C1", 16), ("C3", 15), ("C7", 14), ("T1", 15), ("T6", 15), ("T12", 16),
                ("L1", 17), ("L5", 17)),
    "ped_w": (("C1", 6), ("C3", 5), ("C7", 6), ("T1", 8), ("T5", 5), ("T8", 6), ("T12", 8),
              ("L1", 8), ("L3", 10), ("L5", 14)),
    "ped_h": (("C1", 7), ("C3", 7), ("C7", 8), ("T1", 9), ("T6", 11), ("T12", 15),
              ("L1", 15), ("L5", 15)),
    "lamina": (("C1", 3), ("C7", 3.5), ("T1", 4), ("T12", 4.5), ("L1", 5), ("L5", 5.5)),
    "tp_span": (("C1", 76), ("C2", 55), ("C3", 52), ("C7", 70), ("T1", 80), ("T4", 72),
                ("T8", 64), ("T10", 60), ("T12", 50), ("L1", 70), ("L3", 90), ("L4", 86),
                ("L5", 92)),
    "sp_len": (("C1", 8), ("C2", 22), ("C3", 15), ("C6", 20), ("C7", 34), ("T1", 38),
               ("T4", 40), ("T8", 42), ("T12", 32), ("L1", 30), ("L3", 32), ("L5", 25)),
    "sp_angle": (("C1", 0), ("C3", 20), ("C6", 20), ("C7", 15), ("T1", 25), ("T4", 50),
                 ("T7", 60), ("T10", 40), ("T12", 20), ("L1", 10), ("L5", 5)),
    "sp_h": (("C1", 8), ("C7", 9), ("T1", 9), ("T10", 11), ("T12", 14), ("L1", 16),
             ("L4", 17), ("L5", 13)),
    "sp_t": (("C1", 4), ("T1", 5), ("L1", 5.5)),
}


@dataclass(frozen=True)
class LevelDims:
    """Shape parameters of one vertebra, mm (angles in degrees).

    Attributes:
        name: "C1" .. "L6", "T13".
        region: "cervical", "thoracic" or "lumbar".
        width, depth, height: vertebral body size (transverse, AP, craniocaudal).
        disc: height of the disc below this vertebra.
        canal_w, canal_d: spinal canal width and AP depth.
        ped_w, ped_h: pedicle width and height.
        lamina: lamina thickness.
        tp_span: tip-to-tip span of the transverse processes.
        sp_len, sp_angle, sp_h, sp_t: spinous process length, downward angle from the
            horizontal, height and thickness.
        ribs: "none", "true" (reach the sternum), "false" (join the costal margin),
            "floating" or "short" (a rudimentary floating rib).
        rib_index: 1-based rib number (0 without ribs).
    """

    name: str
    region: str
    width: float
    depth: float
    height: float
    disc: float
    canal_w: float
    canal_d: float
    ped_w: float
    ped_h: float
    lamina: float
    tp_span: float
    sp_len: float
    sp_angle: float
    sp_h: float
    sp_t: float
    ribs: str = "none"
    rib_index: int = 0


def level_names(transitional: str | None = None) -> tuple[str, ...]:
    """The vertebrae of a spine, cranio-caudal.

    Args:
        transitional: None for the standard 7 + 12 + 5, "t13" for a thirteenth thoracic
            vertebra (13 rib-bearing levels), "l6" for a sixth lumbar vertebra.
    """
    if transitional is None:
        return STANDARD
    if transitional == "t13":
        i = STANDARD.index("L1")
        return STANDARD[:i] + ("T13",) + STANDARD[i:]
    if transitional == "l6":
        return STANDARD + ("L6",)
    raise VertebraError(f"unknown transitional anatomy {transitional!r}; "
                        f"choose none, {', '.join(TRANSITIONAL)}")


def _value(param: str, position: float) -> float:
    anchors = _ANCHORS[param]
    xs = np.array([STANDARD.index(n) for n, _ in anchors], dtype=np.float64)
    ys = np.array([v for _, v in anchors], dtype=np.float64)
    return float(np.interp(position, xs, ys))


def _position(name: str, names: tuple[str, ...]) -> float:
    """Where a level sits on the standard 24-level scale used by the anchors."""
    if name == "T13":
        return STANDARD.index("T12") + 0.5
    if "L6" in names and name.startswith("L"):
        # six lumbar vertebrae span the sizes of five: L1 like L1, L6 like L5
        k = int(name[1:]) - 1
        return STANDARD.index("L1") + k * 4.0 / 5.0
    return float(STANDARD.index(name))


def region_of(name: str) -> str:
    return {"C": "cervical", "T": "thoracic", "L": "lumbar"}[name[0]]


def level_dims(names: tuple[str, ...], rng: np.random.Generator, scale: float = 1.0
               ) -> list[LevelDims]:
    """Dimensions of every level, with a patient scale and a few % jitter per level.

    Args:
        names: from :func:`level_names`.
        rng: random generator (consumed in a fixed order).
        scale: overall patient size factor (about 0.85 - 1.15).
    """
    out = []
    thoracic = [n for n in names if n.startswith("T")]
    for name in names:
        pos = _position(name, names)
        values = {p: _value(p, pos) for p in _ANCHORS}
        jitter = 1.0 + 0.04 * rng.standard_normal()
        for p in ("width", "depth", "height", "disc", "canal_w", "canal_d", "ped_w",
                  "ped_h", "lamina", "tp_span", "sp_len", "sp_h", "sp_t"):
            values[p] *= scale * (jitter if p in ("width", "depth", "height") else
                                  1.0 + 0.05 * rng.standard_normal())
        values["sp_angle"] += 4.0 * rng.standard_normal()
        ribs, rib_index = "none", 0
        if name in thoracic:
            rib_index = thoracic.index(name) + 1
            n_thor = len(thoracic)
            if rib_index <= 7:
                ribs = "true"
            elif rib_index <= n_thor - 2:
                ribs = "false"
            elif rib_index == n_thor and n_thor > 12:
                ribs = "short"
            else:
                ribs = "floating"
        out.append(LevelDims(name=name, region=region_of(name), ribs=ribs,
                             rib_index=rib_index, **values))
    return out


# ---------------------------------------------------------------------- the curve
@dataclass(frozen=True)
class Spine:
    """Vertebrae placed in world LPS mm.

    Attributes:
        dims: per-level dimensions, cranio-caudal (N).
        centres: (N, 3) world mm of each vertebral body centre.
        frames: (N, 3, 3) columns = the level's local x (left), y (posterior), z
            (superior, along the spine) in world.
        sacrum_dims: dimensions of the sacral segments S1..S5 (5).
        sacrum_centres: (5, 3), sacrum_frames: (5, 3, 3).
        pelvis_frame: (3, 3) upright frame of the pelvis, origin at S1's centre.
    """

    dims: list[LevelDims]
    centres: np.ndarray
    frames: np.ndarray
    sacrum_dims: list[LevelDims]
    sacrum_centres: np.ndarray
    sacrum_frames: np.ndarray
    pelvis_frame: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise VertebraError(f"level {name!r} is not in this spine ({', '.join(self.names)})"
                                ) from None


def rot_x(deg: float) -> np.ndarray:
    """Rotation about x by ``deg``; positive tilts +z towards -y (anterior)."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(deg: float) -> np.ndarray:
    """Rotation about y by ``deg``; positive tilts +z towards +x (left)."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def _bump(n: int, rng: np.random.Generator, peak: float | None = None) -> np.ndarray:
    """n positive weights summing to 1, smooth, with a peak at fraction ``peak``."""
    x = (np.arange(n) + 0.5) / n
    peak = rng.uniform(0.35, 0.65) if peak is None else peak
    w = np.exp(-0.5 * ((x - peak) / 0.35) ** 2) * (1 + 0.15 * rng.standard_normal(n)).clip(0.5)
    return w / w.sum()


def sacrum_dims(scale: float) -> list[LevelDims]:
    """Five fused sacral segments, tapering caudally."""
    out = []
    for i, f in enumerate((1.0, 0.8, 0.62, 0.48, 0.36)):
        out.append(LevelDims(
            name=f"S{i + 1}", region="sacral", width=50 * f * scale,
            depth=(33 - 12 * (1 - f)) * scale, height=(26 - 10 * (1 - f)) * scale,
            disc=1.0, canal_w=(28 * f + 6) * scale, canal_d=10 * scale, ped_w=10, ped_h=10,
            lamina=5, tp_span=105 * f * scale, sp_len=10, sp_angle=0, sp_h=10, sp_t=6))
    return out


#: Default largest forward lean of the spine at T1, degrees (decision ``kyphosis``).
MAX_T1_LEAN = 30.0


def check_max_t1_lean(value) -> float:
    """``value`` as a float after checking it lies in [5, 80] degrees."""
    if not 5.0 <= float(value) <= 80.0:
        raise VertebraError(f"max_t1_lean must lie in [5, 80] degrees, got {value}")
    return float(value)


def _sagittal_angles(dims: list[LevelDims], rng: np.random.Generator,
                     max_t1_lean: float = MAX_T1_LEAN) -> tuple[np.ndarray, float]:
    """(N,) sagittal joint angles in degrees (positive lordotic) and the sacral slope.

    Joint i sits below level i (the last level's joint is with S1). The profile follows
    from random target tilts of S1, L1, T1 (5 to ``max_t1_lean``) and C2 (the forward
    lean of the upward spine tangent): lumbar lordosis growing caudally, a thoracic
    kyphosis bump, a cervical lordosis, a few degrees of noise per joint.
    """
    n = len(dims)
    names = tuple(d.name for d in dims)
    sagittal = np.zeros(n)
    regions = [d.region for d in dims]
    lumbar = [i for i in range(n) if regions[i] == "lumbar"]
    thoracic = [i for i in range(n) if regions[i] == "thoracic"]
    cervical = [i for i in range(n) if regions[i] == "cervical"]
    # the sagittal profile from target tilts of S1, L1, T1 and C2 (tilt: forward lean of
    # the upward spine tangent, in degrees); the joint angles in between follow
    slope = rng.uniform(28, 48)
    tilt_l1 = rng.uniform(-20, 2)
    tilt_t1 = rng.uniform(5, max_t1_lean)
    tilt_c2 = rng.uniform(-15, 10)
    sagittal[thoracic[-1]] = rng.uniform(-4, 4)  # thoracolumbar junction
    if "C7" in names:
        sagittal[names.index("C7")] = rng.uniform(-5, 3)  # cervicothoracic junction
    if "C1" in names:
        sagittal[names.index("C1")] = rng.uniform(-5, 10)
    lordosis = slope - tilt_l1
    kyphosis = max(tilt_t1 - tilt_l1 + sagittal[thoracic[-1]], 5.0)
    cerv = tilt_t1 - sagittal[names.index("C7")] - tilt_c2
    wl = np.linspace(0.6, 1.6, len(lumbar)) * (1 + 0.15 * rng.standard_normal(len(lumbar)))
    wl = np.clip(wl, 0.2, None)
    sagittal[lumbar] = lordosis * wl / wl.sum()
    tk = thoracic[:-1]
    sagittal[tk] = -kyphosis * _bump(len(tk), rng)
    cj = [i for i in cervical if dims[i].name in ("C2", "C3", "C4", "C5", "C6")]
    sagittal[cj] = cerv * _bump(len(cj), rng, 0.5)
    sagittal += rng.normal(0, 1.0, n)
    return sagittal, slope


def _coronal_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) coronal joint angles in degrees: noise and, on 60 % of spines, one mild
    C-curve (Cobb angle up to about 18 degrees) with compensation above and below."""
    coronal = rng.normal(0, 0.4, n)
    if rng.random() < 0.6:
        cobb = rng.uniform(4, 18) * rng.choice([-1, 1])
        apex = rng.integers(8, max(9, n - 3))
        half = rng.integers(3, 6)
        lo, hi = max(1, apex - half), min(n, apex + half)
        coronal[lo:hi] += cobb / (hi - lo)
        comp_up = np.arange(max(0, lo - 4), lo)
        comp_dn = np.arange(hi, min(n, hi + 4))
        if len(comp_up):
            coronal[comp_up] -= 0.5 * cobb / len(comp_up)
        if len(comp_dn):
            coronal[comp_dn] -= 0.5 * cobb / len(comp_dn)
    return coronal


def build_spine(names: tuple[str, ...], rng: np.random.Generator, scale: float = 1.0,
                disc_scale: float = 1.0, max_t1_lean: float = MAX_T1_LEAN) -> Spine:
    """Place every vertebra along a random, realistically curved spine.

    Starting from S1 (tilted by a random sacral slope) the levels are stacked upwards:
    each disc rotates the next frame by a sagittal angle (lumbar and cervical lordosis,
    thoracic kyphosis), a coronal angle (mild scoliosis, one C-curve with compensation)
    and a small axial twist. The sagittal angles are set so that S1, L1, T1 and C2 lean
    by random but typical amounts (sacral slope 28-48 deg; L1 -20..2, T1 5..30, C2
    -15..10 deg forward), then the whole spine is tilted by a few degrees about S1, which
    sits at the world origin.

    ``disc_scale`` multiplies every disc's height after the draws (thin, degenerated discs
    of older patients below 1); the random draws, and so the curvature, do not change.
    ``max_t1_lean`` (degrees, 5-80) widens T1's range, 5..30 by default, to the steep upper
    thoracic spine of hyperkyphotic patients (decision ``kyphosis``); the draws stay
    the same in number, so every other part of the spine keeps its values.
    """
    if not disc_scale > 0:
        raise VertebraError(f"disc_scale must be positive, got {disc_scale}")
    max_t1_lean = check_max_t1_lean(max_t1_lean)
    dims = level_dims(names, rng, scale)
    if disc_scale != 1.0:
        dims = [replace(d, disc=d.disc * disc_scale) for d in dims]
    n = len(dims)
    sac = sacrum_dims(scale)
    sagittal, slope = _sagittal_angles(dims, rng, max_t1_lean)
    coronal = _coronal_angles(n, rng)
    twist = rng.normal(0, 0.8, n)

    sac_centres = np.zeros((5, 3))
    sac_frames = np.zeros((5, 3, 3))
    sac_frames[0] = rot_x(slope)
    for s in range(1, 5):
        sac_frames[s] = sac_frames[s - 1] @ rot_x(-rng.uniform(8, 16))
        ez0, ez1 = sac_frames[s - 1][:, 2], sac_frames[s][:, 2]
        sac_centres[s] = (sac_centres[s - 1] - ez0 * (sac[s - 1].height / 2 + 0.5)
                          - ez1 * (sac[s].height / 2 + 0.5))
    pelvis = sac_frames[0] @ rot_x(-slope)

    centres = np.zeros((n, 3))
    frames = np.zeros((n, 3, 3))
    below_c, below_f, below_h = sac_centres[0], sac_frames[0], sac[0].height
    for i in range(n - 1, -1, -1):
        d = dims[i]
        turn = rot_z(twist[i]) @ rot_y(coronal[i]) @ rot_x(-sagittal[i])
        mid = below_c + below_f[:, 2] * (below_h / 2 + d.disc / 2)
        frames[i] = below_f @ turn
        if d.name == "C1":
            # the atlas ring sits around the dens, over C2's superior facets
            centres[i] = below_c + below_f[:, 2] * (below_h / 2 + 9.0 * scale)
            frames[i] = below_f @ turn
        else:
            centres[i] = mid + frames[i][:, 2] * (d.disc / 2 + d.height / 2)
        below_c, below_f, below_h = centres[i], frames[i], d.height

    # patient positioning: a small tilt of the whole spine about S1
    q = rot_x(rng.normal(0, 3)) @ rot_y(rng.normal(0, 2))
    centres = centres @ q.T
    frames = q[None] @ frames
    sac_centres = sac_centres @ q.T
    sac_frames = q[None] @ sac_frames
    pelvis = q @ pelvis
    return Spine(dims, centres, frames, sac, sac_centres, sac_frames, pelvis)

