"""Engine building blocks on hand-made tensors: losses, pseudo-labels, CutMix, EMA, poly LR, sampler, RNG
checkpoints, evaluation modes."""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from npsemiseg.engine.ema import ema_decay, ema_update, make_teacher
from npsemiseg.engine.evaluate import _window_starts, center_crop, evaluate, predict_probs
from npsemiseg.engine.losses import ce_loss, cutmix, masked_ce_loss, ohem_ce_loss, pseudo_labels
from npsemiseg.engine.sampler import ResumableSampler, shard_indices
from npsemiseg.engine.schedule import PolyLR, build_optimizer
from npsemiseg.errors import UserError


# ----------------------------------------------------------------------------- losses and pseudo-labels
def test_pseudo_label_mask_respects_threshold_and_padding():
    probs = torch.tensor([0.96, 0.5, 0.99, 0.94]).view(1, 1, 2, 2)
    probs = torch.cat([probs, 1 - probs], dim=1)  # 2 classes
    ignore = torch.tensor([[0, 0], [254, 0]]).view(1, 2, 2)
    pl = pseudo_labels(probs, ignore, conf_threshold=0.95)
    assert pl.mask.tolist() == [[[True, False], [False, False]]]  # 0.5 and 0.94 below; 0.99 is padding
    assert pl.label.tolist() == [[[0, 0], [0, 0]]]
    assert torch.allclose(pl.conf, torch.tensor([[[0.96, 0.5], [0.99, 0.94]]]))
    # the entropy filter drops the uncertain 0.5/0.5 pixel even at threshold 0
    pl2 = pseudo_labels(probs, ignore, conf_threshold=0.0, entropy_threshold=0.4)
    assert pl2.mask.tolist() == [[[True, False], [False, True]]]
    assert pl2.entropy[0, 0, 1].item() == pytest.approx(math.log(2), abs=1e-6)


def test_cutmix_moves_images_labels_and_masks_together():
    b, h, w = 3, 8, 8
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()
    probs = F.one_hot(torch.arange(b).view(b, 1, 1).expand(b, h, w), 4).permute(0, 3, 1, 2).float()
    ignore = torch.zeros(b, h, w, dtype=torch.long)
    ignore[1, :, 2] = 254
    box = torch.zeros(b, h, w, dtype=torch.long)
    box[:, 2:5, 1:6] = 1
    pl = pseudo_labels(probs, ignore, 0.5)
    mixed, mixed_pl = cutmix(images, box, pl)
    for i in range(b):
        src = (i - 1) % b
        inside = box[i].bool()
        assert torch.all(mixed[i][:, inside] == src) and torch.all(mixed[i][:, ~inside] == i)
        assert torch.all(mixed_pl.label[i][inside] == src) and torch.all(mixed_pl.label[i][~inside] == i)
        # the mask/ignore map travels with the pasted pixels: sample 1's padded column lands in sample 2's box
        assert torch.equal(mixed_pl.ignore[i][inside], ignore[src][inside])
        assert torch.equal(mixed_pl.mask[i], torch.where(inside, pl.mask[src], pl.mask[i]))
    assert (mixed_pl.ignore[2] == 254).sum() == 3 and not bool(mixed_pl.mask[2][mixed_pl.ignore[2] == 254].any())


def test_masked_ce_counts_only_confident_unpadded_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    probs = torch.softmax(torch.randn(2, 3, 4, 4) * 3, 1)
    ignore = torch.zeros(2, 4, 4, dtype=torch.long)
    ignore[0, 0] = 254
    pl = pseudo_labels(probs, ignore, 0.6)
    pix = F.cross_entropy(logits, pl.label, reduction="none")
    expected = pix[pl.mask].sum() / (ignore != 254).sum()
    assert masked_ce_loss(logits, pl).item() == pytest.approx(expected.item(), rel=1e-6)
    none = pseudo_labels(probs, ignore, 1.01)
    assert masked_ce_loss(logits, none).item() == 0.0


def test_ce_ignores_255_and_254_and_ohem_keeps_hardest():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([4.0, 2.0, 0.0, -3.0])  # class-0 margin per pixel
    target = torch.tensor([[[0, 0, 0, 0]]])
    full = F.cross_entropy(logits, target, reduction="none")[0, 0]
    assert ce_loss(logits, torch.tensor([[[0, 255, 254, 0]]])).item() == pytest.approx(
        ((full[0] + full[3]) / 2).item())
    assert ce_loss(logits, torch.full((1, 1, 4), 255)).item() == 0.0
    # thresh 0.7: p(true) = sigmoid(margin) = .98, .88, .5, .05 -> keep the two below 0.7 ...
    assert ohem_ce_loss(logits, target, 0.7, 1).item() == pytest.approx(((full[2] + full[3]) / 2).item(), rel=1e-5)
    # ... but at least min_kept hardest
    assert ohem_ce_loss(logits, target, 0.7, 3).item() == pytest.approx(full[1:].mean().item(), rel=1e-5)
    assert ohem_ce_loss(logits, target, 0.7, 10).item() == pytest.approx(full.mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- EMA, optimiser, schedule
def test_ema_ramp_and_update():
    assert ema_decay(0, 0.99) == 0.0 and ema_decay(1, 0.99) == 0.5 and ema_decay(10_000, 0.99) == 0.99
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(2.0)
        student[1].num_batches_tracked.fill_(7)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.75)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.5))
    assert int(teacher[1].num_batches_tracked) == 7
    ema_update(teacher, student, ema_decay(0, 0.99))  # step 0: teacher := student
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))


