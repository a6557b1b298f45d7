"""Training the localization and identification U-Nets, and multi-view pre-training.

Modules (each small, named for what it holds):

* :mod:`~vertebra.training.config` -- :class:`TrainConfig` (paper defaults, ``cpu_demo``);
* :mod:`~vertebra.training.sources` -- ``phantoms:N`` / VerSe folders / caches as data;
* :mod:`~vertebra.training.rendered` -- rendered views + targets, ``.npz`` prerender cache;
* :mod:`~vertebra.training.dataset` -- cropped, augmented samples; the resumable stream;
* :mod:`~vertebra.training.losses` -- heatmap loss, cross-entropy + Sequence Loss;
* :mod:`~vertebra.training.checkpoint` -- checkpoints with config, labels, code version;
* :mod:`~vertebra.training.trainer` -- the training loop (:func:`train`), AMP, DDP;
* :mod:`~vertebra.training.pretraining` -- multi-view SimSiam on training data;
* :mod:`~vertebra.training.validate` -- per-view scores on held-out views.

Importing this package is light; torch is loaded by the modules that need it.
"""

from vertebra.training.config import AugmentConfig, TrainConfig


def __getattr__(name):  # lazy: keep `import vertebra.training` free of torch
    if name in ("train", "TrainResult"):
        from vertebra.training import trainer

        return getattr(trainer, name)
    if name == "pretrain_views":
        from vertebra.training.pretraining import pretrain_views

        return pretrain_views
    raise AttributeError(f"module 'vertebra.training' has no attribute {name!r}")


__all__ = ["AugmentConfig", "TrainConfig", "pretrain_views", "train"]
