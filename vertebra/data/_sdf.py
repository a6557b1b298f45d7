"""Implicit (signed-distance) primitives and the Numba kernels that rasterise them.

Used by :mod:`vertebra.data.phantom`. A scene is a list of primitives, each tagged with
an *object* (an index into a material table). Rasterising evaluates every primitive in
its own bounding box only and keeps, per voxel, the smallest signed distance ``sdf`` (mm,
negative inside) and the object it came from (``obj``). Primitives of one object can be
joined with a smooth union (fillets) and carved by subtraction.

Row layout of a primitive (float64, :data:`ROW` values)::

    0 kind   1 obj   2 op   3 smooth (mm)   4 onion (mm, 0 = solid)
    5:8  centre c (world mm)                8:17 R (3x3 row-major: rows = local axes)
    17:  kind-specific parameters (see :class:`Shapes`)

with local coordinates ``q = R @ (p - c)`` for a world point ``p``. Distances of the
ellipsoid, the D-shaped body and the round cone are first-order approximations (exact on
the surface, close nearby), which is all shading and partial-volume weighting need.
"""

from __future__ import annotations

import math

import numba
import numpy as np

ROW = 32

ELLIPSOID, CAPSULE, BODY, BOX, SLAB = 0, 1, 2, 3, 4
UNION, SUBTRACT_OWN, SUBTRACT_ALL = 0, 1, 2

#: Signed distance written where no primitive reaches (mm).
FAR = np.float32(1e4)


def _frame_rows(frame) -> np.ndarray:
    """(3, 3) frame with columns = local axes in world -> row-major R (rows = local axes)."""
    return np.asarray(frame, dtype=np.float64).T.reshape(-1)


