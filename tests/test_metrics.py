"""Metrics: hand-computed cases, torchmetrics cross-checks, merge/all-reduce, ignore handling."""
from __future__ import annotations

import math

import pytest
import torch

from npsemiseg.metrics import (
    ConfusionMatrix,
    UncertaintyMeter,
    ece,
    entropy,
    error_auroc,
    pavpu,
    pavpu_counts,
)


def _random_seg(n: int, c: int, hw: int, seed: int, ignore_frac: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, hw, hw), generator=g)
    pred = torch.where(torch.rand(n, hw, hw, generator=g) < 0.6, target, torch.randint(0, c, (n, hw, hw), generator=g))
    drop = torch.rand(n, hw, hw, generator=g) < ignore_frac
    target[drop] = 255
    return pred, target


def _random_probs(n: int, c: int, hw: int, seed: int, sharp: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, hw, hw), generator=g)
    logits = torch.randn(n, c, hw, hw, generator=g) * sharp
    logits.scatter_add_(1, target[:, None], torch.full((n, 1, hw, hw), 2.0))  # better than chance
    return logits.softmax(1), target


# ----------------------------------------------------------------------------- confusion matrix / mIoU

def test_confusion_matrix_hand_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 254]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = ConfusionMatrix(4)
    cm.update(pred[None], target[None])
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    out = cm.compute()
    # IoU: c0 = 1/(2+2-1) = 1/3, c1 = 2/(2+3-2) = 2/3, c2 = 1/(2+1-1) = 1/2, c3 absent (nan, not averaged)
    assert out["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(out["iou"][3])
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 6)


def test_class_present_only_in_prediction_counts_with_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    out = cm.compute()
    assert out["iou"][0] == pytest.approx(0.5) and out["iou"][2] == 0.0 and math.isnan(out["iou"][1])
    assert out["miou"] == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_matches_torchmetrics(seed: int):
    from torchmetrics.classification import MulticlassJaccardIndex  # local: keeps spawned test workers light

    c = 6
    pred, target = _random_seg(3, c, 24, seed)
    target[target == 5] = 255  # class 5 absent from targets, still predicted -> both count it with IoU 0
    ours = ConfusionMatrix(c)
    tm = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")
    tm_none = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="none")
    for i in range(3):  # streaming over batches
        ours.update(pred[i : i + 1], target[i : i + 1])
        tm.update(pred[i : i + 1], target[i : i + 1])
        tm_none.update(pred[i : i + 1], target[i : i + 1])
    out = ours.compute()
    assert out["miou"] == pytest.approx(float(tm.compute()), abs=1e-6)
    assert out["iou"] == pytest.approx(tm_none.compute().tolist(), abs=1e-6)


def test_fully_absent_class_excluded_like_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    c = 5
    pred, target = _random_seg(2, 4, 16, seed=3)  # classes 0..3 only; class 4 never in target nor prediction
    ours = ConfusionMatrix(c)
    ours.update(pred, target)
    tm = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")
    out = ours.compute()
    assert math.isnan(out["iou"][4])
    assert out["miou"] == pytest.approx(float(tm(pred, target)), abs=1e-6)


def test_padding_254_ignored_like_255():
    pred, target = _random_seg(2, 4, 16, seed=4)
    padded = target.clone()
    padded[:, :3] = 254
    as_ignore = target.clone()
    as_ignore[:, :3] = 255
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred, padded)
    b.update(pred, as_ignore)
    assert torch.equal(a.mat, b.mat)
    assert int(a.mat.sum()) == int(((as_ignore != 255)).sum())


def test_merge_and_all_reduce_equal_whole():
    pred, target = _random_seg(4, 5, 16, seed=5)
    whole, h1, h2 = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    h1.update(pred[:2], target[:2])
    h2.update(pred[2:], target[2:])
    other = h2.mat.clone()

    def fake_sum(t: torch.Tensor) -> torch.Tensor:  # what a 2-rank all_reduce_sum does on rank 0
        t += other
        return t

    h1_copy = ConfusionMatrix(5)
    h1_copy.merge(h1)
    h1.all_reduce(fake_sum)
    h1_copy.merge(h2)
    assert torch.equal(h1.mat, whole.mat) and torch.equal(h1_copy.mat, whole.mat)
    ConfusionMatrix(5).all_reduce()  # no process group: a no-op, no error
    with pytest.raises(ValueError):
        h1.merge(ConfusionMatrix(6))


def test_out_of_range_labels_rejected_and_reset():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    cm.reset()
    assert int(cm.mat.sum()) == 0 and math.isnan(cm.compute()["miou"])


# ----------------------------------------------------------------------------- pure uncertainty functions

def test_entropy_values():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert entropy(p, dim=1).tolist() == pytest.approx([0.0, math.log(4), math.log(2)])


