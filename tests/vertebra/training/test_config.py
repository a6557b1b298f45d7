"""Training configuration: presets, validation, decoder widths, the label chains."""

import json
from dataclasses import replace

import pytest

from drrkit.errors import DrrkitError
from vertebra import labels as L
from vertebra.training.config import AugmentConfig, TrainConfig, parse_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


def test_chain_classes():
    with_t13, without = L.chain_classes(True), L.chain_classes(False)
    assert with_t13.tolist() == list(range(1, 27))
    assert len(without) == 25 and L.by_name("T13").class_index not in without
    i = without.tolist().index(L.by_name("T12").class_index)
    assert without[i + 1] == L.by_name("L1").class_index  # T12 -> L1 consecutive
    assert without[-1] == with_t13[-1] == L.by_name("L6").class_index


def test_config_round_trip_and_validation():
    cfg = TrainConfig.cpu_demo("identification", iterations=7)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig().iterations == 15000 and TrainConfig().lr_step == 4000
    assert parse_init("simsiam:/x.pt") == ("simsiam", "/x.pt")
    for bad in ({"task": "segment"}, {"crop_size": 100}, {"init": "bogus:"}, {"lr": 0},
                {"background_weight": 0}):
        with pytest.raises(DrrkitError):
            TrainConfig(**bad)
    with pytest.raises(DrrkitError):
        AugmentConfig(noise=(0.1, 0.0))


def test_config_decoder_channels_build_that_decoder():
    from vertebra.training.trainer import build_model

    cfg = TrainConfig.cpu_demo("localization", decoder_channels=[32, 16, 16, 8, 8])
    assert cfg.decoder_channels == (32, 16, 16, 8, 8)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = build_model(replace(cfg, init="none"))
    assert model.config["decoder_channels"] == [32, 16, 16, 8, 8]
    assert build_model(TrainConfig.cpu_demo("localization")).config["decoder_channels"] == [
        256, 128, 64, 32, 16]
    with pytest.raises(DrrkitError, match="decoder_channels"):
        TrainConfig(decoder_channels=(64, 0))