class Shapes:
    """A growing list of primitives (rows) with their world bounding boxes.

    Every ``frame`` argument is a (3, 3) matrix whose columns are the primitive's local
    x, y, z axes in world coordinates; lengths are mm.
    """

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.rows)

    def _add(self, kind, obj, op, smooth, onion, centre, frame, params, half_extent):
        row = np.zeros(ROW)
        row[0], row[1], row[2], row[3], row[4] = kind, obj, op, smooth, onion
        row[5:8] = centre
        row[8:17] = _frame_rows(np.eye(3) if frame is None else frame)
        row[17:17 + len(params)] = params
        self.rows.append(row)
        self.lo.append(np.asarray(centre, dtype=np.float64) - half_extent)
        self.hi.append(np.asarray(centre, dtype=np.float64) + half_extent)

    @staticmethod
    def _extent(frame, half) -> np.ndarray:
        """World half-extent (3,) of a local box of half sizes ``half`` (3,) in ``frame``."""
        return np.abs(np.asarray(frame, dtype=np.float64)) @ np.asarray(half, dtype=np.float64)

    def ellipsoid(self, obj, centre, frame, radii, *, op=UNION, smooth=0.0, onion=0.0):
        """Ellipsoid with semi-axes ``radii`` (3,) along the frame's axes."""
        radii = np.maximum(np.asarray(radii, dtype=np.float64), 0.05)
        self._add(ELLIPSOID, obj, op, smooth, onion, centre, frame, radii,
                  self._extent(frame, radii) + onion)

    def capsule(self, obj, a, b, ra, rb=None, *, op=UNION, smooth=0.0, onion=0.0):
        """Round cone from world point ``a`` (radius ``ra``) to ``b`` (radius ``rb``)."""
        rb = ra if rb is None else rb
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        r = max(ra, rb) + onion
        lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
        row = np.zeros(ROW)
        row[0], row[1], row[2], row[3], row[4] = CAPSULE, obj, op, smooth, onion
        row[5:8] = a
        row[17:20] = b
        row[20], row[21] = ra, rb
        self.rows.append(row)
        self.lo.append(lo)
        self.hi.append(hi)

    def chain(self, obj, points, radii, *, op=UNION, smooth=0.0):
        """Capsules along a polyline ``points`` (N, 3) with radii (N,) or a scalar."""
        points = np.asarray(points, dtype=np.float64)
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
        for n in range(len(points) - 1):
            self.capsule(obj, points[n], points[n + 1], radii[n], radii[n + 1],
                         op=op, smooth=smooth)

    def body(self, obj, centre, frame, half_width, front, back, half_height, *,
             waist=0.0, rounding=1.0, op=UNION, smooth=0.0):
        """Vertebral body: an elliptic cylinder along local z with a D-shaped section.

        The section is an ellipse of semi-axes (half_width, front) for local y < 0
        (anterior) and (half_width, back) for y > 0; the width narrows by the fraction
        ``waist`` at mid-height; edges are rounded by ``rounding`` mm.
        """
        half = (half_width, max(front, back), half_height)
        self._add(BODY, obj, op, smooth, 0.0, centre, frame,
                  (half_width, front, back, half_height, waist, rounding),
                  self._extent(frame, half))

    def box(self, obj, centre, frame, half, *, rounding=0.0, op=UNION, smooth=0.0, onion=0.0):
        """Box of half sizes ``half`` (3,) with edges rounded by ``rounding`` mm."""
        half = np.asarray(half, dtype=np.float64)
        rounding = min(float(rounding), float(half.min()))
        self._add(BOX, obj, op, smooth, onion, centre, frame, (*half, rounding),
                  self._extent(frame, half) + onion)

    def slab(self, obj, centre, frame, rx, ry, n1, d1, n2, d2, reach, *, op=UNION):
        """Elliptic prism (section rx, ry in the frame's x-y) cut by the half-spaces
        ``n1 . p <= d1`` and ``n2 . p <= d2`` (world); ``reach`` bounds it along local z."""
        self._add(SLAB, obj, op, 0.0, 0.0, centre, frame,
                  (rx, ry, *n1, d1, *n2, d2), self._extent(frame, (rx, ry, reach)))

    def extend(self, other: Shapes) -> None:
        self.rows += other.rows
        self.lo += other.lo
        self.hi += other.hi

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P, ROW) rows, (P, 3) world box minima and (P, 3) maxima."""
        if not self.rows:
            return np.zeros((0, ROW)), np.zeros((0, 3)), np.zeros((0, 3))
        return np.stack(self.rows), np.stack(self.lo), np.stack(self.hi)


def index_boxes(lo, hi, origin, spacing, shape_xyz, margin) -> np.ndarray:
    """World boxes -> (P, 6) int voxel ranges (k0, k1, j0, j1, i0, i1), clipped, half-open.

    The grid is axis-aligned (identity direction) with voxel (i, j, k) at
    ``origin + spacing * (i, j, k)``.
    """
    n = np.asarray(shape_xyz, dtype=np.int64)
    a = np.floor((lo - margin - origin) / spacing).astype(np.int64)
    b = np.ceil((hi + margin - origin) / spacing).astype(np.int64) + 1
    a = np.clip(a, 0, n)
    b = np.clip(b, 0, n)
    return np.stack([a[:, 2], b[:, 2], a[:, 1], b[:, 1], a[:, 0], b[:, 0]], axis=1)


# ---------------------------------------------------------------------- kernels
@numba.njit(inline="always", fastmath=True, cache=True)
def _ellipse_sdf(x, y, rx, ry):  # pragma: no cover - compiled
    k0 = math.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = math.sqrt((x / (rx * rx)) ** 2 + (y / (ry * ry)) ** 2)
    if k1 < 1e-9:
        return -min(rx, ry)
    return k0 * (k0 - 1.0) / k1


@numba.njit(fastmath=True, cache=True)
def _prim_sdf(row, px, py, pz):  # pragma: no cover - compiled
    kind = int(row[0])
    if kind == CAPSULE:
        ax, ay, az = row[5], row[6], row[7]
        bx, by, bz = row[17] - ax, row[18] - ay, row[19] - az
        qx, qy, qz = px - ax, py - ay, pz - az
        bb = bx * bx + by * by + bz * bz
        h = 0.0
        if bb > 0.0:
            h = min(max((qx * bx + qy * by + qz * bz) / bb, 0.0), 1.0)
        dx, dy, dz = qx - bx * h, qy - by * h, qz - bz * h
        return math.sqrt(dx * dx + dy * dy + dz * dz) - (row[20] + (row[21] - row[20]) * h)
    wx, wy, wz = px - row[5], py - row[6], pz - row[7]
    qx = row[8] * wx + row[9] * wy + row[10] * wz
    qy = row[11] * wx + row[12] * wy + row[13] * wz
    qz = row[14] * wx + row[15] * wy + row[16] * wz
    if kind == ELLIPSOID:
        rx, ry, rz = row[17], row[18], row[19]
        k0 = math.sqrt((qx / rx) ** 2 + (qy / ry) ** 2 + (qz / rz) ** 2)
        k1 = math.sqrt((qx / (rx * rx)) ** 2 + (qy / (ry * ry)) ** 2 + (qz / (rz * rz)) ** 2)
        if k1 < 1e-9:
            return -min(rx, min(ry, rz))
        return k0 * (k0 - 1.0) / k1
    if kind == BOX:
        r = row[20]
        dx = abs(qx) - (row[17] - r)
        dy = abs(qy) - (row[18] - r)
        dz = abs(qz) - (row[19] - r)
        ox, oy, oz = max(dx, 0.0), max(dy, 0.0), max(dz, 0.0)
        return math.sqrt(ox * ox + oy * oy + oz * oz) + min(max(dx, max(dy, dz)), 0.0) - r
    if kind == BODY:
        hw, front, back, hh, waist, r = row[17], row[18], row[19], row[20], row[21], row[22]
        t = min(abs(qz) / hh, 1.0)
        rx = hw * (1.0 - waist * (1.0 - t * t)) - r
        ry = (front if qy < 0.0 else back) - r
        d2 = _ellipse_sdf(qx, qy, max(rx, 0.1), max(ry, 0.1))
        dz = abs(qz) - (hh - r)
        ox, oz = max(d2, 0.0), max(dz, 0.0)
        return math.sqrt(ox * ox + oz * oz) + min(max(d2, dz), 0.0) - r
    # SLAB
    d = _ellipse_sdf(qx, qy, row[17], row[18])
    d = max(d, row[19] * px + row[20] * py + row[21] * pz - row[22])
    d = max(d, row[23] * px + row[24] * py + row[25] * pz - row[26])
    return d


@numba.njit(parallel=True, fastmath=True, cache=True)
def rasterise(sdf, obj, rows, boxes, origin, spacing):  # pragma: no cover - compiled
    """Evaluate primitives in order into ``sdf`` (Z, Y, X) float32 and ``obj`` (Z, Y, X) int16.

    Args:
        sdf: overwritten with the minimum signed distance in mm (:data:`FAR` where no
            primitive reaches).
        obj: overwritten with the object index of the nearest primitive (-1: none).
        rows: (P, ROW) float64 primitives.
        boxes: (P, 6) int64 voxel ranges from :func:`index_boxes`.
        origin, spacing: (3,) float64 grid of identity direction, world mm.
    """
    nz, ny, nx = sdf.shape
    n_prim = rows.shape[0]
    for k in numba.prange(nz):
        for j in range(ny):
            for i in range(nx):
                sdf[k, j, i] = FAR
                obj[k, j, i] = -1
        pz = origin[2] + k * spacing[2]
        for p in range(n_prim):
            if k < boxes[p, 0] or k >= boxes[p, 1]:
                continue
            row = rows[p]
            o = np.int16(row[1])
            op = int(row[2])
            smooth = row[3]
            onion = row[4]
            for j in range(boxes[p, 2], boxes[p, 3]):
                py = origin[1] + j * spacing[1]
                for i in range(boxes[p, 4], boxes[p, 5]):
                    cur = sdf[k, j, i]
                    # carving: nothing to do where no (own) object has been drawn
                    if op != UNION and (
                            cur >= 0.5 * FAR or (op == SUBTRACT_OWN and obj[k, j, i] != o)):
                        continue
                    px = origin[0] + i * spacing[0]
                    d = _prim_sdf(row, px, py, pz)
                    if onion > 0.0:
                        d = abs(d + onion) - onion
                    if op == UNION:
                        if smooth > 0.0 and obj[k, j, i] == o:
                            h = max(smooth - abs(cur - d), 0.0) / smooth
                            new = min(cur, d) - h * h * smooth * 0.25
                        else:
                            new = min(cur, d)
                        if d < cur:
                            obj[k, j, i] = o
                        sdf[k, j, i] = new
                    else:
                        sdf[k, j, i] = max(cur, -d)


@numba.njit(inline="always", cache=True)
def _at(sdf, k, j, i, dk, dj, di, nz, ny, nx):  # pragma: no cover - compiled
    """sdf at a neighbour, or NaN outside the grid or where nothing was evaluated."""
    k2, j2, i2 = k + dk, j + dj, i + di
    if k2 < 0 or k2 >= nz or j2 < 0 or j2 >= ny or i2 < 0 or i2 >= nx:
        return np.nan
    v = sdf[k2, j2, i2]
    return np.nan if v >= 0.5 * FAR else v


@numba.njit(inline="always", cache=True)
def _slope(lo, mid, hi, step):  # pragma: no cover - compiled
    """Central (or one-sided) difference per mm; 0 when neither neighbour is known."""
    if not math.isnan(lo) and not math.isnan(hi):
        return (hi - lo) / (2.0 * step)
    if not math.isnan(hi):
        return (hi - mid) / step
    if not math.isnan(lo):
        return (mid - lo) / step
    return 0.0


@numba.njit(parallel=True, fastmath=True, cache=True)
def composite(hu, labels, sdf, obj, core, shell, thick, label_of, spacing):
    """Blend objects into ``hu`` (Z, Y, X) float32 with partial-volume weights.

    Each voxel is treated as a box filter of width ``h`` along the surface normal ``n``
    (``h = |n * spacing|``, ``n`` from the gradient of ``sdf``). Its inside fraction is
    ``a = clip(0.5 - sdf / h, 0, 1)`` and its core fraction ``b = clip(0.5 - (sdf +
    thick) / h, 0, 1)``; the object is ``shell`` HU within ``thick`` mm of its surface and
    ``core`` HU deeper, so ``hu <- (1 - a) hu + b core + (a - b) shell`` (which keeps the
    integral of HU over the grid close to the exact one, whatever the voxel size). Voxels
    with ``sdf < 0`` get ``label_of[obj]`` where that is not negative. Tables are indexed
    by object; spacing is (3,) mm along x, y, z.
    """  # pragma: no cover - compiled
    nz, ny, nx = hu.shape
    sx, sy, sz = spacing[0], spacing[1], spacing[2]
    h_max = max(sx, max(sy, sz))
    edge = 0.5 * h_max
    for k in numba.prange(nz):
        for j in range(ny):
            for i in range(nx):
                s = sdf[k, j, i]
                if s >= edge:
                    continue
                o = obj[k, j, i]
                if o < 0:
                    continue
                t = thick[o]
                if s <= -(t + edge):
                    a, b = 1.0, 1.0
                else:
                    gx = _slope(_at(sdf, k, j, i, 0, 0, -1, nz, ny, nx), s,
                                _at(sdf, k, j, i, 0, 0, 1, nz, ny, nx), sx)
                    gy = _slope(_at(sdf, k, j, i, 0, -1, 0, nz, ny, nx), s,
                                _at(sdf, k, j, i, 0, 1, 0, nz, ny, nx), sy)
                    gz = _slope(_at(sdf, k, j, i, -1, 0, 0, nz, ny, nx), s,
                                _at(sdf, k, j, i, 1, 0, 0, nz, ny, nx), sz)
                    g = math.sqrt(gx * gx + gy * gy + gz * gz)
                    if g > 1e-6:
                        h = math.sqrt((gx * sx) ** 2 + (gy * sy) ** 2 + (gz * sz) ** 2) / g
                    else:
                        h = h_max
                    a = min(max(0.5 - s / h, 0.0), 1.0)
                    b = min(max(0.5 - (s + t) / h, 0.0), 1.0)
                    if a <= 0.0:
                        continue
                hu[k, j, i] = (1.0 - a) * hu[k, j, i] + b * core[o] + (a - b) * shell[o]
                if s < 0.0 and label_of[o] >= 0:
                    labels[k, j, i] = label_of[o]


@numba.njit(parallel=True, fastmath=True, cache=True)
def body_outline(hu, origin, spacing, cx, cy, ax, ay, power, fat, tissue, blur):
    """Trunk/neck/head background, one superellipse per slice k.

    Outside: air (-1000 HU). Inside: a subcutaneous fat layer ``fat[k]`` mm thick
    (-100 HU) around ``tissue[k]`` HU. The outline of slice k is
    ``(|x - cx|/ax)^p + (|y - cy|/ay)^p = 1``, with the distance to it approximated by
    ``(rho - 1) min(ax, ay)``; edges are blended over ``blur`` mm.
    """  # pragma: no cover - compiled
    nz, ny, nx = hu.shape
    for k in numba.prange(nz):
        p = power[k]
        a, b = ax[k], ay[k]
        m = min(a, b)
        # thresholds on s = rho^p outside which no pow is needed
        s_out = (1.0 + 0.5 * blur / m) ** p
        inner = 1.0 - (fat[k] + 0.5 * blur) / m
        s_in = inner ** p if inner > 0.0 else -1.0
        xs = np.empty(nx)
        for i in range(nx):
            xs[i] = (abs(origin[0] + i * spacing[0] - cx[k]) / a) ** p
        for j in range(ny):
            yp = (abs(origin[1] + j * spacing[1] - cy[k]) / b) ** p
            for i in range(nx):
                sp = xs[i] + yp
                if sp >= s_out:
                    hu[k, j, i] = -1000.0
                elif sp <= s_in:
                    hu[k, j, i] = tissue[k]
                else:
                    d = (sp ** (1.0 / p) - 1.0) * m
                    inside = min(max(0.5 - d / blur, 0.0), 1.0)
                    core = min(max(0.5 - (d + fat[k]) / blur, 0.0), 1.0)
                    soft = -100.0 + core * (tissue[k] + 100.0)
                    hu[k, j, i] = -1000.0 + inside * (soft + 1000.0)


@numba.njit(inline="always", cache=True)
def _mix(x):  # pragma: no cover - compiled
    """splitmix64 finaliser: a well-mixed 64-bit hash of x."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(parallel=True, fastmath=True, cache=True)
