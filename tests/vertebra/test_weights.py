"""Networks files (vertebra.weights): export of a tiny random bundle, read-back, the default
networks (VERTEBRA_WEIGHTS, or none packaged), checksum refusal, and the CLI."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from drrkit.errors import DrrkitError
from vertebra import pipeline, weights
from vertebra.cli import app
from vertebra.views import ViewConfig
from vertebra.weights.export import export_networks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
VIEWS = ViewConfig(views=4, mm_per_pixel=4.0)
COARSE = ViewConfig(views=6, mm_per_pixel=8.0)


@pytest.fixture(scope="module")
def exported(tiny_networks):
    """(bundle, folder holding default.safetensors + default.json, its Record)."""
    bundle, path = tiny_networks
    return bundle, path.parent, weights.read_record(path)


def test_export_writes_a_compact_file_and_its_record(exported):
    from safetensors import safe_open

    bundle, folder, record = exported
    assert sorted(p.name for p in folder.iterdir()) == ["default.json", "default.safetensors"]
    stored = json.loads((folder / "default.json").read_text())
    assert stored == record.to_dict()
    assert record.recipe == "tiny-random" and record.commit == "abc123"  # from the bundle
    assert record.source == "networks.pt" and record.format == weights.FORMAT
    assert record.bytes == (folder / "default.safetensors").stat().st_size
    assert (folder / "default.safetensors").stat().st_mode & 0o044 == 0o044  # all may read
    assert record.sha256 == weights.sha256_of(folder / "default.safetensors")
    with safe_open(str(folder / "default.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
        meta = json.loads(handle.metadata()["vertebra"])
        dtypes = {str(handle.get_tensor(n).dtype) for n in names}
    assert {n.split(".")[0] for n in names} == {"localizer", "identifier"}
    assert dtypes == {"torch.float16", "torch.int64"}  # weights; BatchNorm step counters
    assert meta["provenance"]["training_data"] == "nothing (random weights)"
    assert "optimizer" not in meta["localizer"]
    # half precision: about half the float32 bundle's weights
    assert record.bytes < 0.6 * bundle.stat().st_size


def test_networks_file_loads_like_its_bundle(exported):
    bundle, folder, record = exported
    ref = pipeline.load_networks(bundle, device="cpu")
    nets = pipeline.load_networks(folder / "default.safetensors", device="cpu")
    assert nets.views == ref.views == VIEWS and nets.identifier_views == COARSE
    assert nets.settings == ref.settings == {"square_mm": 24.0, "localizer_views": 6}
    assert nets.source["sha256"] == record.sha256 and nets.source["recipe"] == "tiny-random"
    x = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    for a, b in ((nets.localizer(x), ref.localizer(x)), (nets.identifier(x), ref.identifier(x))):
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, atol=2e-2 * scale)  # float16 weights


def test_default_networks_from_the_environment_or_none_packaged(exported, monkeypatch,
                                                                tmp_path):
    _, folder, record = exported
    monkeypatch.setenv(weights.ENV_VAR, str(folder / "default.safetensors"))
    nets = pipeline.load_networks(device="cpu")
    assert nets.source["sha256"] == record.sha256
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / "missing.safetensors"))
    with pytest.raises(DrrkitError, match="VERTEBRA_WEIGHTS names .* not a file"):
        pipeline.load_networks(device="cpu")
    monkeypatch.delenv(weights.ENV_VAR)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)  # a package without weights
    with pytest.raises(DrrkitError, match="no default networks are packaged") as caught:
        pipeline.load_networks(device="cpu")
    assert "vertebra export-default" in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    assert weights.default_path() == folder / "default.safetensors"


def test_a_file_that_does_not_match_its_checksum_is_refused(exported, tmp_path):
    _, folder, _ = exported
    for name in ("default.safetensors", "default.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    damaged = bytearray((tmp_path / "default.safetensors").read_bytes())
    damaged[-100] ^= 0xFF  # one weight's byte
    (tmp_path / "default.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(DrrkitError, match="does not match its checksum"):
        pipeline.load_networks(tmp_path / "default.safetensors", device="cpu")
    (tmp_path / "default.json").unlink()
    with pytest.raises(DrrkitError, match="no record default.json"):
        pipeline.load_networks(tmp_path / "default.safetensors", device="cpu")


def test_export_refusals_leave_nothing(exported, tmp_path):
    bundle, _, _ = exported
    out = tmp_path / "out"
    with pytest.raises(DrrkitError, match="more than the 0.01 MB allowed"):
        export_networks(bundle, out, recipe="r", training_data="d", max_mb=0.01)
    assert not out.exists()
    with pytest.raises(DrrkitError, match="recipe"):
        export_networks(bundle, out, recipe=" ", training_data="d")
    with pytest.raises(DrrkitError, match="holds only a localization network"):
        export_networks(bundle.parent / "loc.pt", out, recipe="r", training_data="d")
    assert not out.exists()


def test_cli_export_default_then_label_without_a_model(exported, tmp_path, monkeypatch):
    from vertebra.data.phantom import write_phantoms

    bundle, _, _ = exported
    out = tmp_path / "weights"
    res = runner.invoke(app, ["export-default", str(bundle), "--out", str(out), "--recipe",
                              "tiny", "--data", "random", "--commit", "feed"])
    assert res.exit_code == 0, res.output
    assert "default.safetensors" in res.stdout and "commit feed" in res.stdout
    write_phantoms(tmp_path / "ph", [0], size="small", metal=False)
    ct = tmp_path / "ph" / "rawdata" / "sub-phantom0000" / "sub-phantom0000_ct.nii.gz"
    monkeypatch.setenv(weights.ENV_VAR, str(out / "default.safetensors"))
    res = runner.invoke(app, ["label", str(ct), "--out", str(tmp_path / "labels"),
                              "--device", "cpu", "--backend", "cpu", "--no-pictures",
                              "--precision", "float32"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "labels" / "sub-phantom0000_label.json").read_text())
    assert summary["networks"]["recipe"] == "tiny" and summary["networks"]["commit"] == "feed"
    assert summary["precision"] == "float32"
    # a damaged default: one line, exit 2
    (out / "default.safetensors").write_bytes(b"x" + (out / "default.safetensors").read_bytes())
    res = runner.invoke(app, ["label", str(ct), "--out", str(tmp_path / "l2")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "does not match its checksum" in res.stderr
    res = runner.invoke(app, ["export-default", str(tmp_path / "none.pt"), "--recipe", "r",
                              "--data", "d", "--out", str(out)])
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_the_packaged_default_networks(monkeypatch):
    """The networks shipped in vertebra/weights/: checksum, size, recipe, and they label."""
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    path = weights.default_path()
    assert path.parent == weights.WEIGHTS_DIR
    record = weights.check_file(path)
    assert record.recipe == "real-ct" and record.dtype == "int8-identifiers"
    assert record.bytes <= weights.MAX_MB * 1e6
    assert "no real CT" in record.training_data
    nets = pipeline.load_networks(device="cpu")
    assert nets.settings["peak_threshold"] == 0.3
    import drrkit
    import vertebra
    from vertebra.data.phantom import make_spine_phantom

    ph = make_spine_phantom(5, levels=("T8", "L2"), size="small", orientation="canonical")
    mu = ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data))
    # the stored settings but test-time mirroring (tested with tiny networks), which
    # doubles the networks' time
    assert nets.settings["mirror"] is True
    result = vertebra.label(mu, networks=nets, backend="cpu", pictures=False, mirror=False)
    assert len(result.vertebrae) >= 3  # it finds a spine (accuracy: benchmarks, not tests)


def _random_pair(folder, seed: int):
    """Checkpoints of a tiny random localizer and identifier on the fixture's views."""
    import torch

    from vertebra.models import create_model, save_model

    torch.manual_seed(seed)
    small = {"encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8]}
    loc = save_model(create_model("unet", task="localization", **small), folder / "l2.pt",
                     view_config=VIEWS.to_dict())
    ide = save_model(create_model("unet", task="identification", **small),
                     folder / "i2.pt", view_config=COARSE.to_dict())
    return loc, ide


def test_an_ensemble_bundle_and_its_networks_file_average_their_members(tiny_networks,
                                                                         tmp_path):
    import torch

    bundle, _ = tiny_networks
    loc2, ide2 = _random_pair(tmp_path, seed=1)
    one = pipeline.load_networks(bundle, device="cpu")
    two = pipeline.load_networks(localizer=loc2, identifier=ide2, device="cpu")
    parts = {k: tmp_path / f"{k}.pt" for k in ("loc1", "ide1")}
    for key, name in (("localizer", "loc1"), ("identifier", "ide1")):
        torch.save(torch.load(bundle, weights_only=False)[key], parts[name])
    ens = tmp_path / "ensemble.pt"
    pipeline.bundle_networks([parts["loc1"], loc2], [parts["ide1"], ide2], ens,
                             pipeline={"localizer_views": 6})
    nets = pipeline.load_networks(ens, device="cpu")
    assert isinstance(nets.localizer, pipeline.MeanNetwork)
    assert nets.views == VIEWS and nets.identifier_views == COARSE
    x = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    for got, a, b in ((nets.localizer(x), one.localizer(x), two.localizer(x)),
                      (nets.identifier(x), one.identifier(x), two.identifier(x))):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)
    probs = nets.identifier(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # still probabilities
    # the networks file keeps both members (parts localizer_2, identifier_2)
    record = export_networks(ens, tmp_path / "weights", recipe="tiny-ensemble",
                             training_data="nothing (random weights)", max_mb=100.0)
    stored = pipeline.load_networks(tmp_path / "weights" / record.weights, device="cpu")
    assert len(stored.identifier.members) == 2
    scale = float(np.abs(probs).max())
    np.testing.assert_allclose(stored.identifier(x), probs, atol=2e-2 * scale)


def test_ensemble_members_must_share_their_views(tiny_networks, tmp_path):
    import torch

    from vertebra.models import create_model, save_model

    bundle, _ = tiny_networks
    small = {"encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8]}
    other = save_model(create_model("unet", task="localization", **small), tmp_path / "l.pt",
                       view_config=COARSE.to_dict())
    first = tmp_path / "first.pt"
    ide = tmp_path / "ide.pt"
    saved = torch.load(bundle, weights_only=False)
    torch.save(saved["localizer"], first)
    torch.save(saved["identifier"], ide)
    with pytest.raises(DrrkitError, match="different views"):
        pipeline.bundle_networks([first, other], ide, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(DrrkitError, match="at least two"):
        pipeline.MeanNetwork([lambda x: x])
    # a bundle made by hand with such members is refused when it loads
    made = tmp_path / "made.pt"
    torch.save({**saved, "localizer_2": torch.load(other, weights_only=False)}, made)
    with pytest.raises(DrrkitError, match="different views"):
        pipeline.load_networks(made, device="cpu")


@pytest.mark.parametrize("key, part", [("localizer", True), ("identifier_2", True),
                                       ("localizer_12", True), ("localizer_1", False),
                                       ("localizer_02", False), ("pipeline", False),
                                       ("identifier2", False)])
def test_is_part_names_the_networks_of_a_bundle(key, part):
    assert weights.is_part(key) is part


def test_int8_quantization_in_closed_form():
    import torch

    from vertebra.weights.export import quantize_int8

    w = torch.tensor([[[1.27, -0.635, 0.0]], [[0.0, 0.0, 0.0]], [[-2.54, 1.0, 0.02]]])
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (3,)
    np.testing.assert_allclose(scale, [0.01, 1.0, 0.02], rtol=1e-6)  # peak / 127; 1 if zero
    assert q[0, 0].tolist() == [127, -64, 0]  # -63.5 rounds to even
    assert q[1].abs().sum() == 0 and q[2, 0].tolist() == [-127, 50, 1]


@given(st.integers(1, 6), st.integers(1, 40), st.floats(1e-4, 1e3), st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_int8_quantization_is_within_half_a_step(channels, size, peak, seed):
    import torch

    from vertebra.weights.export import quantize_int8

    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(channels, size, generator=gen) * 2 - 1) * peak
    q, scale = quantize_int8(w)
    back = q.float() * scale[:, None]
    assert bool(((back - w).abs() <= scale[:, None] * (0.5 + 1e-5)).all())
    assert int(q.abs().max()) <= 127
    assert set(q.abs().amax(dim=1).tolist()) <= {127, 0}  # each channel's peak is a full step


def test_an_int8_networks_file_is_half_the_size_and_labels_alike(exported, tmp_path):
    from safetensors import safe_open

    bundle, folder, half = exported
    record = export_networks(bundle, tmp_path, recipe="tiny-random", training_data="d",
                             dtype="int8")
    path = tmp_path / record.weights
    assert record.dtype == "int8" and record.bytes < 0.65 * half.bytes
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        kinds = {str(handle.get_tensor(n).dtype) for n in names}
    scales = {n for n in names if n.endswith(weights.SCALE_SUFFIX)}
    assert scales and all(n[:-len(weights.SCALE_SUFFIX)] in names for n in scales)
    assert kinds == {"torch.int8", "torch.float32", "torch.float16", "torch.int64"}
    ref = pipeline.load_networks(bundle, device="cpu", precision="float32")
    nets = pipeline.load_networks(path, device="cpu", precision="float32")
    x = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    for a, b in ((nets.localizer(x), ref.localizer(x)), (nets.identifier(x), ref.identifier(x))):
        np.testing.assert_allclose(a, b, atol=3e-2 * float(np.abs(b).max()))
    again = export_networks(folder / "default.safetensors", tmp_path / "again", recipe="r",
                            training_data="d", dtype="int8")  # a float16 file, stored again
    stored = pipeline.load_networks(tmp_path / "again" / again.weights, device="cpu",
                                    precision="float32")
    assert again.source == "default.safetensors" and again.dtype == "int8"
    np.testing.assert_allclose(stored.localizer(x), ref.localizer(x),
                               atol=3e-2 * float(np.abs(ref.localizer(x)).max()))
    with pytest.raises(DrrkitError, match="unknown dtype 'int4'"):
        export_networks(bundle, tmp_path / "no", recipe="r", training_data="d", dtype="int4")
    assert not (tmp_path / "no").exists()


def test_int8_identifiers_keep_the_localizers_in_float16(exported, tmp_path):
    """dtype "int8-identifiers": every int8 tensor belongs to an identifier, the localizer
    is stored as the float16 file stores it and computes the same heatmaps."""
    import torch
    from safetensors import safe_open

    bundle, folder, half = exported
    record = export_networks(bundle, tmp_path, recipe="tiny-random", training_data="d",
                             dtype="int8-identifiers")
    assert record.dtype == "int8-identifiers" and record.bytes < half.bytes
    with safe_open(str(tmp_path / record.weights), framework="pt") as mixed, \
            safe_open(str(folder / half.weights), framework="pt") as plain:
        mixed_names, plain_names = set(mixed.keys()), set(plain.keys())
        int8 = {n for n in mixed_names if mixed.get_tensor(n).dtype == torch.int8}
        assert int8 and all(n.startswith("identifier.") for n in int8)
        for n in plain_names:
            if n.startswith("localizer."):
                assert mixed.get_tensor(n).equal(plain.get_tensor(n))
    mixed_nets = pipeline.load_networks(tmp_path / record.weights, device="cpu",
                                        precision="float32")
    half_nets = pipeline.load_networks(folder / half.weights, device="cpu", precision="float32")
    x = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(mixed_nets.localizer(x), half_nets.localizer(x))


def test_an_ensemble_grows_from_a_networks_file(tiny_networks, tmp_path):
    import torch

    bundle, path = tiny_networks
    loc2, ide2 = _random_pair(tmp_path, seed=2)
    grown = tmp_path / "grown.pt"
    pipeline.bundle_networks([path, loc2], [path, ide2], grown)
    nets = pipeline.load_networks(grown, device="cpu", precision="float32")
    first = pipeline.load_networks(path, device="cpu", precision="float32")
    second = pipeline.load_networks(localizer=loc2, identifier=ide2, device="cpu",
                                    precision="float32")
    assert len(nets.localizer.members) == 2 and nets.identifier_views == COARSE
    x = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(nets.localizer(x), (first.localizer(x) + second.localizer(x)) / 2,
                               rtol=1e-5, atol=1e-6)
    again = tmp_path / "again.pt"  # members of a bundle of two come along, in order
    pipeline.bundle_networks([grown], [grown], again)
    assert len(pipeline.load_networks(again, device="cpu").identifier.members) == 2
    with pytest.raises(DrrkitError, match="bundle without a localizer"):
        saved = torch.load(bundle, weights_only=False)
        torch.save({"format": "vertebra.networks", "identifier": saved["identifier"]},
                   tmp_path / "half.pt")
        pipeline.bundle_networks(tmp_path / "half.pt", ide2, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_bfloat16_forward_passes_match_float32(exported, monkeypatch):
    from vertebra.training import trainer

    bundle, _, _ = exported
    x = np.random.default_rng(3).random((3, 64, 96)).astype(np.float32)
    ref = pipeline.load_networks(bundle, device="cpu", precision="float32")
    half = pipeline.load_networks(bundle, device="cpu", precision="bfloat16")
    assert (ref.precision, half.precision) == ("float32", "bfloat16")
    for a, b in ((half.localizer(x), ref.localizer(x)), (half.identifier(x), ref.identifier(x))):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=5e-2 * float(np.abs(b).max()))
    for native in (True, False):
        monkeypatch.setattr(trainer, "cpu_has_bf16", lambda native=native: native)
        assert pipeline.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    assert pipeline.resolve_precision(None, "cuda") == "float32"
    with pytest.raises(DrrkitError, match="unknown precision 'half'"):
        pipeline.load_networks(bundle, device="cpu", precision="half")


def test_cli_ensemble_joins_runs(tiny_networks, tmp_path):
    bundle, path = tiny_networks
    out = tmp_path / "ens.pt"
    res = runner.invoke(app, ["ensemble", str(path), str(bundle), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 localizers and 2 identifiers" in res.stdout and "localizer_views" in res.stdout
    nets = pipeline.load_networks(out, device="cpu")
    assert nets.settings["localizer_views"] == 6 and nets.identifier_views == COARSE
    for args, message in (([str(bundle)], "at least two"),
                          ([str(bundle), str(tmp_path / "none.pt")], "no such file"),
                          ([str(bundle), str(bundle), "--out", str(tmp_path / "e.safetensors")],
                           "name it NAME.pt")):
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "bad.pt")]
        res = runner.invoke(app, ["ensemble", *args])
        assert res.exit_code == 2 and message in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "e.safetensors").exists()
