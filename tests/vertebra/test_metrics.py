"""VerSe identification rate and localisation error, the paper's variant, and `vertebra evaluate`."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import drrkit
from drrkit.errors import DrrkitError
from vertebra.cli import app
from vertebra.data import write_centroids
from vertebra.metrics import bootstrap, compare, evaluate, pool

SPINE = {lab: np.array([0.0, 0.0, -25.0 * n]) for n, lab in enumerate(range(14, 26))}  # T7..L6


def shifted(points, offset):
    return {k: np.asarray(v) + offset for k, v in points.items()}


def test_perfect_prediction():
    r = evaluate(shifted(SPINE, [1.0, 0, 0]), SPINE)
    assert r["id_rate"] == 1.0 and r["identified"] == r["n_gt"] == 12
    assert r["l_error"] == pytest.approx(1.0) and r["n_without_prediction"] == 0
    assert r["misses"] == [] and r["false_positives"] == [] and r["unmatched_predictions"] == []
    assert r["regions"]["thoracic"]["n_gt"] == 6 and r["regions"]["lumbar"]["n_gt"] == 6
    assert math.isnan(r["regions"]["cervical"]["id_rate"])
    assert r["id_rate_per_prediction"] == 1.0


def test_missing_predictions_count_against_verse_but_not_the_paper_variant():
    pred = {k: v for k, v in SPINE.items() if k not in (24, 25)}
    r = evaluate(pred, SPINE)
    assert r["id_rate"] == pytest.approx(10 / 12)
    assert r["misses"] == [24, 25] and r["n_without_prediction"] == 2
    assert r["l_error"] == 0.0 and r["n_localized"] == 10
    assert r["regions"]["lumbar"]["id_rate"] == pytest.approx(4 / 6)
    assert r["regions"]["lumbar"]["n_without_prediction"] == 2
    assert r["id_rate_per_prediction"] == 1.0  # the denominator is the 10 predictions


def test_extra_predictions_are_false_positives():
    pred = dict(SPINE)
    pred[1] = np.array([0.0, 0.0, 400.0])  # a far C1 that the ground truth does not have
    r = evaluate(pred, SPINE)
    assert r["id_rate"] == 1.0 and r["false_positives"] == [1]
    assert r["unmatched_predictions"] == [1]
    assert r["id_rate_per_prediction"] == pytest.approx(12 / 13)
    assert r["n_far_predictions"] == 1


def test_off_by_one_labels():
    pred = {k + 1 if k < 25 else 28: v for k, v in SPINE.items()}  # every label one too low
    pred.pop(28)
    r = evaluate(pred, SPINE)
    assert r["id_rate"] == 0.0 and r["hits"] == []
    # each ground truth is 25 mm from its same-label prediction (the neighbour's position)
    assert r["l_error"] == pytest.approx(25.0)
    assert r["n_without_prediction"] == 1  # T7 (14): no prediction carries it
    # the label-15 prediction sits on T7 (14), which no prediction carries, so VerSe's
    # search (labels in both files) finds 15 itself, 25 mm away: outside the radius
    assert r["vertebrae"][15]["nearest_gt_label"] == 15
    assert r["vertebrae"][16]["nearest_gt_label"] == 15 and not r["vertebrae"][16]["identified"]
    assert r["id_rate_per_prediction"] == 0.0


def test_verse_rule_the_predictions_nearest_ground_truth():
    """VerSe's get_hits: the label-v prediction's nearest ground truth must be v."""
    # C4 predicted 9 mm below its truth, nearer C5's truth (7 mm): C4 missed, C5 right
    gt = {4: np.zeros(3), 5: np.array([0, 0, -16.0])}
    r = evaluate({4: np.array([0, 0, -9.0]), 5: np.array([0, 0, -16.0])}, gt)
    assert r["hits"] == [5] and r["misses"] == [4]
    assert r["vertebrae"][4]["nearest_gt_label"] == 5
    assert r["vertebrae"][4]["distance"] == pytest.approx(9.0)
    assert r["l_error"] == pytest.approx(4.5)  # (9 + 0) / 2: distance to the same label
    # a predicted label the ground truth lacks plays no part, however near it lies
    gt = {20: np.zeros(3), 21: np.array([0, 0, -30.0])}
    pred = {20: np.array([8.0, 0, 0]), 22: np.array([0, 3.0, 0]), 21: np.array([0, 0, -30.0])}
    r = evaluate(pred, gt)
    assert r["hits"] == [20, 21] and r["false_positives"] == [22]
    assert r["unmatched_predictions"] == [22]


def test_radius_is_inclusive_as_in_verse():
    gt = {20: np.zeros(3)}
    assert evaluate({20: [20.0, 0, 0]}, gt)["id_rate"] == 1.0
    assert evaluate({20: [20.001, 0, 0]}, gt)["id_rate"] == 0.0
    assert evaluate({20: [20.001, 0, 0]}, gt)["l_error"] == pytest.approx(20.001)
    assert evaluate({20: [20.001, 0, 0]}, gt, radius_mm=25)["id_rate"] == 1.0


def test_t13_l6_regions_and_ignored_labels():
    gt = {19: [0, 0, 0], 28: [0, 0, -25], 20: [0, 0, -50], 25: [0, 0, -75], 26: [0, 0, -100]}
    pred = {19: [0, 0, 0], 28: [0, 0, -25], 20: [0, 0, -50], 25: [0, 0, -75], 27: [0, 0, -120]}
    r = evaluate(pred, gt)
    assert r["n_gt"] == 4 and r["id_rate"] == 1.0
    assert r["regions"]["thoracic"]["n_gt"] == 2 and r["regions"]["lumbar"]["n_gt"] == 2
    assert r["vertebrae"][28]["name"] == "T13" and r["vertebrae"][25]["name"] == "L6"
    assert r["ignored_labels"] == [26, 27]


def test_empty_inputs():
    r = evaluate({}, SPINE)
    assert r["id_rate"] == 0.0 and r["n_without_prediction"] == 12 and math.isnan(r["l_error"])
    assert math.isnan(r["id_rate_per_prediction"])
    r = evaluate(SPINE, {})
    assert math.isnan(r["id_rate"]) and r["false_positives"] == sorted(SPINE)
    assert r["id_rate_per_prediction"] == 0.0


def test_pool_counts_vertebrae_not_scans():
    a = evaluate(SPINE, SPINE)                                   # 12 / 12
    b = evaluate({20: [0, 0, 0]}, {20: [0, 0, 0], 21: [0, 0, -30]})  # 1 / 2
    p = pool([a, b])
    assert p["n_scans"] == 2 and p["n_gt"] == 14 and p["identified"] == 13
    assert p["id_rate"] == pytest.approx(13 / 14) and p["n_without_prediction"] == 1
    assert p["id_rate_per_prediction"] == 1.0
    with pytest.raises(DrrkitError):
        pool([])


def test_identified_error_leaves_out_mislabelled_vertebrae():
    gt = {20: [0, 0, 0], 21: [0, 0, -30], 22: [0, 0, -60], 23: [0, 0, -90]}
    pred = {20: [0, 0, 1], 21: [0, 3, -30], 22: [0, 0, -90], 23: [0, 0, -60]}  # 22/23 swapped
    e = pool([evaluate(pred, gt)])
    assert e["l_error"] == pytest.approx((1 + 3 + 30 + 30) / 4)
    assert e["identified_error"] == {"n": 2, "mean": 2.0, "median": 2.0, "q25": 1.5,
                                     "q75": 2.5, "within_2mm": 0.5}
    empty = pool([evaluate({}, gt)])["identified_error"]
    assert empty["n"] == 0 and np.isnan(empty["median"]) and np.isnan(empty["mean"])
    # with every label right, the identified mean is l_error itself
    right = pool([evaluate({20: [0, 0, 1], 21: [0, 3, -30]}, {20: [0, 0, 0], 21: [0, 0, -30]})])
    assert right["identified_error"]["mean"] == pytest.approx(right["l_error"]) == 2.0


def _scan(found: int, total: int, offset_mm: float = 1.0) -> dict:
    """One scan's result: ``total`` vertebrae, the first ``found`` predicted ``offset_mm`` off."""
    gt = {lab: SPINE[lab] for lab in list(SPINE)[:total]}
    return evaluate({lab: gt[lab] + [offset_mm, 0, 0] for lab in list(gt)[:found]}, gt)


