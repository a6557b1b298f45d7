"""Training runs: a loss that falls, bfloat16, resume, focal heads, the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from drrkit.errors import DrrkitError
from tests.vertebra.training.conftest import ENC, tiny_config
from vertebra.training.rendered import RenderedCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


def test_focal_heads_are_read_through_a_sigmoid(rendered):
    from vertebra.models import heatmap_values
    from vertebra.training.trainer import build_model
    from vertebra.training.validate import predict

    net = build_model(tiny_config("localization", heatmap_loss="focal"))
    assert net.config["heatmap_activation"] == "sigmoid"
    raw = torch.linspace(-5, 5, 7)
    torch.testing.assert_close(heatmap_values(net, raw), torch.sigmoid(raw))
    plain = build_model(tiny_config("localization"))
    assert heatmap_values(plain, raw) is raw
    heat = predict(net, rendered[0].images[:2])["heatmap"]
    assert heat.min() >= 0 and heat.max() <= 1


def test_a_resumed_focal_run_keeps_its_sigmoid(rendered, tmp_path):
    from vertebra.models import load_model
    from vertebra.training.trainer import train

    cfg = tiny_config("localization", heatmap_loss="focal", iterations=2)
    out = tmp_path / "loc.pt"
    train(replace(cfg, iterations=1), RenderedCache.from_views(rendered), out, progress=False)
    res = train(cfg, RenderedCache.from_views(rendered), out, resume=True, progress=False)
    assert res.model.config["heatmap_activation"] == "sigmoid"
    assert load_model(out).config["heatmap_activation"] == "sigmoid"


def test_short_training_run_loss_falls(rendered):
    from vertebra.training.trainer import train

    cfg = tiny_config("identification", iterations=30, lr=3e-3, log_every=10)
    res = train(cfg, RenderedCache.from_views(rendered), None, progress=False)
    assert res.iteration == 30 and len(res.losses) == 30
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert last < 0.7 * first, (first, last)
    assert [h["iteration"] for h in res.history] == [10, 20, 30]
    assert {"ce", "seq", "lr", "it_per_s"} <= set(res.history[-1])


def test_cpu_bfloat16_training(rendered, tmp_path, monkeypatch):
    """``cpu_bf16``: bfloat16 forward passes and channels-last weights where the CPU has
    them, float32 weights and a float32 checkpoint; elsewhere a warning and float32."""
    from vertebra.models import load_model
    from vertebra.training import trainer

    cfg = tiny_config("localization", heatmap_loss="focal", iterations=12, lr=3e-3,
                      cpu_bf16=True, device="cpu")
    data = RenderedCache.from_views(rendered)
    if trainer.cpu_has_bf16():
        res = trainer.train(cfg, data, tmp_path / "loc.pt", progress=False)
        weight = next(res.model.parameters())
        assert weight.dtype == torch.float32
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                   and not p.is_contiguous() for p in res.model.parameters())
        assert np.isfinite(res.losses).all()
        loaded = load_model(tmp_path / "loc.pt")
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        res = trainer.train(replace(cfg, iterations=2), data, None, progress=False)
    assert all(p.is_contiguous() for p in res.model.parameters())


def test_checkpoint_resume_continues_the_same_run(rendered, tmp_path):
    from vertebra.models import load_model
    from vertebra.training.checkpoint import load_trained, read_training_checkpoint
    from vertebra.training.trainer import log_path, train

    data = RenderedCache.from_views(rendered)
    cfg = tiny_config("localization", iterations=4, heatmap_fg_weight=5.0)
    straight = train(cfg, data, None, progress=False)
    out = tmp_path / "loc.pt"
    part = train(replace(cfg, iterations=2), data, out, progress=False)
    assert part.iteration == 2
    with pytest.raises(DrrkitError, match="exists"):
        train(cfg, data, out, progress=False)
    with pytest.raises(DrrkitError, match="task"):
        train(replace(cfg, task="identification"), data, out, resume=True, progress=False)
    rest = train(cfg, data, out, resume=True, progress=False)
    assert rest.iteration == 4 and len(rest.losses) == 2
    assert np.allclose(rest.losses, straight.losses[2:], rtol=1e-4, atol=1e-6)
    for (k, a), b in zip(straight.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), k
    ckpt = read_training_checkpoint(out)
    assert ckpt["iteration"] == 4 and ckpt["train_config"]["task"] == "localization"
    assert ckpt["view_config"] == cfg.views.to_dict()
    assert ckpt["labels"][19]["name"] == "T13" and ckpt["code_version"]["drrkit"]
    assert "state" in ckpt["optimizer"]
    model, loaded_cfg = load_trained(out)
    assert loaded_cfg == cfg and not model.training
    assert load_model(out).config["task"] == "localization"
    lines = [json.loads(s) for s in log_path(out).read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4]


def test_cli_prerender_pretrain_train_and_bad_input(tmp_path):
    from vertebra.cli import app

    runner = CliRunner()
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["prerender", "phantoms:1", str(cache), "--preset", "cpu-demo",
                            "--task", "identification", "--views", "4"])
    assert r.exit_code == 0, r.output
    assert (cache / "cache.json").is_file() and (cache / "phantom0000.npz").is_file()

    enc = tmp_path / "enc.pt"
    r = runner.invoke(app, ["pretrain", str(cache), "--out", str(enc), "--steps", "2",
                            "--batch-size", "2", "--encoder", ENC, "--crop-size", "64",
                            "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert torch.load(enc, weights_only=True)["encoder"] == ENC

    ckpt = tmp_path / "id.pt"
    common = ["--task", "identification", "--preset", "cpu-demo", "--encoder", ENC,
              "--crop-size", "64", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    r = runner.invoke(app, ["train", str(cache), "--out", str(ckpt), "--iterations", "2",
                            "--init", f"simsiam:{enc}", "--no-sequence-loss", *common])
    assert r.exit_code == 0, r.output
    saved = torch.load(ckpt, weights_only=True)
    assert saved["iteration"] == 2 and saved["train_config"]["sequence_loss"] is False
    assert saved["view_config"]["views"] == 4  # the cache's views were recorded
    assert saved["view_config"]["mm_per_pixel"] == 4.0  # the cpu-demo identifier's pixels
    assert saved["view_config"]["bone_gain"] == 8.0  # and its bone-enhanced views
    r = runner.invoke(app, ["train", str(cache), "--out", str(ckpt), "--iterations", "3",
                            "--resume", "--no-sequence-loss", *common])
    assert r.exit_code == 0, r.output
    assert torch.load(ckpt, weights_only=True)["iteration"] == 3

    bad = [
        ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")],
        ["train", "phantoms:0", "--out", str(tmp_path / "x.pt")],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--task", "segment"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--init", "weights.pt"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--init",
         f"simsiam:{tmp_path / 'none.pt'}"],
        ["train", str(cache), "--out", str(ckpt), *common],  # exists, no --resume
        ["train", str(tmp_path), "--out", str(tmp_path / "x.pt")],  # no CTs in folder
        ["pretrain", "phantoms:x", "--out", str(tmp_path / "e.pt")],
        ["prerender", str(cache), str(tmp_path / "c2")],  # already a cache
        ["prerender", "phantoms:1", str(tmp_path / "c3"), "--task", "segment"],
        ["prerender", "phantoms:1", str(tmp_path / "c4"), "--bone-gain", "0.5"],
        ["train", str(cache), "--out", str(tmp_path / "x.pt"), "--heatmap-loss", "l1"],
    ]
    for args in bad:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and "Traceback" not in r.output
