"""What the networks see of a CT: the one rule that labelling and training share.

Before any view is rendered, labelling (:func:`vertebra.pipeline.scenes`) and training
(:class:`vertebra.training.sources.SceneSource`) pass a CT through
:func:`network_scene`, so that the networks are trained on views rendered as the views
they label are:

1. with ``dense_hu`` set, the voxels denser than bone and their bright rim become soft
   tissue (:func:`drrkit.dense.suppress_dense`: undiluted contrast, metal, teeth);
2. with ``complete_body``, a scan whose small field of view the body fills is placed
   inside a completed trunk (:func:`drrkit.completion.completed`).
"""

from __future__ import annotations

import drrkit
from drrkit.completion import completed
from drrkit.dense import suppress_dense


def network_scene(volume: drrkit.Volume, *, dense_hu: float | None = None,
                  complete_body: bool = False) -> tuple[drrkit.Volume, drrkit.Volume]:
    """(cleaned, scene) of an attenuation volume (1/mm).

    Args:
        volume: the CT, attenuation in 1/mm.
        dense_hu: CT number (HU) above which voxels are rendered as soft tissue; None
            keeps them.
        complete_body: complete a cut scan's trunk.

    Returns:
        ``cleaned``: ``volume`` without its voxels denser than bone (a new volume when
        there are any and ``dense_hu`` is set, else ``volume`` itself); ``scene``: what
        the views integrate, ``cleaned`` inside a completed trunk when ``complete_body``
        holds and the scan needs it, else ``cleaned``. Both keep ``volume``'s geometry
        where they keep its grid, and completion only pads, so world coordinates (and
        centroids) mean the same in all three.
    """
    cleaned = volume if dense_hu is None else suppress_dense(volume, dense_hu)
    return cleaned, completed(cleaned) if complete_body else cleaned