def test_ece_hand_case_and_perfect_calibration():
    # bin (0.6, 0.667]: conf 0.65 x2, one correct -> gap |0.5 - 0.65| ; bin (0.933, 1]: conf 1.0 x2, both correct
    conf = torch.tensor([0.65, 0.65, 1.0, 1.0])
    correct = torch.tensor([1, 0, 1, 1])
    assert ece(conf, correct, n_bins=15) == pytest.approx(0.15 * 2 / 4)
    # exact construction: in each bin, a fraction equal to the confidence is correct -> ECE 0
    conf = torch.tensor([0.75] * 4 + [0.5] * 2 + [0.9] * 10, dtype=torch.float64)
    correct = torch.tensor([1, 1, 1, 0] + [1, 0] + [1] * 9 + [0])
    assert ece(conf, correct, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    # sampled construction: correct ~ Bernoulli(conf) -> ECE close to 0; over-confident -> large
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(200_000, generator=g) * 0.9 + 0.1
    correct = torch.rand(200_000, generator=g) < conf
    assert ece(conf, correct) < 0.01
    assert ece(torch.full((1000,), 0.95), torch.rand(1000, generator=g) < 0.5) > 0.4


def test_pavpu_hand_case():
    correct = torch.zeros(4, 4, dtype=torch.bool)
    unc = torch.zeros(4, 4)
    correct[:2, :2] = True  # patch TL: accurate, certain      -> ac
    correct[:2, 2:] = True
    unc[:2, 2:] = 1.0  # patch TR: accurate, uncertain     -> au
    correct[2:, :2] = torch.tensor([[True, False], [False, False]])  # acc 0.25 -> inaccurate, certain -> ic
    unc[2:, 2:] = 1.0  # patch BR: inaccurate, uncertain   -> iu
    counts = pavpu_counts(correct, unc, unc_threshold=0.5, patch=2)
    assert counts.tolist() == [1, 1, 1, 1]
    assert pavpu(correct, unc, unc_threshold=0.5, patch=2) == pytest.approx(0.5)
    # only valid pixels count: making the wrong pixels of BL invalid makes it accurate (1/1 correct)
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[2:, :2] = torch.tensor([[True, False], [False, False]])
    valid[:2, :2] = False  # TL has no valid pixel -> skipped
    counts = pavpu_counts(correct, unc, unc_threshold=0.5, patch=2, valid=valid)
    assert counts.tolist() == [1, 1, 0, 1]


def test_pavpu_partial_border_patches():
    correct = torch.ones(1, 5, 5, dtype=torch.bool)
    unc = torch.zeros(1, 5, 5)
    # 5x5 with patch 4 -> 2x2 tiles (border tiles partial), all accurate and certain
    assert pavpu_counts(correct, unc, 0.5, patch=4).tolist() == [4, 0, 0, 0]


def test_error_auroc_exact_cases_and_torchmetrics():
    from torchmetrics.functional.classification import binary_auroc

    err = torch.tensor([0, 0, 1, 1])
    assert error_auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), err) == 1.0
    assert error_auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), err) == 0.0
    assert error_auroc(torch.tensor([0.1, 0.3, 0.3, 0.4]), err) == pytest.approx(0.875)  # one tie -> half
    assert math.isnan(error_auroc(torch.rand(5), torch.zeros(5)))
    g = torch.Generator().manual_seed(1)
    unc = torch.rand(5000, generator=g).round(decimals=2)  # many ties
    e = (torch.rand(5000, generator=g) < unc * 0.7).long()
    assert error_auroc(unc, e) == pytest.approx(float(binary_auroc(unc, e)), abs=1e-6)
    independent = error_auroc(torch.rand(200_000, generator=g), torch.rand(200_000, generator=g) < 0.3)
    assert independent == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------- streaming meter

def test_meter_matches_pure_functions():
    c = 5
    probs, target = _random_probs(3, c, 20, seed=2)
    target[:, :, :3] = 255
    target[0, 0] = 254
    meter = UncertaintyMeter(c, n_bins=15, patch=4)
    meter.update(probs, target)
    out = meter.compute()

    valid = (target != 255) & (target != 254)
    conf, pred = probs.max(1)
    correct = pred == target
    unc = entropy(probs)
    assert out["ece"] == pytest.approx(ece(conf[valid], correct[valid]), abs=1e-9)
    assert out["pavpu"] == pytest.approx(pavpu(correct & valid, unc, 0.5 * math.log(c), 4, valid=valid))
    exact = error_auroc(unc[valid], ~correct[valid])
    assert 0.5 < exact < 1.0  # the construction is informative, so this is a non-trivial comparison
    assert out["err_auroc"] == pytest.approx(exact, abs=1e-3)


def test_binned_auroc_converges_to_exact_with_more_bins():
    c = 4
    probs, target = _random_probs(4, c, 32, seed=7, sharp=6.0)  # sharp -> many near-zero entropies
    unc = entropy(probs)
    exact = error_auroc(unc, probs.argmax(1) != target)
    gaps = []
    for bins in (8, 64, 4096):
        meter = UncertaintyMeter(c, auroc_bins=bins)
        meter.update(probs, target)
        gaps.append(abs(meter.compute()["err_auroc"] - exact))
    assert gaps[-1] < 1e-3
    assert gaps[0] > gaps[-1]


