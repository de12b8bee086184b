"""The neural-process head of NP-SemiSeg (docs/method.md §2, §3, §7, §9), on DeepLabV3+ features F.

    q      = phi(F.detach())                          B x L x h x w  (phi trains, the backbone does not, here)
    r_x(p) = sum_c softmax_c(-(q(p) - m_x[c])^2) m_x[c]   per latent dim, m_x = context / target bank centres
    (mu, sigma) = MLP(mean_hw r_x), sigma = 0.1 + 0.9 softplus     posterior from the target bank, prior from context
    z_t    = mu_post + sigma_post * eps_t,  t = 1..T;   d = mean_hw r_context
    logits_t = dec(F, z_t, d)                         T x B x C x h x w  (gradients reach the backbone through F)

Only the spatial means of r are used, so the aggregator returns them directly; its custom backward uses the
closed form d r / d q = 2 Var_a(m) and keeps only a B x L x h x w tensor, never the B x C x L x h x w one.
The decoder is chosen by ``model.decoder`` (``npsemiseg.models.np_decoders``); each computes conv(F) once for all
T samples. The spec's decoder lets z and d reach only the border ring (docs/method.md §7.2).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.models.banks import MemoryBank, gather_rows, subsample_per_class
from npsemiseg.models.np_decoders import SpecDecoder, border_masks, build_decoder
from npsemiseg.models.resize import downsample_labels

CHUNK_ELEMS = 1 << 22  # elements of one L x chunk x C block in the aggregator (16 MiB in float32)
__all__ = ["NPHead", "attend_mean", "attend_reference", "border_masks", "kl_normal"]


def _attend_chunks(q: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel E_a[m] and E_a[m^2] (L x N each) for q (L x N) and centres (C x L), chunked over N.

    One shifted exp per (dim, pixel, class) and a batched matmul against [1, m, m^2] give the softmax's
    normaliser and both moments in one pass (cheaper than softmax + two weighted sums).
    """
    dim, n = q.shape
    m = centres.t().to(q.dtype).contiguous()  # L x C
    weights = torch.stack([torch.ones_like(m), m, m * m], -1)  # L x C x 3
    step = max(1, CHUNK_ELEMS // max(1, dim * centres.shape[0]))
    r, e2 = torch.empty_like(q), torch.empty_like(q)
    for s in range(0, n, step):
        d2 = (q[:, s:s + step, None] - m[:, None, :]).square_()  # L x n x C
        e = torch.exp_(d2.amin(-1, keepdim=True) - d2)  # shifted so the largest weight is exp(0) = 1
        stats = torch.bmm(e, weights)  # L x n x 3: normaliser, sum a m, sum a m^2 (unnormalised)
        r[:, s:s + step] = stats[..., 1] / stats[..., 0]
        e2[:, s:s + step] = stats[..., 2] / stats[..., 0]
    return r, e2


class _AttendMean(torch.autograd.Function):
    """mean over pixels of the per-dimension attention readout; centres are constants (buffers)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # no float16 bmm/exp under autocast
    def forward(ctx, q: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, dim = q.shape[:2]
        r, e2 = _attend_chunks(q.flatten(2).transpose(0, 1).reshape(dim, -1), centres)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(2.0 * (e2 - r * r).clamp_min_(0))  # d r / d q = 2 Var_a(m) (L x B*P)
            ctx.q_shape = q.shape
        return r.view(dim, b, -1).mean(2).t()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        (dr_dq,) = ctx.saved_tensors
        b, dim = ctx.q_shape[:2]
        g = dr_dq.view(dim, b, -1) * (grad.t()[:, :, None] / dr_dq.shape[1] * b)
        return g.transpose(0, 1).reshape(ctx.q_shape), None


def attend_mean(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """mean_hw of r(p) = sum_c softmax_c(-(q(p)-m[c])^2) m[c], per dim: B x L x h x w, C x L -> B x L.

    Computed in (at least) float32 whatever the autocast dtype: squared distances overflow float16 easily.
    """
    dtype = torch.promote_types(query.dtype, torch.float32)
    return _AttendMean.apply(query.to(dtype), centres.detach().to(dtype))


def attend_reference(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The unchunked per-pixel readout r (B x L x h x w) with plain autograd (for tests and the spec)."""
    m = centres.t()[None, :, :, None, None]
    a = torch.softmax(-(query[:, :, None] - m) ** 2, dim=2)
    return (a * m).sum(2)


def kl_normal(mu_q: torch.Tensor, s_q: torch.Tensor, mu_p: torch.Tensor, s_p: torch.Tensor,
              variance: bool = False) -> torch.Tensor:
    """Mean over images of KL(N(mu_q, s_q) || N(mu_p, s_p)), summed over latent dims.

    ``s`` is a standard deviation (intended); ``variance=True`` reads it as a variance, as the released code's KL
    does while its sampler uses it as a std.
    """
    var_q, var_p = (s_q, s_p) if variance else (s_q * s_q, s_p * s_p)
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)
    return kl.sum(-1).mean()


