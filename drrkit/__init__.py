"""drrkit: exact, fast digitally reconstructed radiographs and multi-view geometry.

Importing drrkit never needs a GPU; CUDA (CuPy) is loaded only when a CUDA backend is
used.
"""

from drrkit.dense import suppress_dense
from drrkit.errors import DrrkitError
from drrkit.geometry import Geometry, Projected, circular_orbit, pixel_rays, project_points
from drrkit.render import cuda_available, render, render_labels
from drrkit.volume import (
    MU_WATER,
    Volume,
    enhance_bone,
    hu_to_mu,
    load_volume,
    resample_isotropic,
)

__version__ = "0.1.0"

__all__ = [
    "MU_WATER",
    "DrrkitError",
    "Geometry",
    "Projected",
    "Volume",
    "circular_orbit",
    "cuda_available",
    "enhance_bone",
    "hu_to_mu",
    "load_volume",
    "pixel_rays",
    "project_points",
    "render",
    "render_labels",
    "resample_isotropic",
    "suppress_dense",
]


def __getattr__(name):  # lazy: keep `import drrkit` light
    if name in ("triangulate", "triangulate_robust"):
        from drrkit import triangulation

        return getattr(triangulation, name)
    if name == "match_views":
        from drrkit import correspondence

        return correspondence.match_views
    raise AttributeError(f"module 'drrkit' has no attribute {name!r}")