def test_bootstrap_of_one_vertebra_scans_is_the_binomial():
    """S scans of one vertebra each: a resample's id rate is Binomial(S, p) / S exactly."""
    from scipy import stats

    scans = [_scan(1, 1)] * 90 + [_scan(0, 1)] * 10
    ci = bootstrap(scans, samples=20000)
    expected = stats.binom.ppf([0.025, 0.975], 100, 0.9) / 100
    np.testing.assert_allclose(ci["id_rate"], expected, atol=0.0101)
    assert ci["l_error"] == [1.0, 1.0]  # every same-label prediction is 1 mm off
    assert pool(scans)["interval"]["id_rate"] == bootstrap(scans)["id_rate"]  # seeded


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6), st.floats(0.0, 15.0)),
                min_size=1, max_size=12))
def test_bootstrap_interval_lies_between_the_scans_own_rates(rows):
    """A resample's pooled rate is a weighted mean of scan rates: within their range."""
    scans = [_scan(min(f, t), t, d) for f, t, d in rows]
    ci = bootstrap(scans, samples=200)
    rates = [r["id_rate"] for r in scans]
    lo, hi = ci["id_rate"]
    assert min(rates) - 1e-12 <= lo <= hi <= max(rates) + 1e-12
    errors = [r["l_error"] for r in scans if not math.isnan(r["l_error"])]
    if errors:
        assert min(errors) - 1e-9 <= ci["l_error"][0] <= ci["l_error"][1] <= max(errors) + 1e-9
    else:
        assert all(math.isnan(x) for x in ci["l_error"])


