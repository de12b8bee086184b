"""THE training loop: ``fit(cfg, ctx)`` runs mean-teacher NP-SemiSeg (or its supervised-only baseline).

    npsemiseg train --config configs/demo.yaml            # CLI
    fit(load_config("configs/demo.yaml"))                 # Python, LocalContext under cfg.out_dir

One epoch = len(unlabelled) / global unlabelled batch steps (labelled list oversampled to match); supervised-only
epochs are len(labelled) / global labelled batch. Every ``train.eval_every`` steps and at the end the loop
evaluates and calls ``ctx.report(metrics, checkpoint)``; a resumed run (``ctx.resume_state()``) continues at the
stored step, mid-epoch, with the stored RNG states, so N/2 + resume + N/2 steps equal N straight steps.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from npsemiseg.config import Config
from npsemiseg.data.seeding import seed_worker
from npsemiseg.engine.checkpoint import seed_everything
from npsemiseg.engine.context import LocalContext, RunContext
from npsemiseg.engine.evaluate import evaluate
from npsemiseg.engine.logger import MetricLogger
from npsemiseg.engine.sampler import ResumableSampler
from npsemiseg.engine.step import TrainState, build_state, checkpoint_dict, restore_state, train_step

log = logging.getLogger("npsemiseg.train")

__all__ = ["fit", "build_state", "train_step", "TrainState", "run_evaluation"]


class _Batches:
    """Labelled (+ unlabelled) DataLoaders over resumable samplers, positioned at (epoch, index)."""

    def __init__(self, cfg: Config, ctx: RunContext, labelled: Dataset, unlabelled: Dataset | None) -> None:
        d = cfg.data
        self.cfg, self.ctx = cfg, ctx
        ws = ctx.world_size
        if unlabelled is not None:
            self.steps_per_epoch = max(len(unlabelled) // (d.batch_size_u * ws), 1)
        else:
            self.steps_per_epoch = max(len(labelled) // (d.batch_size_l * ws), 1)
        self.samplers = [ResumableSampler(len(labelled), self.steps_per_epoch * d.batch_size_l, rank=ctx.rank,
                                          world_size=ws, seed=cfg.seed)]
        sets, sizes = [labelled], [d.batch_size_l]
        if unlabelled is not None:
            self.samplers.append(ResumableSampler(len(unlabelled), self.steps_per_epoch * d.batch_size_u,
                                                  rank=ctx.rank, world_size=ws, seed=cfg.seed + 1))
            sets.append(unlabelled)
            sizes.append(d.batch_size_u)
        self.generators = [torch.Generator() for _ in sets]
        pin = ctx.device.type == "cuda"
        self.loaders = [
            DataLoader(ds, batch_size=b, sampler=s, num_workers=d.num_workers, drop_last=True, pin_memory=pin,
                       worker_init_fn=seed_worker, generator=g, persistent_workers=d.num_workers > 0)
            for ds, b, s, g in zip(sets, sizes, self.samplers, self.generators, strict=True)
        ]
        self.iters: list = []

    def position(self, epoch: int, index: int) -> None:
        """Restart the iterators at batch ``index`` of ``epoch`` (worker seeds from seed, rank, epoch, index)."""
        for k, (s, g) in enumerate(zip(self.samplers, self.generators, strict=True)):
            s.set_epoch(epoch, index * self.loaders[k].batch_size)
            g.manual_seed(hash((self.cfg.seed, self.ctx.rank, epoch, index, k)) & 0x7FFF_FFFF_FFFF)
        self.iters = [iter(loader) for loader in self.loaders]

    def next(self) -> tuple[dict, dict | None]:
        batches = [next(it) for it in self.iters]
        return batches[0], (batches[1] if len(batches) > 1 else None)


def run_evaluation(state: TrainState, val_set: Dataset) -> dict[str, float]:
    """Evaluate the teacher (or student, ``train.eval_model``) on ``val_set`` with the configured mode.

    With ``train.eval_both`` the other model is evaluated too, and ``val/teacher_miou`` and ``val/student_miou``
    are added (``val/miou`` and the other ``val/*`` stay those of ``train.eval_model``).
    """
    cfg = state.cfg

    def run(name: str) -> dict[str, float]:
        model = state.teacher if name == "teacher" else state.model
        return evaluate(model, val_set, state.num_classes, mode=cfg.train.val_mode, crop_size=cfg.data.crop_size,
                        num_samples=cfg.model.t_eval, ctx=state.ctx, limit=cfg.data.val_limit,
                        batch_size=cfg.data.val_batch_size, seed=cfg.seed)

    main = cfg.train.eval_model
    out = run(main)
    if cfg.train.eval_both:
        other = "student" if main == "teacher" else "teacher"
        out[f"val/{main}_miou"] = out["val/miou"]
        out[f"val/{other}_miou"] = run(other)["val/miou"]
    return out


def fit(cfg: Config, ctx: RunContext | None = None) -> dict[str, Any]:
    """Train for ``train.iters`` steps (resuming when ctx has a checkpoint); return the final metrics.

    The returned dict has the last report's metrics: ``val/miou`` (last evaluation), ``val/best_miou`` and
    ``val/best_step``, the ``train/*`` means since the previous report, ``step`` and ``epoch``.
    """
    from npsemiseg.data import build_datasets

    ctx = ctx or LocalContext(cfg.out_dir, cfg.device)
    seed_everything(cfg.seed)
    data = build_datasets(cfg)
    state = build_state(cfg, ctx, num_classes=data.num_classes)
    resume = ctx.resume_state()
    if resume is not None:
        restore_state(state, resume)
        log.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch, state.index)
    else:
        seed_everything(cfg.seed + 1000 * ctx.rank + 1)  # per-rank augmentation streams, same initial weights
    semi = cfg.train.semi and data.unlabelled is not None and len(data.unlabelled) > 0
    if cfg.train.semi and not semi:
        log.warning("split %s has no unlabelled images: training supervised-only", cfg.data.split)
    batches = _Batches(cfg, ctx, data.labelled, data.unlabelled if semi else None)
    if state.step >= cfg.train.iters:
        return dict(state.metrics)
    batches.position(state.epoch, state.index)
    split = data.split_info.to_dict() if hasattr(data.split_info, "to_dict") else {}
    if ctx.is_main:
        log.info("training %s: %s, %d steps, %d steps/epoch, split %s", cfg.name,
                 "semi-supervised" if semi else "supervised-only", cfg.train.iters, batches.steps_per_epoch,
                 split.get("name", cfg.data.split))
    logger = MetricLogger(cfg.out_dir, cfg.train.iters, state.step, enabled=ctx.is_main)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # per key: NaN values (e.g. no pseudo-label passed) are left out of the mean
    n_sum, t0 = 0, time.perf_counter()
    last_val = {k: v for k, v in state.metrics.items() if k.startswith("val/")}
    try:
        while state.step < cfg.train.iters:
            bl, bu = batches.next()
            m = train_step(state, bl, bu)
            state.index += 1
            if state.index >= batches.steps_per_epoch:
                state.epoch, state.index = state.epoch + 1, 0
                batches.position(state.epoch, state.index)
            for k, v in m.items():
                if math.isfinite(v):
                    sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
            n_sum += 1
            step = state.step
            if step % cfg.train.log_every == 0:
                logger.scalars(step, m)
                if ctx.is_main and not logger.shows_bar:
                    log.info("step %d/%d: loss %.4f (sup %.4f, unsup %.4f, kl %.4f), mask %.2f, lr %.2e", step,
                             cfg.train.iters, m["train/loss"], m["train/loss_sup"], m["train/loss_unsup"],
                             m["train/loss_kl"], m["train/mask_ratio"], m["train/lr"])
            logger.advance(1, {"train/loss": m["train/loss"]})
            final = step == cfg.train.iters
            do_eval = step % cfg.train.eval_every == 0 or final
            every = cfg.train.ckpt_every
            do_ckpt = do_eval if every == 0 else (step % every == 0 or final)
            if not (do_eval or do_ckpt):
                continue
            step_time = (time.perf_counter() - t0) / max(n_sum, 1)
            if do_eval:
                last_val = run_evaluation(state, data.val)
                miou = last_val["val/miou"]
                if not math.isnan(miou) and miou > state.best_miou:
                    state.best_miou, state.best_step = miou, step
                last_val["val/best_miou"] = state.best_miou if state.best_step >= 0 else math.nan
                last_val["val/best_step"] = state.best_step
            metrics: dict[str, Any] = {"step": step, "epoch": state.epoch}
            metrics.update({k: v / counts[k] for k, v in sums.items()})
            metrics["train/step_time"] = step_time
            metrics.update(last_val)
            state.metrics = metrics
            if do_eval:
                logger.scalars(step, {k: v for k, v in last_val.items() if "/iou/" not in k})
                if ctx.is_main:
                    log.info("step %d: val/miou %.4f (best %.4f at %d)", step, last_val["val/miou"],
                             state.best_miou, state.best_step)
            ctx.report(metrics, checkpoint_dict(state) if do_ckpt else None)
            sums, counts, n_sum, t0 = {}, {}, 0, time.perf_counter()
    finally:
        logger.close()
    return dict(state.metrics)