def noise_and_clip(hu, key, sigma, lo, hi):
    """Add zero-mean noise of standard deviation ``sigma`` HU, then clip to [lo, hi].

    The noise is a counter-based hash of (key, voxel index), so it is reproducible and
    independent of the number of threads; each value is the sum of four 16-bit uniforms
    (Irwin-Hall), close to Gaussian.
    """  # pragma: no cover - compiled
    nz, ny, nx = hu.shape
    scale = sigma * math.sqrt(3.0) / 65535.0  # 4 uniforms on [0, 65535]: var = 4/12
    base = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    for k in numba.prange(nz):
        for j in range(ny):
            row = np.uint64((k * ny + j) * nx)
            for i in range(nx):
                h = _mix(base + row + np.uint64(i))
                u = (float(h & np.uint64(0xFFFF)) + float((h >> np.uint64(16)) & np.uint64(0xFFFF))
                     + float((h >> np.uint64(32)) & np.uint64(0xFFFF))
                     + float(h >> np.uint64(48)))
                v = hu[k, j, i] + (u - 2.0 * 65535.0) * scale
                hu[k, j, i] = min(max(v, lo), hi)


@numba.njit(parallel=True, fastmath=True, cache=True)
def streaks(hu, slices, origin, spacing, points, n_points, angles, amp, width, length, dark):
    """Metal streaks in axial slices.

    Each source adds lines through it at the given angles, alternately bright and dark,
    ``amp * exp(-r / length) * exp(-perp^2 / (2 width^2))`` (r: distance from the source,
    perp: distance from the line); the two sources farthest apart in a slice also get a
    dark band between them (beam hardening), ``dark`` HU deep and ``3 width`` wide.
    Only pixels within ``4 length`` of a source are touched.

    Args:
        hu: (Z, Y, X) float32, modified in place.
        slices: (S,) int64 slice indices k holding metal.
        points: (S, M, 2) float64 world (x, y) of metal sources in each slice.
        n_points: (S,) int64 number of valid sources per slice.
        angles: (S, M, A) float64 streak directions in radians.
        amp, width, length, dark: HU, mm, mm, HU.
    """  # pragma: no cover - compiled
    ny, nx = hu.shape[1], hu.shape[2]
    n_ang = angles.shape[2]
    reach = 4.0 * length
    cut = 3.0 * width
    for s in numba.prange(slices.shape[0]):
        k = slices[s]
        m = n_points[s]
        cs = np.cos(angles[s])
        sn = np.sin(angles[s])
        for a in range(m):
            px, py = points[s, a, 0], points[s, a, 1]
            j0 = max(int((py - reach - origin[1]) / spacing[1]), 0)
            j1 = min(int((py + reach - origin[1]) / spacing[1]) + 1, ny)
            i0 = max(int((px - reach - origin[0]) / spacing[0]), 0)
            i1 = min(int((px + reach - origin[0]) / spacing[0]) + 1, nx)
            for j in range(j0, j1):
                dy = origin[1] + j * spacing[1] - py
                for i in range(i0, i1):
                    dx = origin[0] + i * spacing[0] - px
                    add = 0.0
                    fall = -1.0
                    for t in range(n_ang):
                        perp = dx * sn[a, t] - dy * cs[a, t]
                        if abs(perp) < cut:
                            if fall < 0.0:
                                fall = math.exp(-math.sqrt(dx * dx + dy * dy) / length)
                            sign = 1.0 if t % 2 == 0 else -1.0
                            add += sign * amp * fall * math.exp(-0.5 * (perp / width) ** 2)
                    hu[k, j, i] += add
        if m >= 2 and dark > 0.0:
            # the pair farthest apart
            best, pa, pb = -1.0, 0, 1
            for a in range(m):
                for b in range(a + 1, m):
                    dd = ((points[s, a, 0] - points[s, b, 0]) ** 2
                          + (points[s, a, 1] - points[s, b, 1]) ** 2)
                    if dd > best:
                        best, pa, pb = dd, a, b
            ax, ay = points[s, pa, 0], points[s, pa, 1]
            ex, ey = points[s, pb, 0] - ax, points[s, pb, 1] - ay
            ll = math.sqrt(ex * ex + ey * ey)
            if ll < 1e-6:
                continue
            w3 = 3.0 * width
            pad = 3.0 * w3 + length
            j0 = max(int((min(ay, ay + ey) - pad - origin[1]) / spacing[1]), 0)
            j1 = min(int((max(ay, ay + ey) + pad - origin[1]) / spacing[1]) + 1, ny)
            i0 = max(int((min(ax, ax + ex) - pad - origin[0]) / spacing[0]), 0)
            i1 = min(int((max(ax, ax + ex) + pad - origin[0]) / spacing[0]) + 1, nx)
            for j in range(j0, j1):
                dy = origin[1] + j * spacing[1] - ay
                for i in range(i0, i1):
                    dx = origin[0] + i * spacing[0] - ax
                    along = (dx * ex + dy * ey) / ll
                    perp = (dx * ey - dy * ex) / ll
                    out = max(-along, along - ll, 0.0)
                    hu[k, j, i] -= dark * math.exp(-0.5 * (perp / w3) ** 2 - out / length)
