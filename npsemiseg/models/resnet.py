"""ResNet-18/34/50/101 trunks with a width knob, dilation (output stride 8/16) and an optional deep stem.

At ``width=64`` without the deep stem the parameter names and shapes are torchvision's, so ImageNet weights
load as they are. Narrow widths (8-16) give tiny nets for tests and the CPU demo. The deep stem (three 3x3
convs, ``w, w, 2w`` channels, as in the released code's ResNet) keeps ``conv1`` as a Sequential and ``bn1`` as
the last stem norm, matching the "v1c"-style checkpoints that layout circulates with.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from npsemiseg.errors import UserError

# (block kind, blocks per stage) per depth
SPECS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); unlike torchvision's, it accepts dilation > 1."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 block, stride on the 3x3 (torchvision's "v1.5")."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """A dilated ResNet trunk returning (layer1 features at stride 4, layer4 features at the output stride)."""

    def __init__(self, depth: str = "resnet50", width: int = 64, output_stride: int = 16,
                 deep_stem: bool = False) -> None:
        super().__init__()
        if depth not in SPECS:
            raise UserError(f"model.backbone: unknown backbone {depth!r}")
        if output_stride not in (8, 16, 32):
            raise UserError(f"model.output_stride: must be 8 or 16, got {output_stride}")
        kind, blocks = SPECS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.width = width
        # which of layer2..4 trade their stride for dilation
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv3x3(3, width, 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                _conv3x3(width, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                _conv3x3(width, 2 * width),
            )
            self.inplanes = 2 * width
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.inplanes = width
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.dilation = 1
        self.layer1 = self._make_layer(block, width, blocks[0], 1, False)
        self.layer2 = self._make_layer(block, 2 * width, blocks[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 4 * width, blocks[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 8 * width, blocks[3], 2, dilate[2])
        self.low_channels = width * block.expansion
        self.out_channels = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, planes: int, n: int, stride: int, dilate: bool) -> nn.Sequential:
        prev = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, prev, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, self.dilation, None) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def torchvision_cache_file(depth: str) -> Path | None:
    """The torchvision ImageNet weight file for ``depth`` in ``$NPSEMISEG_WEIGHTS_DIR`` or torch's hub cache
    (never downloads; see ``npsemiseg.models.weights``)."""
    from npsemiseg.models.weights import find_weights

    return find_weights(depth)


def load_pretrained(net: ResNet, source: str, depth: str) -> Path:
    """Load ImageNet weights into ``net`` from a local file or torchvision's cache; return the file used.

    Accepts a bare state dict or one nested under "state_dict"/"model", with or without a "module." prefix;
    the classifier (``fc.*``) is ignored. Any missing trunk key or shape mismatch is a UserError naming the file.
    """
    if source == "torchvision":
        if net.width != 64 or isinstance(net.conv1, nn.Sequential):
            raise UserError("model.pretrained=torchvision: torchvision's ImageNet weights need model.width=64 and "
                            f"model.deep_stem=false (got width {net.width}, deep_stem "
                            f"{isinstance(net.conv1, nn.Sequential)}); give a local .pth for other layouts")
        from npsemiseg.models.weights import require_weights

        path = require_weights(depth)
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"model.pretrained: file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"model.pretrained: cannot read {path} ({type(e).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserError(f"model.pretrained: {path} does not hold a state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")}
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        what = f"missing key {missing[0]!r}" if missing else (
            f"key {bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, model needs {tuple(own[bad[0]].shape)}")
        raise UserError(f"model.pretrained: {path} does not fit {depth} (width {net.width}"
                        f"): {what} ({len(missing)} missing, {len(bad)} mismatched)")
    net.load_state_dict({k: sd[k] for k in own})
    return path