def test_meter_auroc_perfect_separation_and_independent():
    c = 3
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    probs = torch.zeros(1, c, 8, 8)
    probs[:, 0] = 1.0  # confident and correct
    probs[:, :, 4:] = torch.tensor([0.2, 0.5, 0.3])[:, None, None]  # uncertain and wrong (argmax 1)
    meter = UncertaintyMeter(c)
    meter.update(probs, target)
    out = meter.compute()
    assert out["err_auroc"] == 1.0
    assert out["pavpu"] == 1.0  # every patch is either accurate+certain or inaccurate+uncertain
    # uncertainty independent of errors -> 0.5
    g = torch.Generator().manual_seed(3)
    probs = torch.randn(2, c, 96, 96, generator=g).mul(2).softmax(1)
    target = torch.randint(0, c, (2, 96, 96), generator=g)
    meter = UncertaintyMeter(c)
    meter.update(probs, target)
    assert meter.compute()["err_auroc"] == pytest.approx(0.5, abs=0.02)


def test_meter_merge_and_all_reduce_equal_whole():
    c = 4
    probs, target = _random_probs(4, c, 16, seed=9)
    target[1, 2:5] = 255
    whole, a, b = UncertaintyMeter(c), UncertaintyMeter(c), UncertaintyMeter(c)
    whole.update(probs, target)
    a.update(probs[:2], target[:2])
    b.update(probs[2:], target[2:])
    states = {n: getattr(b, n).clone() for n in b._state_names()}
    merged = UncertaintyMeter(c)
    merged.merge(a)
    merged.merge(b)

    # all_reduce via a callable: emulate rank 0 summing with rank 1's state (matched by call order)
    order = iter(b._state_names())

    def rank_sum(t: torch.Tensor) -> torch.Tensor:
        return t.add_(states[next(order)])

    a.all_reduce(rank_sum)
    for m in (merged, a):
        out, ref = m.compute(), whole.compute()
        for k in ("ece", "pavpu", "err_auroc"):
            assert out[k] == pytest.approx(ref[k], abs=1e-12), k
        assert torch.equal(m.pavpu_counts, whole.pavpu_counts)
    with pytest.raises(ValueError, match="settings"):
        merged.merge(UncertaintyMeter(c, n_bins=10))


def test_meter_ignores_254_255_and_validates_shapes():
    c = 3
    probs, target = _random_probs(1, c, 12, seed=11)
    base = UncertaintyMeter(c)
    base.update(probs[:, :, :6], target[:, :6])
    masked = target.clone()
    masked[:, 6:] = 255
    masked[:, 6:8] = 254
    m = UncertaintyMeter(c)
    m.update(probs, masked)
    assert m.ece_count.sum() == base.ece_count.sum() == 6 * 12
    assert m.compute()["ece"] == pytest.approx(base.compute()["ece"])
    assert m.compute()["err_auroc"] == pytest.approx(base.compute()["err_auroc"])
    empty = UncertaintyMeter(c)
    assert all(math.isnan(v) for v in empty.compute().values())
    with pytest.raises(ValueError):
        empty.update(probs[:, :2], target)
    with pytest.raises(ValueError):
        empty.update(probs, target[:, :5])


def _dist_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    pred, target = _random_seg(4, 5, 16, seed=5)
    probs, ptarget = _random_probs(4, 5, 16, seed=6)
    cm, um = ConfusionMatrix(5), UncertaintyMeter(5)
    cm.update(pred[rank::world], target[rank::world])
    um.update(probs[rank::world], ptarget[rank::world])
    cm.all_reduce()  # default path: torch.distributed.all_reduce
    um.all_reduce()
    if rank == 0:
        torch.save({"mat": cm.mat, **um.compute()}, out_file)
    dist.destroy_process_group()


def test_default_all_reduce_uses_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out.pt"
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    pred, target = _random_seg(4, 5, 16, seed=5)
    probs, ptarget = _random_probs(4, 5, 16, seed=6)
    cm, um = ConfusionMatrix(5), UncertaintyMeter(5)
    cm.update(pred, target)
    um.update(probs, ptarget)
    assert torch.equal(got["mat"], cm.mat)
    for k, v in um.compute().items():
        assert got[k] == pytest.approx(v, abs=1e-12)


def test_device_argument_and_reset_keep_device():
    cm = ConfusionMatrix(3, device="meta")
    assert cm.mat.device.type == "meta"
    um = UncertaintyMeter(3, device="meta")
    assert um.hist_ok.device.type == "meta"
    um.reset()
    assert um.ece_count.device.type == "meta" and um.pavpu_counts.dtype == torch.int64
