"""vertebra: vertebra localisation and identification from multi-view DRRs.

The shortest path from a CT to labels (the default networks, :mod:`vertebra.weights`)::

    >>> import vertebra
    >>> result = vertebra.label("ct.nii.gz", out="labels/")  # doctest: +SKIP

``import vertebra`` stays light: torch and the pipeline load on first use.
"""

from vertebra.errors import VertebraError

__all__ = ["VertebraError"]


def __getattr__(name):  # lazy: keep `import vertebra` free of torch
    if name in ("sequence_loss", "sequence_scores", "view_weights", "SequenceDP"):
        from vertebra import sequence

        return getattr(sequence, name)
    if name == "create_model":
        from vertebra import models

        return models.create_model
    if name == "label":
        from vertebra.labelling import label

        return label
    if name in ("load_networks", "LabelResult"):
        from vertebra import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'vertebra' has no attribute {name!r}")
