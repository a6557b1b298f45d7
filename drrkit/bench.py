"""Standard benchmark scenes for ``drrkit bench``: render, time, report.

Method (as in ``benchmarks/README``): each configuration is run ``warmup`` times
untimed (compilation, caches), then ``repeats`` times; a repeat is one batched render
of all K views, timed with CUDA events around the call on the GPU (the per-call upload
of the K x 21 view parameters included, the one-off volume upload excluded) and with
``time.perf_counter`` on the CPU. Reported: median ms per render and per view, the
spread (25th-75th percentile), views/s, and G samples/s, where the sample count is the
exact number of trilinear samples the ray rule takes (counted by :func:`count_samples`).
On the GPU, ``floor_fraction`` compares the rate with a measured texture-filtering floor:
the rate of a kernel that only takes filtered texture samples along straight, perfectly
coherent rays through the same volume (``drr_texture_floor`` in ``drrkit/cuda/march.cu``).
"""

from __future__ import annotations

import functools
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.geometry import Geometry, circular_orbit
from drrkit.volume import MU_WATER, Volume


@dataclass(frozen=True)
class Scene:
    """One benchmark scene: a synthetic CT and a circular orbit of K views.

    Attributes:
        name: short identifier used on the command line.
        shape: (Z, Y, X) voxels.
        spacing: (3,) voxel size in mm along (x, y, z).
        views: K views, rendered in one batched call.
        size: detector (H, W) pixels.
        pixel_spacing: detector pixel size in mm.
        sad, sid: source-to-isocentre and source-to-detector distances in mm.
        step_fraction: sampling step as a fraction of the smallest voxel spacing.
        target: the performance target this scene checks, in words.
    """

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    views: int
    size: tuple[int, int]
    pixel_spacing: float
    sad: float = 500.0
    sid: float = 1000.0
    step_fraction: float = 0.5
    target: str = ""

    @property
    def step(self) -> float:
        """Sampling step in mm."""
        return self.step_fraction * min(self.spacing)


SCENES = {
    scene.name: scene
    for scene in (
        Scene("ct256-512", (256, 256, 256), (1.0, 1.0, 1.0), views=16, size=(512, 512),
              pixel_spacing=1.2, target="H100: <= 0.3 ms per view (batched)"),
        Scene("ct512x400-1024", (400, 512, 512), (0.8, 0.8, 1.0), views=10,
              size=(1024, 1024), pixel_spacing=0.9, target="H100: 10 views in < 5 ms"),
        Scene("ct256-200", (256, 256, 256), (1.0, 1.0, 1.0), views=4, size=(200, 200),
              pixel_spacing=3.0, target="CPU reference scene"),
        # the same views at one sample per voxel spacing (0.8 mm): half the samples
        Scene("ct512x400-1024-coarse", (400, 512, 512), (0.8, 0.8, 1.0), views=10,
              size=(1024, 1024), pixel_spacing=0.9, step_fraction=1.0,
              target="ct512x400-1024 at a one-voxel step"),
    )
}

#: Scenes run when none are named, per backend.
DEFAULT_SCENES = {"cpu": ("ct256-200",),
                  "cuda": ("ct256-512", "ct512x400-1024", "ct512x400-1024-coarse", "ct256-200")}
#: CUDA configurations (sampling, storage) run when none are named.
CUDA_CONFIGS = (("global", "float32"), ("texture", "float32"), ("texture", "float16"))


@functools.lru_cache(maxsize=2)
def scene_volume(scene: Scene) -> Volume:
    """A deterministic torso-like CT for ``scene``: attenuation in 1/mm, (Z, Y, X) float32.

    An elliptic water cylinder along z with two low-density lungs and a bone column;
    only its extent matters for timing, its content keeps the images plausible. The
    last two are cached (treat the data as read-only).
    """
    _, ny, nx = scene.shape
    sx, sy, _ = scene.spacing
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy
    half_x, half_y = 0.45 * nx * sx, 0.35 * ny * sy
    xx, yy = np.meshgrid(x, y)  # (Y, X)
    body = (xx / half_x) ** 2 + (yy / half_y) ** 2 <= 1.0
    lungs = ((np.abs(xx) - 0.45 * half_x) / (0.3 * half_x)) ** 2 + (yy / (0.55 * half_y)) ** 2
    spine = (xx / (0.12 * half_x)) ** 2 + ((yy - 0.6 * half_y) / (0.2 * half_y)) ** 2 <= 1.0
    plane = np.where(body, np.float32(MU_WATER), np.float32(0.0)).astype(np.float32)
    plane[body & (lungs <= 1.0)] = 0.2 * MU_WATER
    plane[spine] = 2.3 * MU_WATER
    data = np.empty(scene.shape, dtype=np.float32)
    data[:] = plane  # broadcast over z
    return Volume(data, spacing=scene.spacing, origin=(0.0, 0.0, 0.0))


