"""The mean-teacher training step (docs/method.md §4) and the state it works on.

    state = build_state(cfg, ctx)                  # student, teacher, SGD, poly LR, (AMP scaler)
    metrics = train_step(state, batch_l, batch_u)  # one optimiser step + bank update + EMA
    ckpt = checkpoint_dict(state); restore_state(state, ckpt)

Supervised-only (``train.semi=false`` or ``batch_u=None``) is the same step with the unlabelled term off.
Memory-bank rows go through ``ctx.all_gather_rows`` before ``update_banks``, so every rank keeps identical banks.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.config import Config
from npsemiseg.engine.checkpoint import capture_rng, restore_rng
from npsemiseg.engine.context import RunContext, use_sync_bn
from npsemiseg.engine.diagnostics import pl_metrics
from npsemiseg.engine.ema import ema_decay, ema_update, make_teacher
from npsemiseg.engine.losses import PAD, ce_loss, cutmix, masked_ce_loss, ohem_ce_loss, pseudo_labels
from npsemiseg.engine.schedule import PolyLR, build_optimizer, threshold_at, unsup_weight_at
from npsemiseg.engine.thresholds import CLASS_CONF_MOMENTUM, class_thresholds, update_class_conf
from npsemiseg.errors import ConfigError
from npsemiseg.models.resize import downsample_labels, upsample_logits


@dataclass
class TrainState:
    """Everything one training run mutates; ``model`` is the unwrapped student, ``student`` its DDP wrapper."""

    cfg: Config
    ctx: RunContext
    model: nn.Module
    student: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: PolyLR
    scaler: torch.amp.GradScaler | None
    num_classes: int
    step: int = 0
    epoch: int = 0
    index: int = 0  # batches consumed in the current epoch (sampler position)
    best_miou: float = float("-inf")
    best_step: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)
    class_conf: torch.Tensor | None = None  # running per-class teacher confidence (train.threshold_mode)


def build_state(cfg: Config, ctx: RunContext | None = None, num_classes: int | None = None) -> TrainState:
    """Build student (on ctx.device, wrapped by ctx), EMA teacher, optimiser, scheduler and AMP scaler."""
    from npsemiseg.models import build_model

    ctx = ctx or RunContext(cfg.device)
    n_cls = num_classes or cfg.num_classes()
    if n_cls < 2:
        raise ConfigError("data.num_classes: unknown number of classes (set data.num_classes)")
    model = build_model(cfg.model, n_cls).to(ctx.device)
    if use_sync_bn(cfg, ctx.device, ctx.world_size):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    teacher = make_teacher(model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = PolyLR(optimizer, cfg.train.iters, cfg.train.poly_power)
    scaler = None
    if cfg.train.amp and ctx.device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
    return TrainState(cfg=cfg, ctx=ctx, model=model, student=ctx.wrap_model(model), teacher=teacher,
                      optimizer=optimizer, scheduler=scheduler, scaler=scaler, num_classes=n_cls)


def _autocast(state: TrainState):
    if state.scaler is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.float16)


@contextlib.contextmanager
def _feature_dropout(model: nn.Module, n_keep: int, p: float):
    """While active, channel dropout (Dropout2d, rate ``p``) on the encoder features of batch rows ``n_keep:``
    (the unlabelled strong views): UniMatch's feature perturbation folded into the strong-view pass, so it costs
    no extra forward pass. The labelled rows (and so the bank rows) are untouched. No-op when ``p`` is 0."""
    encoder = getattr(model, "encoder", None)
    if p <= 0 or encoder is None:
        yield
        return

    def hook(_mod: nn.Module, _inp: Any, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([feats[:n_keep], F.dropout2d(feats[n_keep:], p, training=True)])

    handle = encoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def update_banks(state: TrainState, query_l: torch.Tensor, mask_l: torch.Tensor,
                 query_u: torch.Tensor | None = None, label_u: torch.Tensor | None = None) -> None:
    """Write this step's rows into the student's banks (all ranks' rows, rank order), then copy them into the
    teacher. Context = labelled rows with ground truth; target = those + unlabelled rows with pseudo-labels."""
    head = getattr(state.model, "np_head", None)
    if head is None:
        return
    size = query_l.shape[-2:]
    share = {"rank": state.ctx.rank, "world_size": state.ctx.world_size}  # the per-step budget is global
    lab_l = downsample_labels(mask_l, size)
    ctx_rows, ctx_lab = head.select_rows(query_l.float(), lab_l, **share)
    tgt_rows, tgt_lab = ctx_rows, ctx_lab
    if query_u is not None and label_u is not None:  # one random draw over labelled + unlabelled pixels
        lab_u = downsample_labels(label_u, query_u.shape[-2:])
        tgt_rows, tgt_lab = head.select_rows(torch.cat([query_l, query_u]).float(), torch.cat([lab_l, lab_u]), **share)
    g = state.ctx.all_gather_rows
    head.update_banks(g(ctx_rows), g(ctx_lab), g(tgt_rows), g(tgt_lab))


def train_step(state: TrainState, batch_l: dict[str, torch.Tensor],
               batch_u: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """One optimiser step on a labelled batch (+ an unlabelled batch when semi-supervised).

    Returns ``train/loss``, ``train/loss_sup``, ``train/loss_unsup``, ``train/loss_kl``, ``train/mask_ratio``
    and ``train/lr`` (backbone group); semi-supervised steps add the pseudo-label diagnostics of
    ``pl_metrics`` and the effective ``train/unsup_weight`` and ``train/conf_threshold`` of this step.
    """
    cfg, dev = state.cfg, state.ctx.device
    tc, mc = cfg.train, cfg.model
    semi = tc.semi and batch_u is not None
    x = batch_l["image"].to(dev, non_blocking=True)
    y = batch_l["mask"].to(dev, non_blocking=True)
    n_l, crop = x.shape[0], x.shape[-2:]

    out_t = pl = pl_mix = None
    inp = x
    if semi:
        u_w = batch_u["image_w"].to(dev, non_blocking=True)
        u_s = batch_u["image_s"].to(dev, non_blocking=True)
        ign = batch_u["ignore"].to(dev, non_blocking=True)
        box = batch_u["box"].to(dev, non_blocking=True)
        state.teacher.eval()
        with torch.no_grad(), _autocast(state), warnings.catch_warnings():
            # before the first bank write the teacher sees empty banks; that is expected here, not at eval
            warnings.filterwarnings("ignore", message=".*empty memory banks.*")
            out_t = state.teacher(u_w, num_samples=mc.t_train)
        with torch.no_grad():
            probs = torch.softmax(upsample_logits(out_t.logits.float(), crop), dim=2).mean(0)
            thr = threshold_at(state.step, tc)
            if tc.threshold_mode == "class_adaptive":
                if state.class_conf is None:
                    state.class_conf = torch.ones(state.num_classes, device=dev)
                pl = pseudo_labels(probs, ign, class_thresholds(state.class_conf, thr), tc.entropy_threshold)
                state.class_conf = update_class_conf(state.class_conf, pl, CLASS_CONF_MOMENTUM)
            else:
                pl = pseudo_labels(probs, ign, thr, tc.entropy_threshold)
            u_mix, pl_mix = cutmix(u_s, box, pl)
            views = [(u_mix, pl_mix)]
            if tc.strong_views == 2:  # UniMatch: a second strong view, mixed with the other batch neighbour
                s2, box2 = batch_u["image_s2"].to(dev, non_blocking=True), batch_u["box2"].to(dev, non_blocking=True)
                views.append(cutmix(s2, box2, pl, shifts=-1))
        inp = torch.cat([x, *(v[0] for v in views)])

    state.student.train()
    with _autocast(state), _feature_dropout(state.model, n_l, tc.unsup_feature_dropout if semi else 0.0):
        out = state.student(inp, num_samples=mc.t_train)
    logits = upsample_logits(out.logits.float().mean(0), crop)  # mean over T of the logits, at crop size
    if tc.ohem:
        loss_sup = ohem_ce_loss(logits[:n_l], y, tc.ohem_thresh, tc.ohem_min_kept)
    else:
        loss_sup = ce_loss(logits[:n_l], y)
    loss_unsup = logits.new_zeros(())
    if semi:  # the mean over strong views, each against the weak view's pseudo-labels (mixed alike)
        chunks = logits[n_l:].chunk(len(views))
        loss_unsup = sum(masked_ce_loss(lg, v_pl) for lg, (_, v_pl) in zip(chunks, views, strict=True)) / len(views)
    loss_kl = out.kl.float() if torch.is_tensor(out.kl) else logits.new_tensor(float(out.kl))
    w_u = unsup_weight_at(state.step, tc) if semi else 0.0
    loss = loss_sup + w_u * loss_unsup + mc.kl_weight * loss_kl

    opt = state.optimizer
    opt.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(opt)
    else:
        loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    if state.scaler is not None:
        state.scaler.step(opt)
        state.scaler.update()
    else:
        opt.step()
    lr = opt.param_groups[0]["lr"]
    state.scheduler.step()

    if out.query is not None:
        label_u = None
        if semi:
            label_u = pl.label.masked_fill(pl.ignore == PAD, PAD)
            if tc.target_bank_filter:
                label_u = label_u.masked_fill(~pl.mask & (pl.ignore != PAD), 255)
        update_banks(state, out.query[:n_l].detach(), y, out_t.query if semi else None, label_u)
    ema_update(state.teacher, state.model, ema_decay(state.step, tc.ema_decay))
    t_head = getattr(state.teacher, "np_head", None)
    if t_head is not None:
        t_head.copy_banks_(state.model.np_head)
    state.step += 1

    if semi:
        valid = (pl_mix.ignore != PAD).sum().clamp_min(1)
        mask_ratio = float(pl_mix.mask.sum() / valid)
    else:
        mask_ratio = 0.0
    metrics = {
        "train/loss": float(loss.detach()),
        "train/loss_sup": float(loss_sup.detach()),
        "train/loss_unsup": float(loss_unsup.detach()),
        "train/loss_kl": float(loss_kl.detach()),
        "train/mask_ratio": mask_ratio,
        "train/lr": float(lr),
    }
    if semi:
        gt = batch_u.get("gt")
        metrics.update(pl_metrics(pl, gt.to(dev) if gt is not None else None))
        metrics["train/unsup_weight"] = w_u
        metrics["train/conf_threshold"] = thr
        if state.class_conf is not None:
            metrics["train/conf_threshold_min"] = float(class_thresholds(state.class_conf, thr).min())
    return metrics


def checkpoint_dict(state: TrainState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full-state checkpoint (docs/CONTRACTS.md), from the unwrapped model, with the RNG states now."""
    ckpt: dict[str, Any] = {
        "model": state.model.state_dict(),
        "teacher": state.teacher.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "sampler": {"epoch": state.epoch, "index": state.index},
        "rng": capture_rng(),
        "config": state.cfg.to_dict(),
        "metrics": {k: v for k, v in state.metrics.items() if isinstance(v, (int, float))},
        "best_miou": state.best_miou,
        "best_step": state.best_step,
        "num_classes": state.num_classes,
    }
    if state.scaler is not None:
        ckpt["scaler"] = state.scaler.state_dict()
    if state.class_conf is not None:
        ckpt["class_conf"] = state.class_conf.detach().cpu()
    if extra:
        ckpt.update(extra)
    return ckpt


def restore_state(state: TrainState, ckpt: dict[str, Any], rng: bool = True) -> None:
    """Load a checkpoint dict into ``state`` (weights, optimiser, scheduler, counters, sampler position, RNG)."""
    state.model.load_state_dict(ckpt["model"])
    state.teacher.load_state_dict(ckpt["teacher"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.scaler is not None and "scaler" in ckpt:
        state.scaler.load_state_dict(ckpt["scaler"])
    state.step = int(ckpt["step"])
    sampler = ckpt.get("sampler", {"epoch": ckpt.get("epoch", 0), "index": 0})
    state.epoch, state.index = int(sampler["epoch"]), int(sampler["index"])
    state.best_miou = float(ckpt.get("best_miou", float("-inf")))
    state.best_step = int(ckpt.get("best_step", -1))
    state.metrics = dict(ckpt.get("metrics", {}))
    if "class_conf" in ckpt:
        state.class_conf = ckpt["class_conf"].to(state.ctx.device)
    if rng and "rng" in ckpt:
        restore_rng(ckpt["rng"])
