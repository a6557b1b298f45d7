"""`vertebra demo` plumbing at a tiny size (the accuracy is measured by the demo itself)."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from drrkit.errors import DrrkitError
from vertebra.cli import app
from vertebra.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_tiny_demo_runs_every_step_and_reuses_outputs(tmp_path, monkeypatch):
    # one step leaves the localizer's heatmaps near 0.5 everywhere: thresholds above that
    # keep the labelling of the held-out CT from matching thousands of noise peaks (the
    # pipeline's own tests cover matching; here the outputs and the score are the point)
    config = DemoConfig(train_phantoms=2, identifier_phantoms=3, orbits=1, held_out=1,
                        pretrain_steps=1,
                        pretrain_batch=2, localizer_iterations=1, identifier_iterations=1,
                        pictures=False, peak_threshold=0.95, extend_threshold=0.9)
    lines = []
    result = run_demo(tmp_path, config, log=lines.append, progress=False)
    assert result.pooled["n_scans"] == 1 and result.pooled["n_gt"] > 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["seconds"]) == {"data", "pretrain", "localizer", "identifier", "label"}
    assert report["targets"]["met"] is False or result.meets_targets
    assert report["machine"]["device"] == "cpu" and report["machine"]["cores"] >= 1
    assert (tmp_path / "models" / "networks.pt").is_file()
    from vertebra.models import read_checkpoint
    from vertebra.pipeline import load_networks

    # as in the paper's code: only the identifier starts from the SimSiam encoder
    inits = {name: read_checkpoint(tmp_path / "models" / f"{name}.pt")["train_config"]["init"]
             for name in ("localizer", "identifier")}
    assert inits == {"localizer": "none",
                     "identifier": f"simsiam:{tmp_path / 'models' / 'simsiam.pt'}"}

    settings = load_networks(tmp_path / "models" / "networks.pt", device="cpu").settings
    assert config.pipeline_settings() == {
        "localizer_views": 20, "peak_threshold": 0.95, "extend_threshold": 0.9,
        "allow_t13": False}
    assert config.pipeline_settings().items() <= settings.items()
    data = tmp_path / "data"
    assert [len(list((data / f"train_{t}").glob("*.npz"))) for t in
            ("localization", "identification")] == [2, 3]
    assert list((tmp_path / "labels").glob("*/*_ctd.json"))
    # a second run reuses data and models (its labelling, which the first run covered,
    # is replaced to keep the test short)
    from vertebra import demo

    labelled = []

    def label_folder(networks, held_dir, labels, **options):
        labelled.append(networks)
        return result.pooled, result.cases, result.labelling_seconds

    monkeypatch.setattr(demo, "label_folder", label_folder)
    lines.clear()
    run_demo(tmp_path, config, log=lines.append, progress=False)
    assert sum("reusing" in line for line in lines) >= 3
    assert labelled == [tmp_path / "models" / "networks.pt"]


def test_demo_config_and_cli_errors(tmp_path):
    with pytest.raises(DrrkitError):
        DemoConfig(train_phantoms=10, held_out_start=5)
    with pytest.raises(DrrkitError, match="overlap"):
        DemoConfig(identifier_phantoms=4000)
    assert DemoConfig(identifier_phantoms=None).phantoms("identification") == 40
    with pytest.raises(DrrkitError, match="pretrained names tasks"):
        DemoConfig(pretrained=("identifier",))
    assert DemoConfig(pretrained=["localization"]).pretrained == ("localization",)
    with pytest.raises(DrrkitError, match="identifier_voxel_scale"):
        DemoConfig(identifier_voxel_scale=0.5)
    coarse = DemoConfig(identifier_voxel_scale=2)
    assert coarse.phantom_options("identification") == {"voxel_scale": 2.0}
    assert coarse.phantom_options("localization") == {} == DemoConfig(
        identifier_voxel_scale=1).phantom_options("identification")
    thick = DemoConfig(thick_slice_share=0.5)
    assert thick.phantom_options("localization") == {"thick_slice_share": 0.5}
    assert thick.phantom_options("identification")["thick_slice_share"] == 0.5
    with pytest.raises(DrrkitError, match="thick_slice_share"):
        DemoConfig(thick_slice_share=1.5)
    sagittal = DemoConfig(sagittal_share=0.3)
    assert sagittal.phantom_options("localization") == {"sagittal_share": 0.3}
    assert "sagittal_share" not in DemoConfig().phantom_options("localization")
    assert DemoConfig().pipeline_settings() == {
        "localizer_views": 20, "peak_threshold": 0.3, "extend_threshold": 0.15,
        "allow_t13": False}
    with pytest.raises(DrrkitError, match="sagittal_share"):
        DemoConfig(sagittal_share=-0.1)
    assert DemoConfig(localizer_views=None, peak_threshold=None, extend_threshold=None,
                      allow_t13=None).pipeline_settings() == {}
    # the real-ct recipe stores the settings its networks were chosen with
    from vertebra.pipeline import PipelineConfig

    real = DemoConfig.real_ct().pipeline_settings()
    assert real["tolerance_mm"] == 8.0 and real["mirror"] is True
    assert PipelineConfig(**real).mirror and PipelineConfig(**real).chain_weight == 3.0
    assert PipelineConfig(**real).complete_body and not PipelineConfig().complete_body
    assert PipelineConfig(**real).dense_hu == 1600.0 and PipelineConfig().dense_hu is None
    # the training seed reaches both networks' TrainConfig; seed 0 is TrainConfig's own
    assert DemoConfig(seed=3).train_changes() == {"seed": 3}
    assert "seed" not in DemoConfig().train_changes()
    with pytest.raises(DrrkitError, match="seed must be >= 0"):
        DemoConfig(seed=-1)
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "file")])
    assert res.exit_code == 2 and "not a folder" in res.stderr
    with pytest.raises(DrrkitError, match="unknown device"):
        run_demo(tmp_path / "d", DemoConfig(device="tpu"), log=lambda line: None)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "gpu"])
    assert res.exit_code == 2 and "unknown device 'gpu'" in res.stderr
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seed", "-1"])
    assert res.exit_code == 2 and "seed must be >= 0" in res.stderr
    assert not (tmp_path / "d").exists()


def test_demo_on_a_missing_gpu_fails_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA GPU" in res.stderr, res.output
    assert not (tmp_path / "d" / "data").exists()


def test_prepare_data_renders_an_older_cache_version_again(tmp_path, monkeypatch):
    """Training caches from before the cache version bump are rendered again, not reused."""
    from vertebra import demo
    from vertebra.training import rendered

    folders = [tmp_path / f"train_{t}" for t in ("localization", "identification")]
    for folder in folders:
        folder.mkdir()
        (folder / "cache.json").write_text(json.dumps(
            {"format": rendered.CACHE_FORMAT, "version": 1, "cases": ["phantom0000"]}))
    (tmp_path / "held_out").mkdir()
    asked = []

    def prerender_many(source, outputs, **options):
        asked.extend(outputs)
        return {out: f"cache {out.name}" for out in outputs}

    monkeypatch.setattr(rendered, "prerender_many", prerender_many)
    lines = []
    caches, _ = demo.prepare_data(tmp_path, DemoConfig(), log=lines.append)
    assert sorted(asked) == sorted(folders)
    assert caches == {t: f"cache train_{t}" for t in ("localization", "identification")}
    assert sum("another vertebra version" in line for line in lines) == 2


def test_prepare_data_refuses_a_cache_of_other_phantoms(tmp_path, monkeypatch):
    """A demo folder rendered with other scan shares is not silently reused."""
    from vertebra import demo
    from vertebra.training import rendered
    from vertebra.training.sources import PhantomSource

    config = DemoConfig(train_phantoms=2, identifier_phantoms=2, held_out=1)
    folder = tmp_path / "train_localization"
    folder.mkdir()
    made_by = PhantomSource([0], c1_share=0.5).describe()  # not this config's share
    (folder / "cache.json").write_text(json.dumps(
        {"format": rendered.CACHE_FORMAT, "version": rendered.CACHE_VERSION,
         "cases": ["phantom0000", "phantom0001"], "source": made_by}))
    monkeypatch.setattr(rendered, "prerender_many", lambda *a, **k: pytest.fail("rendered"))
    with pytest.raises(DrrkitError, match="other settings.*another --out"):
        demo.prepare_data(tmp_path, config, log=lambda line: None)


def test_prepare_data_crops_each_network_as_configured(tmp_path, monkeypatch):
    """``localizer_crops`` gives the localizer's cache its own crops; the identifier keeps
    ``crops``; the crops' shape settings reach the source."""
    from vertebra import demo
    from vertebra.training import rendered

    asked = {}

    def prerender_many(source, outputs, *, counts, **options):
        for out in outputs:
            asked[out.name] = (source.describe(), counts[out])
        return {out: f"cache {out.name}" for out in outputs}

    monkeypatch.setattr(rendered, "prerender_many", prerender_many)
    (tmp_path / "held_out").mkdir()
    config = DemoConfig(train_phantoms=3, identifier_phantoms=4, held_out=1,
                        localizer_crops=1, crop_min_vertebrae=2, crop_reach=(0.1, 0.9))
    demo.prepare_data(tmp_path, config, log=lambda line: None)
    loc, n_loc = asked["train_localization"]
    ident, n_ident = asked["train_identification"]
    assert (n_loc, n_ident) == (3 * 2, 4)  # three phantoms whole and cut; four whole
    assert loc["kind"] == "cropped" and loc["crops"] == 1 and loc["min_vertebrae"] == 2
    assert loc["reach"] == [0.1, 0.9] and ident["kind"] == "phantoms"
    assert config.crops_of("localization") == 1 and config.crops_of("identification") == 0
    # complete_body: both networks train on the views the pipeline labels with it
    asked.clear()
    (tmp_path / "completed" / "held_out").mkdir(parents=True)
    demo.prepare_data(tmp_path / "completed", replace(config, complete_body=True),
                      log=lambda line: None)
    for name, (made, _) in asked.items():
        assert made["kind"] == "completed", name
    assert asked["train_localization"][0]["source"] == loc
    assert asked["train_identification"][0]["source"] == ident
    assert DemoConfig(crops=2).crops_of("localization") == 2
    for bad, word in (({"localizer_crops": -1}, "localizer_crops"),
                      ({"crop_min_vertebrae": 0}, "crop_min_vertebrae"),
                      ({"crop_reach": (0.6, 0.4)}, "crop_reach"),
                      ({"crop_reach": (0.0, 0.5)}, "crop_reach")):
        with pytest.raises(DrrkitError, match=word):
            DemoConfig(**bad)


