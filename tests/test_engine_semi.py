"""The semi-supervised recipe's schedules and diagnostics: key validation, ramp and threshold values, pseudo-label
coverage/accuracy on a hand-built case, the paper's loss at default keys, and unlabelled ground truth items."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npsemiseg.config import TrainConfig, apply_overrides, load_config
from npsemiseg.data.transforms import UnlabelledTransform
from npsemiseg.engine import build_state, train_step
from npsemiseg.engine.diagnostics import pl_metrics
from npsemiseg.engine.losses import pseudo_labels
from npsemiseg.engine.schedule import ramp_factor, threshold_at, unsup_weight_at
from npsemiseg.engine.thresholds import class_thresholds, update_class_conf
from npsemiseg.errors import ConfigError


@pytest.mark.parametrize("key,value", [
    ("train.unsup_ramp", -1), ("train.threshold_ramp", -5), ("train.conf_threshold_start", 1.5),
    ("train.conf_threshold_start", -0.5), ("train.unsup_ramp", 2.5), ("train.eval_both", "maybe"),
    ("train.pl_gt_metrics", 3), ("train.threshold_mode", "adaptive"), ("train.unsup_feature_dropout", 1.0),
    ("train.strong_views", 3), ("train.strong_views", 0),
])
def test_new_keys_reject_bad_values_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')}:"):
        load_config(None, {key: value})


def test_new_keys_default_to_the_paper_recipe():
    t = TrainConfig()
    assert (t.unsup_ramp, t.threshold_ramp, t.conf_threshold_start) == (0, 0, -1.0)
    assert not t.eval_both and not t.pl_gt_metrics
    for step in (0, 1, 500, 10**6):
        assert unsup_weight_at(step, t) == t.unsup_weight and threshold_at(step, t) == t.conf_threshold


def test_ramp_and_threshold_schedules_numerically():
    assert ramp_factor(0, 100) == pytest.approx(math.exp(-5))
    assert ramp_factor(50, 100) == pytest.approx(math.exp(-1.25))
    assert ramp_factor(90, 100) == pytest.approx(math.exp(-0.05))
    assert ramp_factor(100, 100) == 1.0 and ramp_factor(7, 0) == 1.0
    vals = [ramp_factor(s, 100) for s in range(101)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))
    t = TrainConfig(unsup_weight=2.0, unsup_ramp=100, conf_threshold=0.9, conf_threshold_start=0.5,
                    threshold_ramp=200)
    assert unsup_weight_at(50, t) == pytest.approx(2.0 * math.exp(-1.25))
    assert threshold_at(0, t) == pytest.approx(0.5)
    assert threshold_at(100, t) == pytest.approx(0.7)
    assert threshold_at(200, t) == threshold_at(10**5, t) == 0.9
    # a start of -1 switches the threshold ramp off whatever its length
    assert threshold_at(0, TrainConfig(conf_threshold=0.9, threshold_ramp=200)) == 0.9


def test_pl_metrics_on_a_hand_built_case():
    # 1 image, 2 x 3 pixels, 2 classes; confidence of class 0 per pixel
    p0 = torch.tensor([[0.97, 0.95, 0.10], [0.60, 0.02, 0.99]])
    probs = torch.stack([p0, 1 - p0])[None]  # 1 x 2 x 2 x 3
    ignore = torch.tensor([[[0, 0, 0], [0, 0, 254]]])  # last pixel padded
    pl = pseudo_labels(probs, ignore, conf_threshold=0.9)
    # labels 0 0 1 / 0 1 (0); masked: (0,0) (0,1) (0,2) (1,1): 4 of 5 unpadded
    gt = torch.tensor([[[0, 1, 1], [0, 255, 1]]])  # (0,1) wrong, (1,1) unknown
    m = pl_metrics(pl, gt)
    assert m["train/pl_coverage"] == pytest.approx(4 / 5)
    assert m["train/pl_accuracy"] == pytest.approx(2 / 3)  # masked & known: (0,0) ok (0,1) wrong (0,2) ok
    assert m["train/teacher_acc_u"] == pytest.approx(3 / 4)  # known: (0,0) (0,1) (0,2) (1,0): 3 right
    assert m["train/pl_correct"] == pytest.approx(2 / 4)
    # class 0 known at (0,0) (1,0): 1 of 2 masked, 1 right; class 1 at (0,1) (0,2): 2 of 2 masked, 1 right
    assert m["train/pl_coverage_cls"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert m["train/pl_correct_cls"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert pl_metrics(pl) == {"train/pl_coverage": pytest.approx(0.8)}
    none = pl_metrics(pl, torch.full_like(gt, 255))
    assert math.isnan(none["train/pl_accuracy"]) and math.isnan(none["train/teacher_acc_u"])


def test_class_adaptive_thresholds_by_hand():
    conf = torch.tensor([0.95, 0.76, 0.5])
    assert class_thresholds(conf, 0.9).tolist() == pytest.approx([0.9, 0.72, 0.9 * 0.5 / 0.95])
    # per-class threshold tensor: pixel of class 1 at 0.75 passes 0.72, a class-0 pixel at 0.85 fails 0.9
    probs = torch.tensor([[0.85, 0.25, 0.1], [0.15, 0.75, 0.1], [0.0, 0.0, 0.8]]).T.reshape(1, 3, 1, 3)
    pl = pseudo_labels(probs, torch.zeros(1, 1, 3, dtype=torch.long), class_thresholds(conf, 0.9))
    assert pl.label.tolist() == [[[0, 1, 2]]] and pl.mask.tolist() == [[[False, True, True]]]
    # EMA of the mean confidence per pseudo-label class; absent classes keep their value; padding is ignored
    pl.ignore[0, 0, 2] = 254
    new = update_class_conf(torch.ones(3), pl, momentum=0.9)
    assert new.tolist() == pytest.approx([0.9 + 0.1 * 0.85, 0.9 + 0.1 * 0.75, 1.0])


def test_class_adaptive_state_is_checkpointed(tiny_cfg, one_thread):
    from npsemiseg.engine.step import checkpoint_dict, restore_state

    cfg = apply_overrides(tiny_cfg, {"train.threshold_mode": "class_adaptive"})
    bl, bu, data = _batches(cfg)
    state = build_state(cfg, num_classes=data.num_classes)
    m = train_step(state, bl, bu)
    assert state.class_conf is not None and state.class_conf.shape == (data.num_classes,)
    assert bool((state.class_conf < 1).any()) and m["train/conf_threshold_min"] <= m["train/conf_threshold"]
    other = build_state(cfg, num_classes=data.num_classes)
    restore_state(other, checkpoint_dict(state), rng=False)
    assert torch.equal(other.class_conf, state.class_conf)


def _batches(cfg, n=2):
    from npsemiseg.data import build_datasets

    data = build_datasets(cfg)
    torch.manual_seed(0)

    def stack(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    return stack([data.labelled[i] for i in range(n)]), stack([data.unlabelled[i] for i in range(n)]), data


def test_default_keys_give_the_paper_loss_and_ramp_scales_only_the_unsup_term(tiny_cfg, one_thread):
    cfg = apply_overrides(tiny_cfg, {"train.conf_threshold": 0.0, "train.pl_gt_metrics": True})
    bl, bu, data = _batches(cfg)
    assert "gt" in bu and bool((bu["gt"] != 255).any())  # the tiny tree's unlabelled pool has masks
    runs = {}
    for name, over in {"paper": {}, "ramp": {"train.unsup_ramp": 10, "train.unsup_weight": 2.0}}.items():
        c = apply_overrides(cfg, over)
        torch.manual_seed(3)
        state = build_state(c, num_classes=data.num_classes)
        runs[name] = ms = [train_step(state, bl, bu) for _ in range(2)]
        for step, m in enumerate(ms):
            w = unsup_weight_at(step, c.train)
            expected = m["train/loss_sup"] + w * m["train/loss_unsup"] + c.model.kl_weight * m["train/loss_kl"]
            assert m["train/loss"] == pytest.approx(expected, rel=1e-5)
            assert m["train/unsup_weight"] == pytest.approx(w) and m["train/conf_threshold"] == 0.0
            assert m["train/pl_coverage"] == pytest.approx(m["train/mask_ratio"], abs=0.2)
            assert 0.0 <= m["train/pl_accuracy"] <= 1.0
    assert runs["paper"][0]["train/unsup_weight"] == 1.0
    assert runs["ramp"][0]["train/unsup_weight"] == pytest.approx(2.0 * math.exp(-5))
    # same initial weights and batch: the first step's losses agree, only the weighting differs
    assert runs["ramp"][0]["train/loss_sup"] == pytest.approx(runs["paper"][0]["train/loss_sup"], rel=1e-6)


def test_unlabelled_gt_follows_the_weak_view_and_keeps_the_random_draws():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[:, 25:] = 3
    mask[0, 0] = 255
    tf = UnlabelledTransform(48, 0.8, 1.2)
    torch.manual_seed(5)
    plain = tf(image)
    torch.manual_seed(5)
    with_gt = tf(image, mask)
    torch.manual_seed(5)
    unknown = tf(image, with_gt=True)
    for k in ("image_w", "image_s", "ignore", "box"):
        assert torch.equal(plain[k], with_gt[k]) and torch.equal(plain[k], unknown[k]), k
    gt, pad = with_gt["gt"], with_gt["ignore"] == 254
    assert "gt" not in plain and bool((unknown["gt"] == 255).all())
    assert bool((gt[pad] == 255).all()) and set(gt[~pad].unique().tolist()) <= {0, 3, 255}
    assert {0, 3} <= set(gt[~pad].unique().tolist())
    # the image's right half (class 3) stays on one side: columns are flipped or not, never mixed
    cols = (gt == 3).any(0)
    assert bool(cols.any()) and bool((~cols).any())


def test_eval_both_reports_teacher_and_student(tiny_cfg, one_thread):
    from npsemiseg.engine import LocalContext, fit

    cfg = apply_overrides(tiny_cfg, {"train.iters": 2, "train.eval_every": 2, "train.eval_both": True,
                                     "train.pl_gt_metrics": True, "data.val_limit": 2})
    m = fit(cfg, LocalContext(cfg.out_dir, "cpu", resume=False))
    assert m["val/teacher_miou"] == m["val/miou"] and 0.0 <= m["val/student_miou"] <= 1.0
    assert 0.0 <= m["train/pl_coverage"] <= 1.0 and "train/unsup_weight" in m


def test_feature_dropout_perturbs_only_the_unlabelled_rows(tiny_cfg, one_thread):
    from npsemiseg.engine.step import _feature_dropout

    state = build_state(tiny_cfg, num_classes=21)
    model = state.model.train()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    ref = model.encoder(x)
    torch.manual_seed(0)
    with _feature_dropout(model, 2, 0.5):
        feats = model.encoder(x)
    assert torch.equal(feats[:2], ref[:2])
    dropped = (feats[2:] == 0).all(-1).all(-1)  # whole channels zeroed, the others scaled by 1 / (1 - p)
    assert 0.2 < float(dropped.float().mean()) < 0.8
    kept = ~dropped
    assert torch.allclose(feats[2:][kept], 2 * ref[2:][kept], atol=1e-5)
    torch.manual_seed(0)
    with _feature_dropout(model, 2, 0.0):
        assert torch.equal(model.encoder(x), ref)
    assert not model.encoder._forward_hooks  # the hook is removed on exit


def test_second_strong_view_is_independent_and_leaves_view_one_unchanged():
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    one, two = UnlabelledTransform(48, 0.8, 1.2), UnlabelledTransform(48, 0.8, 1.2, strong_views=2)
    differs = 0
    for seed in range(4):
        torch.manual_seed(seed)
        a = one(image)
        torch.manual_seed(seed)
        b = two(image)
        assert set(b) == set(a) | {"image_s2", "box2"} and b["image_s2"].shape == a["image_s"].shape
        for k in a:  # view 1 (and the weak view) draw first, so they match the one-view transform
            assert torch.equal(a[k], b[k]), k
        assert b["box2"].shape == a["box"].shape and set(b["box2"].unique().tolist()) <= {0, 1}
        differs += not torch.equal(b["image_s2"], b["image_s"])
    assert differs >= 2  # colour jitter (p=0.8) and blur draw again for the second view


def test_two_strong_views_feed_the_student_and_average_their_losses(tiny_cfg, one_thread, monkeypatch):
    import npsemiseg.engine.step as step_mod

    real, calls = step_mod.masked_ce_loss, []

    def spy(logits, pl):
        value = real(logits, pl)
        calls.append((logits.shape[0], float(value.detach())))
        return value

    monkeypatch.setattr(step_mod, "masked_ce_loss", spy)
    for views in (1, 2):
        cfg = apply_overrides(tiny_cfg, {"train.strong_views": views, "train.conf_threshold": 0.0})
        bl, bu, data = _batches(cfg)
        assert ("image_s2" in bu) == (views == 2)
        state = build_state(cfg, num_classes=data.num_classes)
        rows: list[int] = []
        state.model.register_forward_pre_hook(lambda _m, args, seen=rows: seen.append(args[0].shape[0]))
        calls.clear()
        m = train_step(state, bl, bu)
        assert rows == [2 + 2 * views]  # labelled rows, then each strong view's rows
        assert [c[0] for c in calls] == [2] * views and all(c[1] > 0 for c in calls)
        assert m["train/loss_unsup"] == pytest.approx(sum(c[1] for c in calls) / views, rel=1e-5)


def test_alt_demo_variant_has_other_classes(tmp_path):
    import json

    from npsemiseg.data.synthetic import make_demo_data
    from npsemiseg.errors import UserError

    make_demo_data(tmp_path / "alt", scale="tiny", seed=3, variant="alt")
    summary = json.loads((tmp_path / "alt" / "summary.json").read_text())
    assert summary["variant"] == "alt" and set(summary["voc"]["classes"]) == {"0", "2", "7", "9", "11", "16", "20"}
    from PIL import Image

    seg = tmp_path / "alt" / "voc" / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    ids = set().union(*(np.unique(np.array(Image.open(p))).tolist() for p in seg.glob("*.png")))
    assert ids <= {0, 2, 7, 9, 11, 16, 20} and len(ids) > 2
    with pytest.raises(UserError, match="--variant"):
        make_demo_data(tmp_path / "bad", scale="tiny", variant="nope")
