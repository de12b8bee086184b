"""SegModel (DeepLabV3+ encoder + one of three heads), ``build_model``, ``mean_probs`` and the SyncBN export helper.

    model = build_model(cfg.model, num_classes=21)
    out = model(x, num_samples=5)          # out.logits: T x B x C x H/4 x W/4, out.kl, out.query
    probs = mean_probs(upsample_logits(out.logits, x.shape[-2:]))   # upsample_logits: models/resize.py

Plain: T is ignored (T = 1). MC dropout in eval mode: one encoder pass and T passes of the head's layers after its
first dropout (``model.mc_dropout_scope=head``), or T whole-network passes (``full``); in training mode one pass
(ordinary dropout training). NP: one encoder pass, T latent samples, in both modes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from npsemiseg.config import ModelConfig
from npsemiseg.errors import UserError
from npsemiseg.models.deeplab import DeepLabV3PlusEncoder
from npsemiseg.models.heads import MCDropoutHead, PlainHead
from npsemiseg.models.np_head import NPHead
from npsemiseg.models.resnet import ResNet, load_pretrained


class SegOutput(NamedTuple):
    """What every head returns: logits (T x B x C x h x w), KL (scalar; 0 unless NP), query (NP only)."""

    logits: torch.Tensor
    kl: torch.Tensor
    query: torch.Tensor | None


class SegModel(nn.Module):
    """DeepLabV3+ encoder and a head behind one forward: ``forward(x, num_samples) -> SegOutput``."""

    def __init__(self, encoder: DeepLabV3PlusEncoder, head: nn.Module, head_kind: str,
                 mc_dropout_scope: str = "head") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.head_kind = head_kind
        self.mc_dropout_scope = mc_dropout_scope

    @property
    def np_head(self) -> NPHead | None:
        """The NP head (banks, select_rows, update_banks), or None for the plain / MC-dropout heads."""
        return self.head if isinstance(self.head, NPHead) else None

    def forward(self, x: torch.Tensor, num_samples: int = 1) -> SegOutput:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if isinstance(self.head, NPHead):
            logits, kl, query = self.head(self.encoder(x), num_samples)
            return SegOutput(logits, kl, query)
        # MC dropout at evaluation: T samples; training is ordinary dropout training (one pass)
        if isinstance(self.head, MCDropoutHead) and not self.training and num_samples > 1:
            if self.mc_dropout_scope == "full":
                logits = torch.stack([self.head(self.encoder(x)) for _ in range(num_samples)])
            else:
                logits = self.head.sample(self.encoder(x), num_samples)
        else:
            logits = self.head(self.encoder(x))[None]
        return SegOutput(logits, logits.new_zeros(()), None)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(ResNet trunk parameters, everything else): the loop gives the second group lr x head_lr_mult."""
        trunk = list(self.encoder.backbone.parameters())
        ids = {id(p) for p in trunk}
        return trunk, [p for p in self.parameters() if id(p) not in ids]


def build_model(mcfg: ModelConfig, num_classes: int) -> SegModel:
    """Build the configured backbone + DeepLabV3+ + head; load ImageNet weights when ``mcfg.pretrained`` is set."""
    if num_classes < 1:
        raise UserError(f"data.num_classes: must be >= 1, got {num_classes}")
    trunk = ResNet(mcfg.backbone, mcfg.width, mcfg.output_stride, mcfg.deep_stem)
    if mcfg.pretrained:
        load_pretrained(trunk, mcfg.pretrained, mcfg.backbone)
    enc = DeepLabV3PlusEncoder(trunk, mcfg.output_stride, mcfg.aspp_channels)
    ch = mcfg.aspp_channels
    if mcfg.head == "plain":
        head: nn.Module = PlainHead(enc.out_channels, ch, num_classes)
    elif mcfg.head == "mcdropout":
        head = MCDropoutHead(enc.out_channels, ch, num_classes, mcfg.dropout)
    elif mcfg.head == "np":
        head = NPHead(enc.out_channels, num_classes, mcfg.latent_dim, ch, mcfg.bank_capacity,
                      mcfg.pixels_per_class, mcfg.np_mode, mcfg.test_latent, resolve_decoder(mcfg))
    else:
        raise UserError(f"model.head: must be np, plain or mcdropout, got {mcfg.head!r}")
    return SegModel(enc, head, mcfg.head, mcfg.mc_dropout_scope)


DEFAULT_DECODER = "film_last"  # chosen by benchmarks/np_ablation.py (README "NP head: ablation")


def resolve_decoder(mcfg: ModelConfig) -> str:
    """``model.decoder`` with ``auto`` resolved: the spec's decoder in released mode (the release as it is),
    else ``DEFAULT_DECODER``."""
    if mcfg.decoder != "auto":
        return mcfg.decoder
    return "spec" if mcfg.np_mode == "released" else DEFAULT_DECODER


def mean_probs(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the T samples of the softmax over classes: T x B x C x h x w -> B x C x h x w."""
    return torch.softmax(logits.float(), dim=2).mean(0)


def convert_syncbn_to_bn(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm by an equivalent BatchNorm2d (weights and running stats copied); the reverse of
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, for exporting a model trained with SyncBN to CPU inference."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        ref = next(iter(module.state_dict().values()), None)
        kw = {} if ref is None else {"device": ref.device}
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, **kw)
        out.load_state_dict(module.state_dict())
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_syncbn_to_bn(child))
    return out
