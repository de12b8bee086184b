"""The two non-NP heads on the DeepLabV3+ features F: the plain classifier and its MC-dropout twin.

Both are the DeepLabV3+ fusion convs (3x3 conv, BN, ReLU, twice) and a 1x1 classifier. The MC-dropout head puts
channel dropout (``Dropout2d``, as in U2PL's decoder) after each fusion block and keeps it on in eval mode.
``sample(F, T)`` runs the layers before the first dropout once and only the rest T times, so with the encoder
run once (``model.mc_dropout_scope=head``) it is the fair uncertainty baseline; ``full`` reruns the whole
network T times (the cost of MC dropout placed in the encoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.models.deeplab import conv_bn_relu, kaiming_init_


class PlainHead(nn.Module):
    """DeepLabV3+ fusion convs + 1x1 classifier: F (B x D x h x w) -> logits (B x C x h x w)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.0,
                 mc_dropout: bool = False) -> None:
        super().__init__()
        self.fuse1 = conv_bn_relu(in_channels, channels, 3)
        self.fuse2 = conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.p = dropout
        self.mc_dropout = mc_dropout
        kaiming_init_(self)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0:
            return x
        return F.dropout2d(x, self.p, training=self.training or self.mc_dropout)

    def _after_first(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the first fusion block: dropout, fuse2, dropout, classifier."""
        return self.classifier(self._drop(self.fuse2(self._drop(x))))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self._after_first(self.fuse1(feats))

    def sample(self, feats: torch.Tensor, num_samples: int) -> torch.Tensor:
        """T x B x C x h x w: fuse1 once, the layers from the first dropout on T times."""
        x = self.fuse1(feats)
        return torch.stack([self._after_first(x) for _ in range(num_samples)])


class MCDropoutHead(PlainHead):
    """PlainHead with ``Dropout2d(p)`` that stays on at test time (MC dropout)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__(in_channels, channels, num_classes, dropout=dropout, mc_dropout=True)
