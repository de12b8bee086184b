"""The training loop on tiny synthetic data: loss goes down, supervised mode ignores unlabelled data, banks
are shared with the teacher, checkpoints load with weights_only=True, and resume is exact."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from npsemiseg.config import apply_overrides
from npsemiseg.engine import LocalContext, build_state, fit, train_step
from npsemiseg.engine.checkpoint import CHECKPOINT_KEYS

CONTRACT_KEYS = set(CHECKPOINT_KEYS) | {"metrics", "best_miou"}


def _batches(cfg, n_l=2, n_u=2):
    from npsemiseg.data import build_datasets

    data = build_datasets(cfg)
    torch.manual_seed(0)
    bl = [data.labelled[i] for i in range(n_l)]
    bu = [data.unlabelled[i] for i in range(n_u)]
    stack = lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]}  # noqa: E731
    return stack(bl), stack(bu), data.num_classes


def test_steps_on_a_fixed_batch_reduce_the_loss(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"train.iters": 1000, "train.lr": 0.02, "train.conf_threshold": 0.0})
    bl, bu, n_cls = _batches(cfg)
    torch.manual_seed(0)
    state = build_state(cfg, num_classes=n_cls)
    sup, unsup = [], []
    for _ in range(6):
        m = train_step(state, bl, bu)
        sup.append(m["train/loss_sup"])
        unsup.append(m["train/loss_unsup"])
        assert 0.0 <= m["train/mask_ratio"] <= 1.0 and m["train/loss_kl"] >= 0.0
    assert state.step == 6
    assert sum(sup[-2:]) < 0.8 * sum(sup[:2]), sup
    assert unsup[0] > 0  # threshold 0: every unpadded pixel is pseudo-labelled
    # the teacher holds the student's banks (same centres for student, teacher and evaluation)
    s_head, t_head = state.model.np_head, state.teacher.np_head
    assert int(s_head.context_bank.count.sum()) > 0 and int(s_head.target_bank.count.sum()) > 0
    for name, buf in s_head.named_buffers():
        assert torch.equal(buf, dict(t_head.named_buffers())[name]), name


def test_supervised_mode_ignores_unlabelled_data(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"train.semi": False})
    bl, bu, n_cls = _batches(cfg)
    garbage = {k: (torch.randn_like(v) * 50 if v.is_floating_point() else v) for k, v in bu.items()}
    weights = []
    for batch_u in (None, bu, garbage):
        torch.manual_seed(1)
        state = build_state(cfg, num_classes=n_cls)
        m = train_step(state, bl, batch_u)
        assert m["train/loss_unsup"] == 0.0 and m["train/mask_ratio"] == 0.0
        weights.append(state.model.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]) and torch.equal(weights[0][k], weights[2][k]), k
    # and semi mode does use them
    semi = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, semi=True))
    torch.manual_seed(1)
    state = build_state(semi, num_classes=n_cls)
    train_step(state, bl, garbage)
    assert any(not torch.equal(weights[0][k], v) for k, v in state.model.state_dict().items())


class _Killed(Exception):
    pass


class _StopAfter(LocalContext):
    """Simulates a crash right after the report (and checkpoint) at ``stop`` steps."""

    def __init__(self, out_dir, stop: int) -> None:
        super().__init__(out_dir, "cpu")
        self.stop = stop

    def report(self, metrics, checkpoint=None):
        super().report(metrics, checkpoint)
        if metrics["step"] == self.stop:
            raise _Killed


@pytest.mark.slow
def test_resume_is_exact_and_checkpoints_load_weights_only(tiny_cfg, tmp_path):
    # 23 unlabelled tiny images / 6 = 3 steps per epoch: the stop at step 2 is mid-epoch and the resumed run
    # crosses an epoch boundary
    over = {"train.iters": 4, "train.eval_every": 2, "data.batch_size_l": 1, "data.batch_size_u": 6,
            "data.val_limit": 2, "model.t_eval": 2}
    straight = apply_overrides(tiny_cfg, {**over, "out_dir": str(tmp_path / "a")})
    resumed = apply_overrides(tiny_cfg, {**over, "out_dir": str(tmp_path / "b")})
    m_a = fit(straight)
    with pytest.raises(_Killed):
        fit(resumed, _StopAfter(resumed.out_dir, stop=2))
    mid = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert mid["step"] == 2 and mid["sampler"] == {"epoch": 0, "index": 2}
    ctx = LocalContext(resumed.out_dir, "cpu")
    m_b = fit(resumed, ctx)
    assert [r["step"] for r in ctx.reports] == [4]

    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert CONTRACT_KEYS <= set(a) and a["step"] == b["step"] == 4
    assert a["sampler"] == b["sampler"] == {"epoch": 1, "index": 1}
    assert not any(k.startswith("module.") for k in a["model"])
    for part in ("model", "teacher"):
        for k, v in a[part].items():
            assert torch.allclose(v.float(), b[part][k].float(), atol=1e-6, rtol=0), (part, k)
    assert any("context_bank" in k for k in a["teacher"])  # banks travel in the checkpoint
    assert m_a["val/miou"] == pytest.approx(m_b["val/miou"], abs=1e-6)
    assert m_a["val/best_miou"] == pytest.approx(m_b["val/best_miou"], abs=1e-6)
    assert (tmp_path / "a" / "tb").is_dir() and any((tmp_path / "a" / "tb").iterdir())
    # a finished run resumes to "done" without training further
    assert fit(straight)["step"] == 4