def test_compare_is_paired():
    base = [_scan(10, 12), _scan(3, 5), _scan(7, 7), _scan(0, 4)] * 3
    same = compare(base, base)
    assert same["id_rate"] == 0.0 and same["id_rate_interval"] == [0.0, 0.0]
    # one more vertebra found in every scan but the complete ones: +9 of 84
    better = [_scan(f, t) for f, t in [(11, 12), (4, 5), (7, 7), (1, 4)] * 3]
    diff = compare(better, base)
    total = sum(r["n_gt"] for r in base)
    assert diff["id_rate"] == pytest.approx(9 / total)
    assert 0 < diff["id_rate_interval"][0] <= diff["id_rate"] <= diff["id_rate_interval"][1]
    with pytest.raises(DrrkitError, match="same scans"):
        compare(base, base[:-1])
    with pytest.raises(DrrkitError, match="same scans"):
        compare(base, [_scan(1, 3)] * len(base))
    with pytest.raises(DrrkitError, match="samples"):
        bootstrap(base, samples=0)


@pytest.mark.parametrize(
    "pred, gt, match",
    [([1, 2], SPINE, "mapping"), ({20: [np.nan, 0, 0]}, SPINE, "finite"),
     ({20: [0, 0]}, SPINE, "3 numbers"), ({"L1": [0, 0, 0]}, SPINE, "not an integer"),
     ({20: [0, 0, 0], "20": [0, 0, 1]}, SPINE, "more than once")],
)
def test_bad_input(pred, gt, match):
    with pytest.raises(DrrkitError, match=match):
        evaluate(pred, gt)
    with pytest.raises(DrrkitError, match="radius"):
        evaluate(SPINE, SPINE, radius_mm=0)


