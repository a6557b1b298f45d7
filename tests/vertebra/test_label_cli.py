"""`vertebra label` and folder `vertebra evaluate`: plumbing with a tiny random checkpoint,
written files checked against the ground truth with oracle networks, and bad input."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from drrkit.dense import DENSE_HU
from drrkit.errors import DrrkitError
from vertebra import labels as vl
from vertebra import pipeline
from vertebra.chain import WEIGHT
from vertebra.cli import app
from vertebra.data.phantom import write_phantoms
from vertebra.data.verse import read_centroids
from vertebra.targets import make_targets
from vertebra.views import ViewConfig

runner = CliRunner()
VIEWS = ViewConfig(views=4, mm_per_pixel=4.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    write_phantoms(root / "phantoms", [0, 2], size="small", metal=False)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(data):
    import torch

    from vertebra.models import create_model, save_model

    torch.manual_seed(0)
    both = create_model("unet", encoder="resnet10t", task="both",
                        decoder_channels=[16, 16, 8, 8, 8])
    save_model(both, data / "both.pt", view_config=VIEWS.to_dict())
    loc = create_model("unet", encoder="resnet10t", task="localization",
                       decoder_channels=[16, 16, 8, 8, 8])
    save_model(loc, data / "loc.pt", view_config=VIEWS.to_dict())
    return data / "both.pt", data / "loc.pt"


def ct_of(data, name="phantom0000"):
    return data / "phantoms" / "rawdata" / f"sub-{name}" / f"sub-{name}_ct.nii.gz"


def test_label_one_ct_with_a_random_checkpoint(data, tiny_checkpoint):
    out = data / "out_one"
    res = runner.invoke(app, ["label", str(ct_of(data)), "--model", str(tiny_checkpoint[0]),
                              "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    stem = "sub-phantom0000"
    for suffix in ("_ctd.json", "_centroids.csv", "_label.json", "_views.png",
                   "_sagittal.png", "_coronal.png", "_seg-spheres.nii.gz", ".mrk.json"):
        assert (out / f"{stem}{suffix}").is_file(), suffix
    header = json.loads((out / f"{stem}_ctd.json").read_text())[0]
    assert header == {"direction": ["P", "I", "R"]}
    summary = json.loads((out / f"{stem}_label.json").read_text())
    assert summary["views"] == 4 and summary["status"] in ("ok", "no spine found")
    assert summary["pipeline"]["allow_t13"] is True  # the default
    assert set(summary["timings_s"]) == set(pipeline.STAGES)
    assert Image.open(out / f"{stem}_views.png").mode == "RGB"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    res = runner.invoke(app, ["label", str(ct_of(data)), "--model", str(tiny_checkpoint[0]),
                              "--out", str(data / "out_no_t13"), "--no-t13", "--mirror",
                              "--chain", "--complete-body", "--suppress-dense",
                              "--no-pictures"])
    assert res.exit_code == 0, res.output
    summary = json.loads((data / "out_no_t13" / f"{stem}_label.json").read_text())
    assert summary["pipeline"]["allow_t13"] is False
    assert summary["pipeline"]["mirror"] is True and not (out / f"{stem}_label.json").read_text(
        ).count('"mirror": true')
    assert summary["pipeline"]["chain_weight"] == WEIGHT
    assert summary["pipeline"]["complete_body"] is True
    assert summary["pipeline"]["dense_hu"] == DENSE_HU
    first = json.loads((out / f"{stem}_label.json").read_text())
    assert first["pipeline"]["chain_weight"] is None
    assert first["pipeline"]["complete_body"] is False and first["completed_body"] is False
    assert first["pipeline"]["dense_hu"] is None and first["dense_suppressed"] is False


def test_label_folder_with_oracle_networks_writes_the_truth(data, monkeypatch, tmp_path):
    """The files written (VerSe JSON in voxels, CSV in mm) hold the oracle's centroids."""
    from vertebra.data.dataset import VerseDataset

    truth = {c.name: (c.centroids(), c.load_ct()) for c in VerseDataset(data / "phantoms")}
    views = ViewConfig(views=6, mm_per_pixel=2.0)

    def networks(*args, **kwargs):
        cache = {}

        def maps(x):  # identify the case by the input's shape and contents
            key = float(x.sum())
            if key not in cache:
                for centroids, volume in truth.values():
                    g = views.geometry(volume)
                    if g.shape == x.shape and np.allclose(views.render(volume, g, "cpu"), x):
                        t = make_targets(centroids, g, volume)
                        eye = np.eye(vl.NUM_CLASSES, dtype=np.float32)
                        cache[key] = (t.heatmaps, eye[t.id_maps].transpose(0, 3, 1, 2))
            return cache[key]

        return pipeline.Networks(lambda x: maps(x)[0], lambda x: maps(x)[1], views, "cpu")

    monkeypatch.setattr(pipeline, "load_networks", networks)
    out = data / "out_batch"
    res = runner.invoke(app, ["label", str(data / "phantoms"), "--model", "unused.pt",
                              "--out", str(out), "--backend", "cpu"])
    assert res.exit_code == 0, res.output
    for name, (centroids, volume) in truth.items():
        got = read_centroids(out / name / f"{name}_ctd.json", ct_of(data, name[4:]))
        assert list(got) == list(centroids)
        for k in centroids:
            assert np.linalg.norm(got[k] - centroids[k]) < 1.0
        with open(out / name / f"{name}_centroids.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["name"] for r in rows] == [vl.name_of(k) for k in centroids]
        xyz = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
        np.testing.assert_allclose(xyz, np.array(list(got.values())), atol=2e-3)
        # each case's line says when its run holds no landmark to count from
        summary = json.loads((out / name / f"{name}_label.json").read_text())
        line = next(t for t in res.stdout.splitlines() if t.startswith(f"{name}:"))
        assert ("no landmark in view" in line) == (not summary["landmarks"]), line
    assert "no landmark in view" in res.stdout  # phantom 0 holds T1-T6 only
    # folder evaluation pools both cases: everything identified
    res = runner.invoke(app, ["evaluate", str(out), str(data / "phantoms"), "--json"])
    assert res.exit_code == 0, res.output
    pooled = json.loads(res.output)["pooled"]
    assert pooled["n_scans"] == 2 and pooled["id_rate"] == 1.0 and pooled["l_error"] < 1.0
    res = runner.invoke(app, ["evaluate", str(out), str(data / "phantoms")])
    assert res.exit_code == 0 and "all" in res.output and "bootstrap interval" in res.output
    # paired against an empty folder (nothing found): +100 points whichever scans are drawn
    empty = tmp_path / "nothing"
    empty.mkdir()
    res = runner.invoke(app, ["evaluate", str(out), str(data / "phantoms"), "--against",
                              str(empty), "--json"])
    assert res.exit_code == 0, res.output
    diff = json.loads(res.stdout)["against"]
    assert diff["id_rate"] == 1.0 and diff["id_rate_interval"] == [1.0, 1.0]
    res = runner.invoke(app, ["evaluate", str(out), str(data / "phantoms"), "--against",
                              str(empty)])
    assert res.exit_code == 0 and "id rate +100.00 points (+100.00, +100.00)" in res.stdout


def test_evaluate_folder_counts_missing_predictions(data, tmp_path):
    res = runner.invoke(app, ["evaluate", str(tmp_path), str(data / "phantoms"), "--json"])
    assert res.exit_code == 0
    pooled = json.loads(res.stdout)["pooled"]
    assert pooled["id_rate"] == 0.0 and pooled["n_pred"] == 0


def test_label_nan_voxels_warn_or_are_refused(data, tiny_checkpoint, tmp_path):
    """NaN in a float NIfTI (which SimpleITK reads as 0, water): a one-line warning with
    their count and air in their place, or with --nan raise one error line and exit 2."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(ct_of(data)))
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    values[:2] = np.nan  # two slices of padding
    padded = sitk.GetImageFromArray(values)
    padded.CopyInformation(image)
    path = tmp_path / "padded_ct.nii.gz"
    sitk.WriteImage(padded, str(path))
    count = f"{int(np.isnan(values).sum())} non-finite voxels"
    args = ["label", str(path), "--model", str(tiny_checkpoint[0]), "--device", "cpu",
            "--no-pictures"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    said = [line for line in res.stderr.splitlines() if "non-finite" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and count in said[0], said
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o2"), "--nan", "raise"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and count in errors[0], res.stderr
    assert not (tmp_path / "o2" / "padded_ctd.json").exists()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o3"), "--nan", "ignore"])
    assert res.exit_code == 2 and "unknown --nan" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["label", "missing.nii.gz", "--model", "x.pt", "--out", "o"], "no such file"),
    (["label", "CT", "--out", "o"], "no default networks are packaged"),
    (["label", "CT", "--model", "BOTH", "--localizer", "LOC", "--out", "o"], "either"),
    (["label", "CT", "--localizer", "LOC", "--out", "o"], "need a checkpoint"),
    (["label", "CT", "--model", "LOC", "--out", "o"], "localization network"),
    (["label", "CT", "--model", "TEXT", "--out", "o"], "not a torch checkpoint"),
    (["label", "CT", "--model", "BOTH", "--out", "o", "--correction", "x"], "correction"),
    (["label", "CT", "--model", "BOTH", "--out", "o", "--device", "tpu"], "device"),
    (["label", "CT", "--model", "BOTH", "--out", "o", "--views", "1"], "--views"),
    (["label", "TEXT", "--model", "BOTH", "--out", "o"], "TEXT"),
    (["evaluate", "EMPTY", "CT"], "folder"),
    (["evaluate", "TEXT", "TEXT", "--against", "EMPTY"], "give folders"),
])
def test_bad_input_is_one_line_and_exit_2(data, tiny_checkpoint, tmp_path, monkeypatch, args,
                                         message):
    from vertebra import weights

    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)  # no default networks packaged
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"CT": str(ct_of(data)), "BOTH": str(tiny_checkpoint[0]),
             "LOC": str(tiny_checkpoint[1]), "TEXT": str(text), "EMPTY": str(empty)}
    args = [names.get(a, a) for a in args]
    args = [str(tmp_path / a) if a in ("o", "missing.nii.gz") else a for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message.replace("TEXT", "notes.txt") in lines[0], res.stderr
    assert res.stderr == lines[0] + "\n", repr(res.stderr)  # nothing else, not a blank line
    assert "Traceback" not in res.output


def test_torch_adapter_batches_and_shares_one_forward(tiny_checkpoint):
    from vertebra.models import load_model

    model = load_model(tiny_checkpoint[0])
    loc = pipeline.TorchNetwork(model, "heatmap", batch_size=3)
    ide = pipeline.TorchNetwork(model, "probabilities", batch_size=3)
    x = np.random.default_rng(0).random((5, 64, 96)).astype(np.float32)
    heat = loc(x)
    assert model._vertebra_last[0] is x  # the identifier reuses this forward pass
    probs = ide(x)
    assert heat.shape == (5, 64, 96) and probs.shape == (5, vl.NUM_CLASSES, 64, 96)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    import torch

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x[4:5, None])).heatmap[0, 0].numpy()
    np.testing.assert_allclose(heat[4], ref, rtol=1e-4, atol=1e-5)


def test_load_networks_bundle_pairs_and_settings(tiny_checkpoint, tmp_path):
    from vertebra.models import create_model, load_model, save_model

    both, loc = tiny_checkpoint
    nets = pipeline.load_networks(localizer=loc, identifier=both, device="cpu")
    assert nets.views == VIEWS and nets.settings == {}
    bundle = tmp_path / "bundle.pt"
    pipeline.bundle_networks(loc, both, bundle)
    nets = pipeline.load_networks(bundle, device="cpu")
    assert nets.views == VIEWS
    x = np.random.default_rng(1).random((2, 32, 32)).astype(np.float32)
    ref = pipeline.TorchNetwork(load_model(loc), "heatmap", precision=nets.precision)(x)
    np.testing.assert_allclose(nets.localizer(x), ref, rtol=1e-5, atol=1e-6)
    # an identifier trained with other squares / DP weights passes them on
    ide = create_model("unet", encoder="resnet10t", task="identification",
                       decoder_channels=[16, 16, 8, 8, 8])
    trained = tmp_path / "ide.pt"
    save_model(ide, trained, view_config=VIEWS.to_dict(),
               train_config={"square_mm": 30.0, "alpha": 0.2, "beta": 0.7, "lr": 1.0})
    nets = pipeline.load_networks(localizer=loc, identifier=trained, device="cpu")
    assert nets.settings == {"square_mm": 30.0, "alpha": 0.2, "beta": 0.7}
    # an identifier trained on its own (coarser) views keeps them, also through a bundle
    other = tmp_path / "other_views.pt"
    coarse = ViewConfig(views=6, mm_per_pixel=2 * VIEWS.mm_per_pixel)
    save_model(ide, other, view_config=coarse.to_dict())
    nets = pipeline.load_networks(localizer=loc, identifier=other, device="cpu")
    assert nets.views == VIEWS and nets.identifier_views == coarse
    pipeline.bundle_networks(loc, other, bundle)
    nets = pipeline.load_networks(bundle, device="cpu")
    assert nets.views == VIEWS and nets.identifier_views == coarse
    # a bundle carries the pipeline settings it was made with, checked when it is written
    pipeline.bundle_networks(loc, trained, bundle, pipeline={"localizer_views": 20})
    nets = pipeline.load_networks(bundle, device="cpu")
    assert nets.settings == {"square_mm": 30.0, "alpha": 0.2, "beta": 0.7,
                             "localizer_views": 20}
    for bad in ({"localizer_views": 1}, {"no_such_setting": 1}):
        with pytest.raises(DrrkitError, match="localizer_views|unknown pipeline"):
            pipeline.bundle_networks(loc, trained, tmp_path / "bad.pt", pipeline=bad)
        assert not (tmp_path / "bad.pt").exists()
