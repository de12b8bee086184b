"""Decoders of the NP head: logits T x B x C x h x w from F (B x D x h x w), z (T x B x L) and d (B x L).

``model.decoder`` picks one (docs/method.md §2 and §7.2; docs/model.md has the measured comparison):

- ``spec``: cat(z, F, d) -> 3x3 conv -> IN -> ReLU -> 3x3 conv -> IN -> ReLU -> 1x1 (the paper's release and
  docs/method.md §2). z and d are constant over space, so their part of the first conv is a per-channel constant
  that InstanceNorm subtracts: they reach only the zero-padded border ring. Kept as a documented option.
- ``splitnorm``: the same weights, but IN normalises only the conv(F) part; the (z, d) part is added after it,
  before the ReLU (identical to ``spec`` when z = d = 0).
- ``film``: IN(conv(F)) + Linear(z, d) (a FiLM shift), then the rest of ``spec``'s decoder.
- ``film_last``: ``spec``'s decoder on F alone up to the last features h; then logits = classifier(h * (1 + g) + b)
  with (g, b) = Linear(z, d). Only the 1x1 classifier runs per sample (folded into per-sample weights), and the
  scale makes z act on every pixel in proportion to its features.

In every decoder conv(F) is computed once for all T samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODE_ELEMS = 1 << 26  # first-conv output elements per no-grad decoder chunk of samples
DECODERS = ("spec", "splitnorm", "film", "film_last")


def border_masks(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """9 x h x w: mask[k](y, x) = 1 where the 3x3 kernel tap k (pad 1) reads inside the h x w map."""
    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return torch.stack([(i + o >= 0) & (i + o < n) for o in (-1, 0, 1)]).to(dtype)
    my, mx = axis(h), axis(w)
    return (my[:, None, :, None] * mx[None, :, None, :]).reshape(9, h, w)


def _broadcast(z: torch.Tensor, d: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return z[:, :, None, None].expand(-1, -1, h, w), d[:, :, None, None].expand(-1, -1, h, w)


class SpecDecoder(nn.Module):
    """The decoder of docs/method.md §2 on cat(z, F, d); z and d act only at the border (§7.2)."""

    def __init__(self, in_channels: int, latent_dim: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.latent_dim, self.in_channels = latent_dim, in_channels
        self.dec1 = nn.Conv2d(self._first_in(), channels, 3, padding=1)
        self.dec2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.InstanceNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _first_in(self) -> int:
        return 2 * self.latent_dim + self.in_channels  # input order: cat(z, F, d)

    def _conv_f(self, feats: torch.Tensor) -> torch.Tensor:
        L, D = self.latent_dim, self.in_channels  # noqa: N806 - the spec's names
        return F.conv2d(feats, self.dec1.weight[:, L:L + D], self.dec1.bias, padding=1)

    def _latent_part(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The (z, d) channels of dec1 (no bias), exact at the zero-padded border: T x B x Ch x h x w."""
        L, D = self.latent_dim, self.in_channels  # noqa: N806
        w = self.dec1.weight
        taps = torch.einsum("olk,tbl->tbok", w[:, :L].flatten(2), z) \
            + torch.einsum("olk,bl->bok", w[:, L + D:].flatten(2), d)[None]  # T x B x Ch x 9
        masks = border_masks(feats.shape[2], feats.shape[3], feats.device, feats.dtype)
        return torch.einsum("tbok,khw->tbohw", taps, masks)

    def shared(self, feats: torch.Tensor) -> torch.Tensor:
        """The sample-independent part, computed once: conv(F) (B x Ch x h x w)."""
        return self._conv_f(feats)

    def first(self, base: torch.Tensor, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the first layer for samples z (T x B x Ch x h x w)."""
        return base[None] + self._latent_part(feats, z, d)

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(x))
        x = F.relu(self.norm(self.dec2(x)))
        return self.classifier(x)

    def forward(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Logits T x B x C x h x w; without grad, samples are decoded in chunks to bound memory."""
        t, b = z.shape[:2]
        h, w = feats.shape[2:]
        per_sample = b * self.dec2.out_channels * h * w
        step = t if torch.is_grad_enabled() else max(1, DECODE_ELEMS // per_sample)
        base = self.shared(feats)
        outs = []
        for s in range(0, t, step):
            x = self.first(base, feats, z[s:s + step], d)
            n = x.shape[0]
            outs.append(self.rest(x.flatten(0, 1)).view(n, b, -1, h, w))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def reference(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The naive decoder: T full passes over cat(z, F, d) (for the equivalence tests)."""
        h, w = feats.shape[2:]
        outs = []
        for zt in z:
            zz, dd = _broadcast(zt, d, h, w)
            outs.append(self.rest(self.dec1(torch.cat([zz, feats, dd], 1))))
        return torch.stack(outs)


class SplitNormDecoder(SpecDecoder):
    """``spec``'s weights; IN normalises conv(F) alone, the (z, d) part is added after it (before the ReLU)."""

    def shared(self, feats: torch.Tensor) -> torch.Tensor:
        return self.norm(self._conv_f(feats))

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.dec2(F.relu(x))))
        return self.classifier(x)

    def reference(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h, w = feats.shape[2:]
        outs = []
        for zt in z:
            zz, dd = _broadcast(zt, d, h, w)
            base = self.norm(self.dec1(torch.cat([torch.zeros_like(zz), feats, torch.zeros_like(dd)], 1)))
            lat = F.conv2d(torch.cat([zz, torch.zeros_like(feats), dd], 1), self.dec1.weight, None, padding=1)
            outs.append(self.rest(base + lat))
        return torch.stack(outs)


class FilmDecoder(SplitNormDecoder):
    """IN(conv(F)) + Linear(cat(z, d)) before the first ReLU, then ``spec``'s second block and classifier
    (``splitnorm``'s ``shared`` and ``rest``, with conv(F) over F alone)."""

    def __init__(self, in_channels: int, latent_dim: int, channels: int, num_classes: int) -> None:
        super().__init__(in_channels, latent_dim, channels, num_classes)
        self.film = nn.Linear(2 * latent_dim, channels)

    def _first_in(self) -> int:
        return self.in_channels

    def _conv_f(self, feats: torch.Tensor) -> torch.Tensor:
        return self.dec1(feats)

    def first(self, base: torch.Tensor, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        shift = self.film(torch.cat([z, d[None].expand_as(z)], -1))  # T x B x Ch
        return base[None] + shift[..., None, None]

    def reference(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.rest(self.norm(self.dec1(feats)) + self.film(torch.cat([zt, d], -1))[..., None, None])
                            for zt in z])


class FilmLastDecoder(FilmDecoder):
    """h = ``spec``'s decoder on F alone (once); logits_t = classifier(h * (1 + g_t) + b_t), (g_t, b_t) from
    Linear(cat(z_t, d)).

    The per-sample part is folded into per-sample classifier weights, so T samples cost T small matmuls.
    """

    def __init__(self, in_channels: int, latent_dim: int, channels: int, num_classes: int) -> None:
        super().__init__(in_channels, latent_dim, channels, num_classes)
        self.film = nn.Linear(2 * latent_dim, 2 * channels)

    def features(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.dec1(feats)))
        return F.relu(self.norm(self.dec2(x)))

    def forward(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = self.features(feats)  # B x Ch x h x w
        gamma, beta = self.film(torch.cat([z, d[None].expand_as(z)], -1)).chunk(2, -1)  # T x B x Ch each
        wc = self.classifier.weight.flatten(1)  # C x Ch
        weight = wc * (1.0 + gamma)[:, :, None, :]  # T x B x C x Ch
        bias = beta @ wc.t() + self.classifier.bias  # T x B x C
        return torch.einsum("tbck,bkhw->tbchw", weight, h) + bias[..., None, None]

    def reference(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = self.features(feats)
        outs = []
        for zt in z:
            gamma, beta = self.film(torch.cat([zt, d], -1)).chunk(2, -1)
            outs.append(self.classifier(h * (1 + gamma[..., None, None]) + beta[..., None, None]))
        return torch.stack(outs)


def build_decoder(kind: str, in_channels: int, latent_dim: int, channels: int, num_classes: int) -> SpecDecoder:
    """One of ``DECODERS``; Xavier-normal weights and zero biases (docs/method.md §2)."""
    classes = {"spec": SpecDecoder, "splitnorm": SplitNormDecoder, "film": FilmDecoder, "film_last": FilmLastDecoder}
    if kind not in classes:
        raise ValueError(f"unknown NP decoder {kind!r}; expected one of {DECODERS}")
    dec = classes[kind](in_channels, latent_dim, channels, num_classes)
    for m in dec.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return dec