def scene_geometry(scene: Scene, volume: Volume) -> Geometry:
    """The scene's K views on a circular orbit about the volume's centre."""
    return circular_orbit(volume, views=scene.views, sad=scene.sad, sid=scene.sid,
                          size=scene.size, pixel_spacing=scene.pixel_spacing)


def count_samples(volume: Volume, geometry: Geometry, step: float) -> int:
    """Total trilinear samples of one render: the sum over rays of the piece count.

    Same clipping and piece count as the ray rule in :mod:`drrkit._cpu` (in float64,
    so a ray whose chord is within rounding of a piece-count jump may differ by one;
    see :func:`drrkit.reference.piece_count_margins`).
    """
    from drrkit.backends import PIECE_SLACK
    from drrkit.reference import chord_lengths

    chord = chord_lengths(volume, geometry)
    pieces = np.maximum(np.ceil(chord / step - PIECE_SLACK), 1.0)
    return int(pieces[chord > 0].sum())


# ---------------------------------------------------------------------- timing
def _summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"ms_median": float(q50), "ms_q25": float(q25), "ms_q75": float(q75),
            "ms_min": float(ms.min()), "repeats": int(ms.size)}


def _time_cpu(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _time_cuda(fn, repeats: int, warmup: int) -> list[float]:
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    seconds = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        seconds.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3)
    return seconds


def texture_floor(volume: Volume, size: tuple[int, int], repeats: int = 10,
                  warmup: int = 2) -> float:
    """Measured texture-filtering floor in G samples/s on the current GPU.

    Filtered float32 texture samples along straight z-rays (2 per voxel) through
    ``volume``, one thread per pixel of an (H, W) = ``size`` grid.
    """
    import cupy

    from drrkit.cuda import CudaProjector, _build

    projector = CudaProjector(volume, sampling="texture")
    x, y, z = volume.shape_xyz
    h, w = size
    n_samples = 2 * z
    out = cupy.empty((h, w), dtype=cupy.float32)
    kernel = _build.get_kernel("drr_texture_floor", device_id=projector.device_id,
                               defines=projector._defines)
    bx, by = projector.block
    grid = (math.ceil(w / bx), math.ceil(h / by), 1)
    args = (projector._texture, out, np.int32(h), np.int32(w), np.int32(x), np.int32(y),
            np.int32(z), np.int32(n_samples))
    seconds = _time_cuda(lambda: kernel(grid, (bx, by, 1), args), repeats, warmup)
    return h * w * n_samples / float(np.median(seconds)) / 1e9


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(backend: str) -> str:
    """The GPU's name for "cuda", the CPU's description for "cpu"."""
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    from drrkit import config

    return f"{cpu_model()} ({config.cpu_threads()} threads)"


