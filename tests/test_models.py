"""Backbones, DeepLabV3+, plain / MC-dropout heads, pretrained loading, helpers and SyncBN export."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision

from npsemiseg.config import ModelConfig
from npsemiseg.errors import UserError
from npsemiseg.models import (
    ResNet,
    build_model,
    convert_syncbn_to_bn,
    downsample_labels,
    mean_probs,
    upsample_logits,
)
from npsemiseg.models.resnet import torchvision_cache_file

C = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", width=8, output_stride=16, aspp_channels=16, latent_dim=8, bank_capacity=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.filterwarnings("ignore:NP head evaluated with empty memory banks")
@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("head", ["plain", "mcdropout", "np"])
def test_shapes_every_backbone_and_head(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    os_ = 8 if head == "np" else 16
    model = build_model(tiny(backbone=backbone, head=head, output_stride=os_, deep_stem=backbone == "resnet50"), C)
    x = torch.randn(2, 3, 64, 64)
    for t, train in ((1, True), (3, True), (3, False)):
        model.train(train)
        with torch.set_grad_enabled(train):
            out = model(x, num_samples=t)
        # plain: always one; MC dropout: T full passes at eval, ordinary dropout training (one pass) in training
        expect_t = 1 if head == "plain" or (head == "mcdropout" and train) else t
        assert out.logits.shape == (expect_t, 2, C, 16, 16)
        assert out.kl.shape == ()
        assert torch.isfinite(out.logits).all()
        if head == "np":
            assert out.query.shape == (2, 8, 16, 16)
            assert model.np_head is not None
        else:
            assert out.query is None and model.np_head is None
            assert out.kl.item() == 0.0
    model.train()
    model.zero_grad()
    model(x, num_samples=2).logits.mean().backward()
    assert model.encoder.backbone.layer4[-1].conv2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("os_,deep_stem", [(8, False), (16, False), (8, True), (16, True)])
def test_output_stride_and_deep_stem(os_: int, deep_stem: bool) -> None:
    net = ResNet("resnet18", width=8, output_stride=os_, deep_stem=deep_stem)
    low, high = net(torch.randn(1, 3, 64, 64))
    assert low.shape == (1, 8, 16, 16)
    assert high.shape == (1, 64, 64 // os_, 64 // os_)
    assert isinstance(net.conv1, torch.nn.Sequential) == deep_stem
    if deep_stem:  # 3x3 convs w-w-2w, layer1 fed 2w channels
        assert [m.out_channels for m in net.conv1 if isinstance(m, torch.nn.Conv2d)] == [8, 8, 16]
        assert net.layer1[0].conv1.in_channels == 16
    model = build_model(tiny(output_stride=os_, deep_stem=deep_stem, head="plain"), C)
    assert model(torch.randn(2, 3, 64, 64)).logits.shape == (1, 2, C, 16, 16)


def test_dilation_follows_output_stride() -> None:
    r50 = ResNet("resnet50", width=8, output_stride=8)
    assert r50.layer3[0].conv2.stride == (1, 1) and r50.layer3[1].conv2.dilation == (2, 2)
    assert r50.layer4[0].conv2.dilation == (2, 2) and r50.layer4[1].conv2.dilation == (4, 4)
    r16 = ResNet("resnet50", width=8, output_stride=16)
    assert r16.layer3[0].conv2.stride == (2, 2) and r16.layer4[1].conv2.dilation == (2, 2)
    from npsemiseg.models.deeplab import ASPP_RATES

    enc8 = build_model(tiny(output_stride=8, head="plain"), C).encoder
    assert [b[0].dilation[0] for b in enc8.aspp.branches[1:]] == list(ASPP_RATES[8]) == [12, 24, 36]
    enc16 = build_model(tiny(output_stride=16, head="plain"), C).encoder
    assert [b[0].dilation[0] for b in enc16.aspp.branches[1:]] == [6, 12, 18]
    assert enc16.out_channels == 16 + 8  # aspp_channels + low-level projection


@pytest.mark.parametrize("depth", ["resnet50", "resnet101"])
def test_full_width_matches_torchvision_keys(depth: str) -> None:
    ours = ResNet(depth, width=64).state_dict()
    ref = getattr(torchvision.models, depth)().state_dict()
    ref = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_pretrained_local_file_loads_and_matches_torchvision(tmp_path) -> None:
    torch.manual_seed(1)
    tv = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    model = build_model(tiny(width=64, pretrained=str(path), head="plain"), C)
    trunk = model.encoder.backbone
    assert torch.equal(trunk.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    # at output stride 32 the trunk computes exactly torchvision's features
    net = ResNet("resnet18", 64, output_stride=32)
    net.load_state_dict(trunk.state_dict())
    net.eval(), tv.eval()
    x = torch.randn(1, 3, 64, 64)
    body = torch.nn.Sequential(*list(tv.children())[:-2])
    torch.testing.assert_close(net(x)[1], body(x))


def test_pretrained_errors_name_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"model.pretrained=torchvision: .*resnet18-f37072fd\.pth not found"):
        build_model(tiny(width=64, pretrained="torchvision"), C)
    with pytest.raises(UserError, match=r"need model.width=64 and model.deep_stem=false \(got width 8"):
        build_model(tiny(width=8, pretrained="torchvision"), C)
    with pytest.raises(UserError, match=r"deep_stem True"):
        build_model(tiny(width=64, deep_stem=True, pretrained="torchvision"), C)
    narrow = tmp_path / "narrow.pth"
    torch.save(torchvision.models.resnet18().state_dict(), narrow)
    with pytest.raises(UserError, match=r"narrow\.pth does not fit resnet18 \(width 8\): key 'conv1.weight'"):
        build_model(tiny(width=8, pretrained=str(narrow)), C)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read .*junk\.pth"):
        build_model(tiny(pretrained=str(junk)), C)
    with pytest.raises(UserError, match=r"file not found: .*missing\.pth"):
        build_model(tiny(pretrained=str(tmp_path / "missing.pth")), C)
    partial = tmp_path / "partial.pth"
    sd = torchvision.models.resnet18().state_dict()
    del sd["layer4.1.bn2.running_var"]
    torch.save(sd, partial)
    with pytest.raises(UserError, match=r"missing key 'layer4.1.bn2.running_var'"):
        build_model(tiny(width=64, pretrained=str(partial)), C)


def test_pretrained_torchvision_reads_the_cache_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert torchvision_cache_file("resnet18") == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    model = build_model(tiny(width=64, pretrained="torchvision", head="plain"), C)
    assert torch.equal(model.encoder.backbone.conv1.weight, tv.conv1.weight)


def test_param_groups_split_trunk_from_head() -> None:
    model = build_model(tiny(head="np"), C)
    trunk, head = model.param_groups()
    ids_t, ids_h = {id(p) for p in trunk}, {id(p) for p in head}
    assert not ids_t & ids_h
    assert ids_t | ids_h == {id(p) for p in model.parameters()}
    assert ids_t == {id(p) for p in model.encoder.backbone.parameters()}
    assert {id(p) for p in model.encoder.aspp.parameters()} <= ids_h


def test_mc_dropout_stays_on_at_eval_and_plain_is_deterministic() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    mc = build_model(tiny(head="mcdropout", dropout=0.3), C).eval()
    with torch.no_grad():
        out = mc(x, num_samples=4).logits
    assert out.shape[0] == 4 and not torch.allclose(out[0], out[1])
    plain = build_model(tiny(head="plain"), C).eval()
    with torch.no_grad():
        a, b = plain(x, 4).logits, plain(x, 4).logits
    assert a.shape[0] == 1 and torch.equal(a, b)
    mc0 = build_model(dataclasses.replace(tiny(head="mcdropout"), dropout=0.0), C).eval()
    with torch.no_grad():
        out0 = mc0(x, 3).logits
    torch.testing.assert_close(out0[0], out0[2])


@pytest.mark.parametrize("scope", ["head", "full"])
def test_mc_dropout_scope_runs_encoder_once_or_t_times(scope: str) -> None:
    """``head`` (the fair baseline): encoder and the first fusion block once, the layers after the first
    (channel) dropout T times; ``full``: the whole network T times. Both give T different samples."""
    torch.manual_seed(0)
    model = build_model(tiny(head="mcdropout", dropout=0.3, mc_dropout_scope=scope), C).eval()
    calls = {"enc": 0, "fuse1": 0, "fuse2": 0}
    for name, mod in (("enc", model.encoder), ("fuse1", model.head.fuse1), ("fuse2", model.head.fuse2)):
        mod.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), num_samples=5).logits
    assert out.shape[:2] == (5, 2) and not torch.allclose(out[0], out[1])
    once = 1 if scope == "head" else 5
    assert calls == {"enc": once, "fuse1": once, "fuse2": 5}
    # Dropout2d drops whole channels: the dropped channels of fuse2's input are zero at every pixel
    x = model.head.fuse1(model.encoder(torch.randn(1, 3, 64, 64)))
    dropped = model.head._drop(x)
    zero = dropped.flatten(2).abs().amax(-1) == 0
    assert zero.any() and torch.equal(zero, (dropped == 0).flatten(2).all(-1))
    model.train()
    assert model(torch.randn(2, 3, 64, 64), num_samples=5).logits.shape[0] == 1  # training: one pass


def test_helpers_shapes_and_values() -> None:
    logits = torch.randn(3, 2, C, 16, 16)
    up = upsample_logits(logits, (64, 48))
    assert up.shape == (3, 2, C, 64, 48)
    torch.testing.assert_close(up[1], F.interpolate(logits[1], (64, 48), mode="bilinear", align_corners=False))
    assert upsample_logits(logits[0], (32, 32)).shape == (2, C, 32, 32)
    p = mean_probs(logits)
    assert p.shape == (2, C, 16, 16)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 16, 16))
    torch.testing.assert_close(p, torch.softmax(logits, 2).mean(0))
    mask = torch.randint(0, C, (2, 64, 64))
    mask[:, :8] = 255
    mask[:, -8:] = 254
    small = downsample_labels(mask, (16, 16))
    assert small.dtype == mask.dtype and small.shape == (2, 16, 16)
    ref = F.interpolate(mask[:, None].float(), (16, 16), mode="nearest")[:, 0].long()
    assert torch.equal(small, ref)
    assert (small[:, :2] == 255).all() and (small[:, -2:] == 254).all()
    odd = downsample_labels(torch.randint(0, 3, (1, 65, 63)), (17, 16))
    assert odd.shape == (1, 17, 16)


def test_convert_syncbn_to_bn_round_trip() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(head="np"), C)
    model.train()
    model(torch.randn(2, 3, 64, 64))  # move BN running stats away from their init
    model.eval()
    ref_sd = {k: v.clone() for k, v in model.state_dict().items()}
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    back = convert_syncbn_to_bn(sync)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in back.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in back.modules()) > 10
    assert not back.training
    sd = back.state_dict()
    assert list(sd) == list(ref_sd)
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)


def test_decoder_and_mc_scope_keys_are_validated_and_resolved() -> None:
    from npsemiseg.config import load_config
    from npsemiseg.errors import ConfigError
    from npsemiseg.models.build import DEFAULT_DECODER, resolve_decoder

    for key in ("model.decoder=bogus", "model.mc_dropout_scope=encoder"):
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            load_config(None, [key])
    assert resolve_decoder(tiny()) == DEFAULT_DECODER != "spec"
    assert resolve_decoder(tiny(np_mode="released")) == "spec"  # the release as it is
    assert resolve_decoder(tiny(np_mode="released", decoder="film")) == "film"
    assert build_model(tiny(head="np", decoder="film"), C).np_head.decoder_kind == "film"