# ---------------------------------------------------------------------- CLI
@pytest.fixture()
def files(tmp_path):
    direction = np.array([[0, 0, 1], [0, -1, 0], [-1, 0, 0]], float)
    ct = drrkit.Volume(np.zeros((30, 20, 10), np.float32), spacing=(0.9, 1.2, 3.0),
                       origin=(5.0, 10.0, -200.0), direction=direction)
    ct.save(tmp_path / "ct.nii.gz")
    base = ct.center
    gt = {19: base + [0, 0, 25], 20: base, 21: base + [0, 0, -25]}
    pred = {19: base + [0, 0, 26], 20: base + [0, 2, 0], 22: base + [0, 0, -24]}
    write_centroids(tmp_path / "gt.json", gt, ct)
    write_centroids(tmp_path / "pred.json", pred, ct)
    write_centroids(tmp_path / "gt19.json", gt, ct, format="verse19")
    write_centroids(tmp_path / "pred19.json", pred, ct, format="verse19")
    return tmp_path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_evaluate_json_matches_the_api(files):
    res = run("evaluate", files / "pred.json", files / "gt.json", "--image", files / "ct.nii.gz",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["hits"] == [19, 20] and out["misses"] == [21] and out["false_positives"] == [22]
    assert out["id_rate"] == pytest.approx(2 / 3)
    assert out["l_error"] == pytest.approx(1.5, abs=1e-2)  # (1 + 2) / 2; L2 has no prediction
    assert out["n_without_prediction"] == 1
    # the 2019 format needs no image: distances are in mm already
    res19 = run("evaluate", files / "pred19.json", files / "gt19.json", "--format", "verse19",
                "--pred-format", "verse19", "--json")
    assert res19.exit_code == 0, res19.output
    assert json.loads(res19.stdout)["l_error"] == pytest.approx(out["l_error"], abs=1e-2)


def test_cli_evaluate_format_is_the_ground_truths(files):
    """--format verse19 reads only the ground truth so; the prediction stays verse20 (what
    vertebra label writes) unless --pred-format says otherwise."""
    image = ("--image", files / "ct.nii.gz", "--json")
    both20 = json.loads(run("evaluate", files / "pred.json", files / "gt.json", *image).stdout)
    res = run("evaluate", files / "pred.json", files / "gt19.json", "--format", "verse19",
              *image)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["hits"] == both20["hits"] == [19, 20]
    assert out["l_error"] == pytest.approx(both20["l_error"], abs=1e-2)
    res = run("evaluate", files / "pred19.json", files / "gt.json", "--pred-format", "verse19",
              *image)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["l_error"] == pytest.approx(both20["l_error"], abs=1e-2)
    # without --image, a verse20 prediction cannot be put in mm
    res = run("evaluate", files / "pred.json", files / "gt19.json", "--format", "verse19")
    assert res.exit_code == 2 and "--pred-format verse20" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_evaluate_folders_take_the_prediction_format(files):
    """Folder mode reads --format for the ground truth and --pred-format for predictions."""
    gt, pred = files / "gt_dir", files / "pred_dir"
    gt.mkdir()
    pred.mkdir()
    (files / "ct.nii.gz").rename(gt / "sub-a_ct.nii.gz")
    (files / "gt19.json").rename(gt / "sub-a_seg-subreg_ctd.json")
    (files / "pred19.json").rename(pred / "sub-a_ctd.json")
    single = run("evaluate", files / "pred.json", files / "gt.json", "--image",
                 gt / "sub-a_ct.nii.gz", "--json")
    res = run("evaluate", pred, gt, "--format", "verse19", "--pred-format", "verse19",
              "--json")
    assert res.exit_code == 0, res.output
    pooled = json.loads(res.stdout)["pooled"]
    assert pooled["l_error"] == pytest.approx(json.loads(single.stdout)["l_error"], abs=1e-2)
    res = run("evaluate", pred, gt, "--pred-format", "v3")
    assert res.exit_code == 2 and "unknown centroid format 'v3'" in res.stderr


def test_cli_evaluate_table(files):
    res = run("evaluate", files / "pred.json", files / "gt.json", "--image", files / "ct.nii.gz")
    assert res.exit_code == 0, res.output
    assert "thoracic" in res.stdout and "lumbar" in res.stdout and "66.67" in res.stdout
    assert "misses: L2" in res.stdout and "paper-code variant" in res.stdout


def test_cli_help_lists_evaluate():
    res = run("--help")
    assert res.exit_code == 0 and "evaluate" in res.stdout


@pytest.mark.parametrize(
    "make_args, match",
    [(lambda d: ["evaluate", d / "missing.json", d / "gt.json", "--image", d / "ct.nii.gz"],
      "no such centroid file"),
     (lambda d: ["evaluate", d / "pred.json", d / "gt.json"], "need --image"),
     (lambda d: ["evaluate", d / "pred.json", d / "gt.json", "--image", d / "nope.nii.gz"],
      "no such image"),
     (lambda d: ["evaluate", d / "pred.json", d / "gt.json", "--format", "v3"],
      "unknown centroid format"),
     (lambda d: ["evaluate", d / "bad.json", d / "gt.json", "--image", d / "ct.nii.gz"],
      "not valid JSON"),
     (lambda d: ["evaluate", d / "pred.json", d / "gt.json", "--image", d / "ct.nii.gz",
                 "--radius", "-1"], "radius"),
     (lambda d: ["evaluate", d / "nohead.json", d / "gt.json", "--image", d / "ct.nii.gz"],
      "pass --direction"),
     (lambda d: ["evaluate", d / "pred19.json", d / "lps19.json", "--format", "verse19",
                 "--pred-format", "verse19"], "different orientations"),
     (lambda d: ["evaluate", d / "pred.json", d / "gt.json", "--pred-format", "v3"],
      "unknown centroid format 'v3' (--pred-format)")],
)
def test_cli_bad_input_is_one_line_exit_2(files, make_args, match):
    (files / "bad.json").write_text("{oops")
    (files / "nohead.json").write_text('[{"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    (files / "lps19.json").write_text('[{"direction": "LPS"}, {"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    res = run(*make_args(files))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and match in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_cli_direction_option_for_headerless_files(files):
    (files / "nohead.json").write_text('[{"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    res = run("evaluate", files / "nohead.json", files / "gt.json", "--image",
              files / "ct.nii.gz", "--direction", "PIR", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_pred"] == 1
