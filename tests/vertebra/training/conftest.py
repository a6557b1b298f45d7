"""Fixtures and helpers shared by the training tests."""

import pytest

from vertebra.training.config import TrainConfig
from vertebra.training.rendered import render_all
from vertebra.training.sources import PhantomSource
from vertebra.views import ViewConfig

ENC = "resnet10t"


def tiny_config(task="identification", **changes):
    """A TrainConfig of the smallest useful size (ResNet-10t, 4 steps)."""
    base = {"encoder": ENC, "crop_size": 64, "batch_size": 4, "iterations": 4, "log_every": 2,
            "checkpoint_every": 2, "sigma_mm": 6.0,
            "views": ViewConfig(views=4, mm_per_pixel=4.0)}
    base.update(changes)
    return TrainConfig(task=task, **base)


@pytest.fixture(scope="session")
def phantoms():
    return PhantomSource([0, 1], size="small", levels=("T10", "L3"), orientation="random")


@pytest.fixture(scope="session")
def rendered(phantoms):
    cfg = tiny_config()
    return render_all(phantoms, cfg.views, orbits=2, sigma_mm=cfg.sigma_mm)
