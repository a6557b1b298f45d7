"""``benchmarks/kyphosis.py``: the upper thoracic lean (closed form) and its scoring."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("kyphosis")


def test_lean_is_the_sagittal_angle_from_world_z(script):
    t2 = np.array([3.0, 40.0, -20.0])
    assert script.lean_deg(t2 + [0, 0, 18], t2) == pytest.approx(0.0)
    assert script.lean_deg(t2 + [0, -10, 10], t2) == pytest.approx(45.0)  # anterior
    assert script.lean_deg(t2 + [0, 10, 10], t2) == pytest.approx(45.0)  # posterior
    # a sideways (x) offset is no sagittal lean
    assert script.lean_deg(t2 + [7, -np.sqrt(3) * 10, 10], t2) == pytest.approx(60.0)


def test_score_groups_cases_by_lean_and_measures_t1_t4(script, tmp_path):
    from vertebra.data import verse
    from vertebra.data.dataset import VerseDataset
    from vertebra.data.phantom import write_phantoms

    gt = tmp_path / "gt"
    write_phantoms(gt, [4], levels=("C7", "T5"), size="small")
    case = VerseDataset(gt, require="centroids").cases[0]
    truth = case.centroids()
    shifted = {k: v + np.array([0.0, 0.0, 3.0]) for k, v in truth.items()}  # 3 mm up
    labels = tmp_path / "labels" / case.name
    labels.mkdir(parents=True)
    verse.write_centroids(labels / f"{case.name}_ctd.json", shifted, case.ct)
    out = script.score([(tmp_path / "labels", gt)])
    (row,) = out["cases"]
    assert row["identified"] == row["n_gt"] == len(truth)
    assert row["upper_error_mm"] == pytest.approx(3.0, abs=1e-3)
    assert row["lean_deg"] == pytest.approx(script.lean_deg(truth[8], truth[9]), abs=0.05)
    (group,) = out["groups"].values()
    assert group["scans"] == 1 and group["id_rate"] == 1.0