def run_scene(scene: Scene, backend: str, sampling: str | None = None,
              storage: str | None = None, repeats: int | None = None, warmup: int = 2,
              floor: float | None = None) -> dict:
    """Time one scene on one backend configuration; returns a result row.

    Args:
        scene: the scene.
        backend: "cpu" or "cuda".
        sampling, storage: CUDA projector options (ignored on the CPU).
        repeats: timed renders (default 20 on the GPU, 5 on the CPU).
        warmup: untimed renders first.
        floor: texture floor in G samples/s for ``floor_fraction`` (GPU only).
    """
    volume = scene_volume(scene)
    geometry = scene_geometry(scene, volume)
    step = scene.step
    if backend == "cpu":
        from drrkit._cpu import render_cpu

        seconds = _time_cpu(lambda: render_cpu(volume, geometry, step),
                            5 if repeats is None else repeats, warmup)
        sampling = storage = None
    elif backend == "cuda":
        from drrkit.cuda import CudaProjector

        sampling = sampling or "global"
        storage = storage or "float32"
        projector = CudaProjector(volume, sampling=sampling, storage=storage)
        seconds = _time_cuda(lambda: projector.render(geometry, step, out="cupy"),
                             20 if repeats is None else repeats, warmup)
    else:
        raise DrrkitError(f"unknown backend {backend!r}; choose cpu or cuda")
    samples = count_samples(volume, geometry, step)
    row = {"scene": scene.name, "backend": backend, "sampling": sampling, "storage": storage,
           "views": scene.views, "height": scene.size[0], "width": scene.size[1],
           "volume_zyx": list(scene.shape), "step_mm": step, "samples": samples,
           **_summary(seconds)}
    per_render = row["ms_median"] * 1e-3
    row["ms_per_view"] = row["ms_median"] / scene.views
    row["views_per_s"] = scene.views / per_render
    row["gsamples_per_s"] = samples / per_render / 1e9
    row["floor_gsamples_per_s"] = floor
    row["floor_fraction"] = None if not floor else row["gsamples_per_s"] / floor
    row["target"] = scene.target
    return row


def run_bench(backend: str = "auto", scenes=None, configs=None, repeats: int | None = None,
              warmup: int = 2, floor: bool = True) -> list[dict]:
    """Run the standard scenes; returns one row per (scene, configuration).

    Args:
        backend: "auto", "cpu" or "cuda" (as :func:`drrkit.render`).
        scenes: scene names (default :data:`DEFAULT_SCENES` of the backend).
        configs: CUDA (sampling, storage) pairs (default :data:`CUDA_CONFIGS`).
        repeats, warmup: as :func:`run_scene`.
        floor: measure the texture floor per scene on the GPU.
    """
    from drrkit.render import resolve_backend

    chosen = resolve_backend(backend)
    names = DEFAULT_SCENES[chosen] if not scenes else tuple(scenes)
    unknown = [n for n in names if n not in SCENES]
    if unknown:
        raise DrrkitError(f"unknown scenes {unknown}; choose from {', '.join(SCENES)}")
    rows = []
    for name in names:
        scene = SCENES[name]
        if chosen == "cpu":
            rows.append(run_scene(scene, "cpu", repeats=repeats, warmup=warmup))
            continue
        rate = texture_floor(scene_volume(scene), scene.size) if floor else None
        for sampling, storage in (configs or CUDA_CONFIGS):
            rows.append(run_scene(scene, "cuda", sampling, storage, repeats, warmup, rate))
    return rows


_COLUMNS = (("scene", "scene", "{}"), ("backend", "backend", "{}"),
            ("sampling", "sampling", "{}"), ("storage", "storage", "{}"),
            ("views", "K", "{}"), ("size", "HxW", "{}"), ("ms_median", "ms/render", "{:.3f}"),
            ("ms_per_view", "ms/view", "{:.4f}"), ("views_per_s", "views/s", "{:.1f}"),
            ("gsamples_per_s", "Gsamples/s", "{:.2f}"), ("floor_fraction", "of floor", "{:.0%}"))


def format_table(rows: list[dict]) -> str:
    """A plain-text table of result rows (one line per row)."""
    header = [title for _, title, _ in _COLUMNS]
    lines = []
    for row in rows:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = f"{row['height']}x{row['width']}" if key == "size" else row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    text = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    text += ["  ".join(c.rjust(w) if i >= 4 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    return "\n".join(text)


def environment(backend: str) -> dict:
    """Versions and hardware recorded with every result."""
    import numba

    import drrkit

    info = {"drrkit": drrkit.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "backend": backend,
            "device": device_name(backend), "machine": platform.machine()}
    if backend == "cuda":
        import cupy

        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    return info


def write_json(rows: list[dict], path, backend: str) -> Path:
    """Write ``{"environment": ..., "scenes": ..., "rows": rows}`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    used = sorted({row["scene"] for row in rows})
    payload = {"environment": environment(backend),
               "scenes": {name: asdict(SCENES[name]) for name in used if name in SCENES},
               "rows": rows}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
