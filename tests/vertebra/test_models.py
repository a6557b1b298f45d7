"""U-Net on timm encoders: shapes, backward, registry errors and local weight loading."""

import pytest
import torch

from drrkit.errors import DrrkitError
from vertebra import labels
from vertebra.models import (
    UNet,
    create_model,
    load_model,
    model_names,
    read_checkpoint,
    save_model,
)

ENC = "resnet10t"  # the smallest ResNet timm builds with features_only
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Any attempt at timm's pretrained (hub / URL) loading fails the test."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("tried to load hub weights")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize(
    "task, heatmap, logits",
    [("localization", True, False), ("identification", False, True), ("both", True, True)],
)
def test_forward_backward_tiny(task, heatmap, logits):
    torch.manual_seed(0)
    net = create_model("unet", encoder=ENC, task=task)
    x = torch.randn(2, 1, 64, 64)
    out = net(x)
    assert (out.heatmap is not None) == heatmap and (out.logits is not None) == logits
    loss = 0.0
    if heatmap:
        assert out.heatmap.shape == (2, 1, 64, 64)
        loss = loss + out.heatmap.square().mean()
    if logits:
        assert out.logits.shape == (2, labels.NUM_CLASSES, 64, 64)
        loss = loss + torch.nn.functional.cross_entropy(
            out.logits, torch.randint(labels.NUM_CLASSES, (2, 64, 64))
        )
    loss.backward()
    first = net.encoder.state_dict(keep_vars=True)["conv1.0.weight"]
    assert first.shape[1] == 1 and first.grad is not None and first.grad.abs().sum() > 0
    for head in (net.heatmap_head, net.logits_head):
        if head is not None:
            assert head.weight.grad.abs().sum() > 0


def test_odd_sizes_and_another_encoder_family():
    torch.manual_seed(0)
    net = create_model(encoder="mobilenetv3_small_050", task="both", num_classes=5)
    assert len(net.decoder) == len(net.encoder.feature_info.channels())
    out = net(torch.randn(2, 1, 50, 70))
    assert out.heatmap.shape == (2, 1, 50, 70) and out.logits.shape == (2, 5, 50, 70)


def test_registry_and_argument_errors():
    assert "unet" in model_names()
    with pytest.raises(DrrkitError, match="valid names: unet"):
        create_model("unett")
    with pytest.raises(DrrkitError, match="resnet50"):
        create_model(encoder="resnet5O")
    with pytest.raises(DrrkitError, match="valid tasks: localization, identification, both"):
        create_model(encoder=ENC, task="segmentation")
    with pytest.raises(DrrkitError, match="decoder_channels"):
        create_model(encoder=ENC, decoder_channels=(8, 8))
    net = create_model(encoder=ENC)
    with pytest.raises(DrrkitError, match=r"\(B, 1, H, W\)"):
        net(torch.zeros(1, 3, 64, 64))


def test_missing_and_unreadable_weight_files(tmp_path):
    with pytest.raises(DrrkitError, match="not found.*never downloaded"):
        create_model(encoder=ENC, pretrained=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DrrkitError, match="cannot read"):
        create_model(encoder=ENC, pretrained=bad)


def test_timm_state_dict_with_rgb_stem_and_classifier(tmp_path):
    import timm
    from timm.models import adapt_input_conv

    torch.manual_seed(1)
    full = timm.create_model(ENC, pretrained=False, in_chans=3, num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    net = create_model(encoder=ENC, task="identification", pretrained=path)
    got = net.encoder.state_dict()
    src = full.state_dict()
    torch.testing.assert_close(got["layer4.0.conv2.weight"], src["layer4.0.conv2.weight"])
    torch.testing.assert_close(got["bn1.running_var"], src["bn1.running_var"])
    torch.testing.assert_close(got["conv1.0.weight"], adapt_input_conv(1, src["conv1.0.weight"]))
    # a state dict of another architecture is refused with the missing weights named
    other = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(DrrkitError, match="does not fit|shape"):
        create_model(encoder=ENC, pretrained=other)


def test_encoder_checkpoint(tmp_path):
    torch.manual_seed(2)
    donor = create_model(encoder=ENC)
    path = tmp_path / "enc.pt"
    torch.save({"encoder": ENC, "state_dict": donor.encoder.state_dict(), "config": {}}, path)
    for task in ("localization", "identification"):
        net = create_model(encoder=ENC, task=task, pretrained=path)
        for k, v in donor.encoder.state_dict().items():
            torch.testing.assert_close(net.encoder.state_dict()[k], v)
    with pytest.raises(DrrkitError, match="holds encoder 'resnet10t'"):
        create_model(encoder="resnet18", pretrained=path)


def test_full_model_round_trip_and_head_swap(tmp_path):
    torch.manual_seed(3)
    net = create_model(encoder=ENC, task="localization")
    net(torch.randn(2, 1, 64, 64))  # update BN running stats so they are not defaults
    path = save_model(net, tmp_path / "loc.pt", epoch=7)
    assert read_checkpoint(path)["epoch"] == 7
    again = load_model(path)
    assert isinstance(again, UNet) and again.config == net.config
    x = torch.randn(1, 1, 64, 64)
    net.eval(), again.eval()
    torch.testing.assert_close(again(x).heatmap, net(x).heatmap)
    with pytest.warns(UserWarning, match="logits_head"):
        ident = create_model(encoder=ENC, task="identification", pretrained=path)
    for k, v in net.state_dict().items():
        if not k.startswith("heatmap_head"):
            torch.testing.assert_close(ident.state_dict()[k], v)
    with pytest.raises(DrrkitError, match="encoder 'resnet10t'"):
        create_model(encoder="resnet18", pretrained=path)