class NPHead(nn.Module):
    """NP head: phi, attention aggregator over two banks' centres, latent MLP, decoder; banks as buffers."""

    def __init__(self, in_channels: int, num_classes: int, latent_dim: int = 32, channels: int = 256,
                 bank_capacity: int = 2560, pixels_per_class: int = 0, np_mode: str = "intended",
                 test_latent: str = "posterior", decoder: str = "spec") -> None:
        super().__init__()
        L, D = latent_dim, in_channels  # noqa: N806 - the spec's names
        self.num_classes, self.latent_dim, self.in_channels = num_classes, L, D
        self.pixels_per_class, self.np_mode, self.test_latent = pixels_per_class, np_mode, test_latent
        self.phi = nn.Sequential(
            nn.Conv2d(D, L, 1), nn.InstanceNorm2d(L), nn.ReLU(inplace=True),
            nn.Conv2d(L, L, 1), nn.InstanceNorm2d(L), nn.ReLU(inplace=True),
            nn.Conv2d(L, L, 1),
        )
        self.latent_mlp = nn.Sequential(nn.Linear(L, L), nn.ReLU(inplace=True), nn.Linear(L, 2 * L))
        self.decoder_kind = decoder
        self.decoder: SpecDecoder = build_decoder(decoder, D, L, channels, num_classes)
        self.context_bank = MemoryBank(num_classes, bank_capacity, L)
        self.target_bank = MemoryBank(num_classes, bank_capacity, L)
        self.register_buffer("bank_draws", torch.zeros((), dtype=torch.long))  # seeds the row draws
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def released(self) -> bool:
        return self.np_mode == "released"

    # ---- latent path ---------------------------------------------------------------------------------------
    def _centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, target) centres; the released code's evaluation sees all-zero centres (docs/method.md §7)."""
        mc, mt = self.context_bank.centres, self.target_bank.centres
        if not self.training:
            if self.released:
                return torch.zeros_like(mc), torch.zeros_like(mt)
            if self.context_bank.empty and self.target_bank.empty:  # Python shows it once per call site
                warnings.warn("NP head evaluated with empty memory banks: centres are zero (no training step "
                              "has written the banks yet)", RuntimeWarning, stacklevel=2)
        return mc, mt

    def latent(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MLP(mean_hw r) -> (mu, sigma = 0.1 + 0.9 softplus(raw)), B x L each."""
        mu, raw = self.latent_mlp(pooled).chunk(2, dim=-1)
        return mu, 0.1 + 0.9 * F.softplus(raw)

    # ---- decoder -------------------------------------------------------------------------------------------
    def decode(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Logits T x B x C x h x w for F (B x D x h x w), z (T x B x L), d (B x L)."""
        return self.decoder(feats, z, d)

    def decode_reference(self, feats: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The naive decoder: T full passes (for the equivalence tests)."""
        return self.decoder.reference(feats, z, d)

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, feats: torch.Tensor, num_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits T x B x C x h x w, KL scalar, query B x L x h x w) for decoder features F."""
        query = self.phi(feats.detach())
        mc, mt = self._centres()
        pooled_c, pooled_t = attend_mean(query, mc), attend_mean(query, mt)
        mu_c, s_c = self.latent(pooled_c)
        mu_t, s_t = self.latent(pooled_t)
        kl = kl_normal(mu_t, s_t, mu_c, s_c, variance=self.released)
        use_prior = not self.training and self.test_latent == "prior"
        mu, s = (mu_c, s_c) if use_prior else (mu_t, s_t)
        eps = torch.randn((num_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = mu[None] + s[None] * eps
        return self.decode(feats, z, pooled_c), kl, query

    # ---- banks ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def select_rows(self, query: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                    rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank rows (N x L) and classes (N) from a query and labels at the feature resolution.

        Drops 254/255 and keeps, per class, this rank's share of the global per-step budget, drawn uniformly at
        random (``rank_share``); in released mode every row is kept (unless ``pixels_per_class`` > 0) and the
        rows come from the scrambled gather. Labels at another resolution are downsampled (nearest) first.
        """
        if labels.shape[-2:] != query.shape[-2:]:
            labels = downsample_labels(labels, query.shape[-2:])
        rows, cls = gather_rows(query.detach(), labels, self.num_classes, released=self.released)
        share = self.rank_share(rank, world_size)
        if generator is None and share > 0:
            generator = self._draw_generator(rank, cls.device)
        return subsample_per_class(rows, cls, share, self.num_classes, generator)

    def _draw_generator(self, rank: int, device: torch.device) -> torch.Generator:
        """The bank's own random stream: seeded by a draw counter kept in ``state_dict`` (so a resumed run draws
        the same rows) and the rank. Drawing rows never consumes the global RNG, so the bank-write settings do
        not shift the augmentation / latent-noise stream (runs that differ only there stay paired)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.bank_draws) * 1_000_003 + rank + 12_345)
        self.bank_draws += 1
        return gen

    def budget(self) -> int:
        """Rows per class written per step over all ranks: ``pixels_per_class``, capped at the capacity K (0 =
        K; released mode: 0 = every row, as released). A class never overflows its ring within one step, so
        which rows survive is the random draw, not the raster order."""
        k = self.context_bank.capacity
        if self.pixels_per_class > 0:
            return min(self.pixels_per_class, k)
        return 0 if self.released else k

    def rank_share(self, rank: int = 0, world_size: int = 1) -> int:
        """This rank's part of ``budget()``: budget // W, plus one on the first budget % W ranks (0 = all rows),
        so the same setting writes the same number of rows per class per step on 1 or W ranks."""
        total = self.budget()
        if total <= 0 or world_size <= 1:
            return total
        return max(1, total // world_size + int(rank < total % world_size))

    @torch.no_grad()
    def update_banks(self, ctx_rows: torch.Tensor, ctx_labels: torch.Tensor,
                     tgt_rows: torch.Tensor, tgt_labels: torch.Tensor) -> None:
        """FIFO-write context rows (labelled, ground truth) and target rows (the caller includes the labelled
        rows as well as the pseudo-labelled ones, docs/method.md §3) and recompute both banks' centres."""
        self.context_bank.push(ctx_rows, ctx_labels)
        self.target_bank.push(tgt_rows, tgt_labels)

    @torch.no_grad()
    def copy_banks_(self, other: NPHead) -> None:
        """Copy both banks (rows, pointers, counts, centres) from another NP head, e.g. student -> teacher."""
        self.context_bank.copy_(other.context_bank)
        self.target_bank.copy_(other.target_bank)
