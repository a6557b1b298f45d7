"""``benchmarks/pipeline_replay.py``: its settings parser, and a replayed labelling equals
the labelling it stored (oracle networks on a phantom)."""

from __future__ import annotations

import numpy as np
import pytest

import drrkit
from vertebra.data.phantom import make_spine_phantom
from vertebra.pipeline import PipelineConfig, label_ct
from vertebra.targets import make_targets
from vertebra.views import ViewConfig


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("pipeline_replay")


def test_parse_config(script):
    assert script.parse_config("chain:chain_weight=3,chain_cost=0.8") == (
        "chain", {"chain_weight": 3, "chain_cost": 0.8})
    assert script.parse_config("before:chain_weight=none") == ("before", {"chain_weight": None})
    assert script.parse_config("shipped:") == ("shipped", {})
    for bad in ("no-colon", ":chain_weight=3"):
        with pytest.raises(SystemExit):
            script.parse_config(bad)


def test_replayed_outputs_label_as_the_networks_did(script):
    ph = make_spine_phantom(0, size="small")
    volume = ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data))
    views = ViewConfig(views=6, mm_per_pixel=2.0)
    targets = make_targets(ph.centroids, views.geometry(volume), volume)
    probs = np.eye(27, dtype=np.float32)[targets.id_maps].transpose(0, 3, 1, 2).copy()
    config = PipelineConfig(chain_weight=3.0)
    loc = script._Recorder(lambda x: targets.heatmaps)
    ident = script._Recorder(lambda x: probs)
    direct = label_ct(volume, loc, ident, views=views, config=config, backend="cpu")
    replayed = label_ct(volume, script._replay(loc.output), script._replay(ident.output),
                        views=views, config=config, backend="cpu")
    assert direct.centroids().keys() == replayed.centroids().keys() == ph.centroids.keys()
    for k, v in direct.centroids().items():
        np.testing.assert_array_equal(v, replayed.centroids()[k])


def test_real_cases_are_named_or_all(script):
    every = script.real_cases(None)
    assert "chest" in every and "tptbox" in every
    assert script.real_cases("chest, tptbox") == ["chest", "tptbox"]
    assert script.real_cases("none") == []
    with pytest.raises(SystemExit, match="no case"):
        script.real_cases("chest,lung")
