"""The Python one-liner vertebra.label: default networks, outputs, settings, light import."""

import subprocess
import sys

import numpy as np
import pytest

import drrkit
import vertebra
from drrkit.errors import DrrkitError
from vertebra import weights
from vertebra.data.phantom import make_spine_phantom
from vertebra.pipeline import LabelResult, load_networks

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:no spine found")]


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "case_ct.nii.gz"
    make_spine_phantom(1, size="small", metal=False).ct.save(path)
    return path


def test_label_one_liner_with_the_default_networks(tiny_networks, ct_file, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv(weights.ENV_VAR, str(tiny_networks[1]))
    result = vertebra.label(ct_file, device="cpu", backend="cpu")
    assert isinstance(result, LabelResult) and result.status in ("ok", "no spine found")
    assert len(result.geometry) == 6  # the bundle's localizer_views setting
    for v in result.vertebrae:
        assert v.world.shape == (3,) and 0 <= v.confidence <= 1
    assert not list(tmp_path.iterdir())  # nothing written without out
    out = tmp_path / "labels"
    again = vertebra.label(str(ct_file), out, device="cpu", backend="cpu", pictures=False,
                           localizer_views=4)
    assert len(again.geometry) == 4
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case.mrk.json", "case_centroids.csv", "case_ctd.json", "case_label.json",
                     "case_seg-spheres.nii.gz"]


def test_label_a_volume_with_loaded_networks(tiny_networks, ct_file, tmp_path):
    nets = load_networks(tiny_networks[0], device="cpu")
    volume = drrkit.load_volume(ct_file)
    result = vertebra.label(volume, tmp_path, networks=nets, backend="cpu", pictures=False)
    assert (tmp_path / "ct_ctd.json").is_file()  # a Volume's outputs are named "ct"
    by_file = vertebra.label(ct_file, networks=nets, backend="cpu")
    np.testing.assert_array_equal(result.points, by_file.points)
    with pytest.raises(DrrkitError, match="unknown pipeline settings: no_such"):
        vertebra.label(volume, networks=nets, no_such=1)


def test_import_vertebra_stays_light():
    code = ("import sys, vertebra; vertebra.label; "
            "print(sorted(m for m in ('torch', 'timm', 'SimpleITK', 'vertebra.pipeline') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