def test_an_ensemble_run_trains_each_seed_on_shared_phantoms_and_labels_the_join(
        tmp_path, monkeypatch, tiny_networks):
    import shutil

    from vertebra import demo
    from vertebra.demo import DemoResult, run_ensemble
    from vertebra.pipeline import load_networks

    bundle, _ = tiny_networks
    runs, labelled = [], []

    def run_demo(out, config, *, log, progress, data):  # a member: its bundle only
        runs.append((out, config.seed, data))
        (out / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle, out / "models" / "networks.pt")
        return DemoResult({"n_scans": 1}, {}, {"localizer": 2.0, "identifier": 1.0}, {}, out)

    def label_folder(networks, held_dir, labels, **options):
        labelled.append((networks, held_dir, labels))
        return {"n_scans": 1, "id_rate": 1.0, "l_error": 1.0}, {}, {}

    monkeypatch.setattr(demo, "run_demo", run_demo)
    monkeypatch.setattr(demo, "label_folder", label_folder)
    config = replace(DemoConfig(), seed=5)
    result, joined = run_ensemble(tmp_path, config, 3, log=lambda line: None)
    # member 0 is the folder itself; the others beside its data, each with the next seed
    assert runs == [(tmp_path, 5, tmp_path / "data"),
                    (tmp_path / "member-1", 6, tmp_path / "data"),
                    (tmp_path / "member-2", 7, tmp_path / "data")]
    assert joined == tmp_path / "models" / "ensemble.pt"
    nets = load_networks(joined, device="cpu")
    assert len(nets.localizer.members) == 3 == len(nets.identifier.members)
    assert nets.settings.items() >= config.pipeline_settings().items()
    assert labelled == [(joined, tmp_path / "data" / "held_out", tmp_path / "labels-ensemble")]
    report = json.loads((tmp_path / "report-ensemble.json").read_text())
    assert report["seconds"]["member-2"] == 3.0 and result.meets_targets
    # a member labelled after its networks were trained, by the same settings, is reused
    member = replace(config, seed=6)
    demo._write_report(tmp_path / "member-1" / "report.json", member,
                       DemoResult({"n_scans": 1, "id_rate": 1.0, "l_error": 1.0}, {},
                                  {"label": 4.0}, {}), "cpu")
    runs.clear()
    run_ensemble(tmp_path, config, 3, log=lambda line: None)
    assert [seed for _, seed, _ in runs] == [5, 7]
    assert demo.finished_run(tmp_path / "member-1", member).seconds == {"label": 4.0}
    assert demo.finished_run(tmp_path / "member-1", replace(member, threads=1)) is not None
    assert demo.finished_run(tmp_path / "member-1", replace(member, seed=7)) is None
    assert demo.finished_run(tmp_path / "member-2", replace(member, seed=7)) is None
    # one member is an ordinary run, labelled by run_demo itself
    runs.clear()
    assert run_ensemble(tmp_path / "one", config, 1, log=lambda line: None)[1] == (
        tmp_path / "one" / "models" / "networks.pt")
    assert len(runs) == 1 and len(labelled) == 2
    with pytest.raises(DrrkitError, match="members"):
        run_ensemble(tmp_path / "none", config, 0)
    assert not (tmp_path / "none").exists()
