"""Shared test configuration: hypothesis profile and the GPU marker."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    from drrkit.render import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_networks(tmp_path_factory):
    """Two tiny random U-Nets as a bundle (``networks.pt``) and as an exported networks file.

    Returns:
        (bundle path, networks file path ``.../weights/default.safetensors``); the
        identifier has its own coarser views and the bundle a pipeline setting, and the
        localizer checkpoint records the commit "abc123".
    """
    import torch

    from vertebra.models import create_model, save_model
    from vertebra.pipeline import bundle_networks
    from vertebra.views import ViewConfig
    from vertebra.weights.export import export_networks

    root = tmp_path_factory.mktemp("tiny_networks")
    torch.manual_seed(0)
    small = {"encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8]}
    loc = save_model(create_model("unet", task="localization", **small), root / "loc.pt",
                     view_config=ViewConfig(views=4, mm_per_pixel=4.0).to_dict(),
                     code_version={"git": "abc123"})
    ide = save_model(create_model("unet", task="identification", **small), root / "ide.pt",
                     view_config=ViewConfig(views=6, mm_per_pixel=8.0).to_dict(),
                     train_config={"square_mm": 24.0})
    bundle = root / "networks.pt"
    bundle_networks(loc, ide, bundle, pipeline={"localizer_views": 6})
    export_networks(bundle, root / "weights", recipe="tiny-random",
                            training_data="nothing (random weights)")
    return bundle, root / "weights" / "default.safetensors"
