"""DeepLabV3+ encoder: ResNet trunk + ASPP + low-level projection -> the stride-4 decoder features F.

F = cat(upsample(ASPP(layer4)), proj(layer1)) has ``aspp_channels + low_channels`` channels (256 + 48 = 304 for
the full-width model). Every head (plain, MC dropout, NP) reads F, so they share this one encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.models.resnet import ResNet

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def kaiming_init_(*modules: nn.Module) -> None:
    """He-normal (fan-out) weights and zero biases for every conv in ``modules`` (ReLU-followed convs)."""
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU; ``k`` 1 or 3 with 'same' padding at the given dilation."""
    pad = 0 if k == 1 else dilation
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 branches and image pooling, then a 1x1 projection.

    The image-pooling branch has a biased conv and no BatchNorm, so a training batch of one image works (BN over a
    1x1 map of one image is undefined).
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(5 * cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


def low_level_channels(width: int) -> int:
    """48 at full width (64), scaled down for narrow nets (at least 8)."""
    return max(8, 48 * width // 64)


class DeepLabV3PlusEncoder(nn.Module):
    """Backbone + ASPP + low-level projection; ``forward(x)`` returns F (B x D x H/4 x W/4)."""

    def __init__(self, backbone: ResNet, output_stride: int, aspp_channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, aspp_channels, ASPP_RATES[output_stride])
        low = low_level_channels(backbone.width)
        self.low_proj = conv_bn_relu(backbone.low_channels, low, 1)
        self.out_channels = aspp_channels + low
        kaiming_init_(self.aspp, self.low_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        high = F.interpolate(self.aspp(high), size=low.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([high, self.low_proj(low)], 1)