def test_two_param_groups_and_poly_lr():
    from npsemiseg.config import TrainConfig

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.head = nn.Linear(2, 2)

        def param_groups(self):
            return list(self.backbone.parameters()), list(self.head.parameters())

    net = Net()
    opt = build_optimizer(net, TrainConfig(lr=0.01, head_lr_mult=10.0, momentum=0.9, weight_decay=1e-4))
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.1)]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.backbone.parameters()}
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    sched = PolyLR(opt, total_iters=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01 * (1 - i / 10) ** 0.9 for i in range(10)])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    state = sched.state_dict()
    assert all(isinstance(v, (int, float, list, bool, type(None))) for v in state.values())


# ----------------------------------------------------------------------------- sampler
def test_sampler_shards_oversamples_and_resumes():
    n, per_rank, ws = 5, 8, 2
    shards = [ResumableSampler(n, per_rank, rank=r, world_size=ws, seed=3) for r in range(ws)]
    order = shards[0].global_order()
    assert len(order) == per_rank * ws and sorted(order[:n].tolist()) == list(range(n))  # a full permutation first
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == per_rank
    interleaved = [x for pair in zip(a, b, strict=True) for x in pair]
    assert interleaved == order.tolist()
    shards[0].set_epoch(0, start=5)
    assert list(shards[0]) == a[5:] and len(shards[0]) == 3
    shards[0].set_epoch(1)
    assert list(shards[0]) != a  # a new permutation per epoch ...
    again = ResumableSampler(n, per_rank, rank=0, world_size=ws, seed=3)
    again.set_epoch(1)
    assert list(again) == list(shards[0])  # ... determined by (seed, epoch)
    assert shard_indices(7, 1, 3) == [1, 4] and sum(len(shard_indices(7, r, 3)) for r in range(3)) == 7


# ----------------------------------------------------------------------------- checkpoints and RNG
def test_rng_capture_restore_and_weights_only_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    rng = capture_rng()
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    path = save_checkpoint({"rng": rng, "step": 3, "w": torch.ones(2)}, tmp_path / "c" / "x.pt")
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temp file left behind
    loaded = torch.load(path, weights_only=True)
    random.random(), np.random.rand(5), torch.rand(5)
    restore_rng(loaded["rng"])
    assert (random.random(), np.random.rand(3).tolist()) == draws[:2]
    assert torch.equal(torch.rand(3), draws[2])


def test_load_checkpoint_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)


# ----------------------------------------------------------------------------- evaluation
class _Out(NamedTuple):
    logits: torch.Tensor
    kl: torch.Tensor
    query: None


class PointwiseModel(nn.Module):
    """Logits are a per-pixel function of the input at stride 1 (an 'identity-like' segmenter)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        torch.nn.init.normal_(self.conv.weight, std=2.0)

    def forward(self, x: torch.Tensor, num_samples: int = 1) -> _Out:
        logits = torch.stack([self.conv(x) * (1 + 0.1 * t) for t in range(num_samples)])
        return _Out(logits, x.new_zeros(()), None)


def test_sliding_window_equals_full_image_for_pointwise_model():
    torch.manual_seed(0)
    model = PointwiseModel().eval()
    for h, w in ((50, 70), (20, 30), (48, 48)):
        x = torch.randn(2, 3, h, w)
        full = predict_probs(model, x, 3, "original", 32)
        slid = predict_probs(model, x, 3, "sliding_window", 32)
        assert slid.shape == full.shape == (2, 3, h, w)
        assert torch.allclose(slid, full, atol=1e-6)
        assert torch.allclose(full.sum(1), torch.ones(2, h, w), atol=1e-5)
    assert _window_starts(70, 32, 22) == [0, 22, 38] and _window_starts(20, 32, 22) == [0]
    crop = predict_probs(model, torch.randn(1, 3, 50, 70), 1, "center_crop", 32)
    assert crop.shape == (1, 3, 32, 32)
    assert center_crop(torch.arange(50 * 70).view(50, 70), 32)[0, 0].item() == 9 * 70 + 19


def test_evaluate_perfect_and_sharded():
    from npsemiseg.engine.context import RunContext

    class Oracle(nn.Module):  # channel c of the image is the one-hot of the mask
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x, num_samples=1):
            return _Out((x * 20)[None].expand(num_samples, *x.shape), x.new_zeros(()), None)

    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(5):
        m = torch.randint(0, 3, (12, 16), generator=g)
        m[0, 0] = 255
        items.append({"image": F.one_hot(m.clamp(max=2), 3).permute(2, 0, 1).float(), "mask": m, "id": "x"})
    res = evaluate(Oracle(), items, 3, mode="original", num_samples=2, batch_size=2)
    assert res["val/miou"] == pytest.approx(1.0) and res["val/pixel_acc"] == pytest.approx(1.0)
    assert [res[f"val/iou/{c}"] for c in range(3)] == [pytest.approx(1.0)] * 3
    assert res["val/ece"] < 0.01 and math.isnan(res["val/err_auroc"])  # no errors: AUROC undefined

    class Half(RunContext):  # rank 1 of 2 evaluates only its shard (items 1 and 3); no-op reduce
        rank, world_size = 1, 2

    shard = evaluate(Oracle(), items, 3, mode="center_crop", crop_size=8, ctx=Half("cpu"))
    assert shard["val/miou"] == pytest.approx(1.0)
