"""NP head: memory banks (per-pixel rows, FIFO, vectorised == loop, save/load), KL, aggregator, split conv,
gradient routing, and the released-mode switches."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import npsemiseg.models.np_decoders as npd
import npsemiseg.models.np_head as nph
from npsemiseg.config import ModelConfig
from npsemiseg.models import MemoryBank, NPHead, build_model, gather_rows, kl_normal, subsample_per_class

C, L = 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", width=8, output_stride=16, aspp_channels=16, latent_dim=L, bank_capacity=32,
                head="np")
    base.update(kw)
    return ModelConfig(**base)


def known_query() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query B x L x h x w whose class-c pixels hold base[c] plus a distinct per-pixel offset; returns the true
    per-class mean vectors too. Labels include 255 and 254 pixels, which must never be written."""
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 6, 5
    labels = torch.randint(0, C, (b, h, w), generator=g)
    labels[0, 0, :] = 255
    labels[1, -1, :] = 254
    base = torch.randn(C, L, generator=g) * 3
    noise = torch.randn(b, h, w, L, generator=g) * 0.1
    rows = base[labels.clamp(max=C - 1)] + noise  # b x h x w x L
    query = rows.permute(0, 3, 1, 2).contiguous()
    valid = labels < C
    true = torch.stack([rows[valid & (labels == c)].mean(0) for c in range(C)])
    return query, labels, true


def test_banks_store_true_per_pixel_vectors() -> None:
    query, labels, true = known_query()
    head = NPHead(8, C, L, channels=8, bank_capacity=64)
    rows, cls = head.select_rows(query, labels)
    assert rows.shape == ((labels < C).sum().item(), L)
    assert set(cls.tolist()) <= set(range(C))
    head.update_banks(rows, cls, rows, cls)
    torch.testing.assert_close(head.context_bank.centres, true)
    torch.testing.assert_close(head.target_bank.centres, true)
    assert head.context_bank.count.tolist() == [int(((labels == c)).sum()) for c in range(C)]
    # the released gather cuts (batch, channel, pixel)-ordered elements into rows: its centres are not the truth
    rel = NPHead(8, C, L, channels=8, bank_capacity=64, np_mode="released")
    r_rows, r_cls = rel.select_rows(query, labels)
    rel.update_banks(r_rows, r_cls, r_rows, r_cls)
    err = (rel.context_bank.centres - true).norm(dim=1)
    assert (err > 1.0).all(), err


def test_released_gather_matches_the_released_indexing() -> None:
    query, labels, _ = known_query()
    rows, cls = gather_rows(query, labels, C, released=True)
    offset = 0
    for c in range(C):  # what the released code does per class
        mask = (labels == c)[:, None].expand_as(query)
        ref = query[mask].view(-1, L)
        torch.testing.assert_close(rows[offset:offset + len(ref)], ref)
        assert (cls[offset:offset + len(ref)] == c).all()
        offset += len(ref)
    assert offset == len(rows)


def _reference_push(bank: dict[str, torch.Tensor], rows: torch.Tensor, labels: torch.Tensor, k: int) -> None:
    for row, c in zip(rows, labels.tolist()):
        bank["rows"][c, bank["ptr"][c]] = row
        bank["ptr"][c] = (bank["ptr"][c] + 1) % k
        bank["count"][c] = min(bank["count"][c] + 1, k)


def test_vectorised_update_equals_per_class_loop() -> None:
    g = torch.Generator().manual_seed(3)
    k = 7
    bank = MemoryBank(C, k, L)
    ref = {"rows": torch.zeros(C, k, L), "ptr": [0] * C, "count": [0] * C}
    for n in (5, 0, 13, 40, 3, 22):  # includes pushes with > K rows of one class
        rows = torch.randn(n, L, generator=g)
        labels = torch.randint(0, C, (n,), generator=g)
        labels[labels == 2] = 1 if n > 30 else 2  # a class that gets most rows in the big push
        bank.push(rows, labels)
        _reference_push(ref, rows, labels, k)
        assert torch.equal(bank.rows, ref["rows"])
        assert bank.ptr.tolist() == ref["ptr"] and bank.count.tolist() == ref["count"]
        for c in range(C):
            exp = ref["rows"][c, :ref["count"][c]].mean(0) if ref["count"][c] else torch.zeros(L)
            torch.testing.assert_close(bank.centres[c], exp)


def test_fifo_capacity_and_eviction_order() -> None:
    k = 4
    bank = MemoryBank(2, k, 1)
    for i in range(6):  # rows 0..5 into class 0, one at a time
        bank.push(torch.tensor([[float(i)]]), torch.tensor([0]))
    assert bank.count.tolist() == [4, 0]
    assert sorted(bank.rows[0, :, 0].tolist()) == [2.0, 3.0, 4.0, 5.0]  # 0 and 1 evicted
    assert bank.centres[0, 0].item() == pytest.approx(3.5) and bank.centres[1, 0].item() == 0.0
    bank.push(torch.arange(10.0, 19.0)[:, None], torch.zeros(9, dtype=torch.long))  # 9 > K rows at once
    assert sorted(bank.rows[0, :, 0].tolist()) == [15.0, 16.0, 17.0, 18.0]
    bank.push(torch.tensor([[99.0]]), torch.tensor([0]))  # evicts the oldest survivor (15)
    assert sorted(bank.rows[0, :, 0].tolist()) == [16.0, 17.0, 18.0, 99.0]
    bank.push(torch.tensor([[7.0], [8.0]]), torch.tensor([255, 254]))  # ignore labels never written
    assert bank.count.tolist() == [4, 0]


def test_subsample_per_class_and_ignore() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (500,), generator=g)
    rows = torch.arange(500.0)[:, None].expand(500, L).clone()
    sub_rows, sub_labels = subsample_per_class(rows, labels, 10, C, generator=g)
    counts = torch.bincount(sub_labels, minlength=C)
    assert counts.tolist() == [min(10, int((labels == c).sum())) for c in range(C)]
    idx = sub_rows[:, 0].long()
    assert torch.equal(labels[idx], sub_labels)  # rows keep their own labels
    assert (idx[1:] > idx[:-1]).all()  # original order kept (FIFO age)
    head = NPHead(8, C, L, channels=8, pixels_per_class=3)
    query, lab, _ = known_query()
    rows2, cls2 = head.select_rows(query, lab)
    assert torch.bincount(cls2, minlength=C).max() <= 3 and (cls2 < C).all()
    # labels at full resolution are downsampled (nearest) to the query size first
    full = torch.nn.functional.interpolate(lab[:, None].float(), scale_factor=4, mode="nearest")[:, 0].long()
    head.pixels_per_class = 0
    assert torch.equal(head.select_rows(query, full)[1], head.select_rows(query, lab)[1])


def test_kl_zero_positive_and_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn(3, L, generator=g), torch.rand(3, L, generator=g) + 0.1
    assert kl_normal(mu, s, mu, s).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_normal(mu, s, mu, s, variance=True).item() == pytest.approx(0.0, abs=1e-6)
    mu2, s2 = torch.randn(3, L, generator=g), torch.rand(3, L, generator=g) + 0.1
    kl = kl_normal(mu, s, mu2, s2)
    assert kl.item() > 0
    ref = kl_divergence(Normal(mu, s), Normal(mu2, s2)).sum(-1).mean()
    torch.testing.assert_close(kl, ref)
    ref_var = kl_divergence(Normal(mu, s.sqrt()), Normal(mu2, s2.sqrt())).sum(-1).mean()
    torch.testing.assert_close(kl_normal(mu, s, mu2, s2, variance=True), ref_var)


def test_aggregator_matches_reference_values_and_gradients(monkeypatch) -> None:
    monkeypatch.setattr(nph, "CHUNK_ELEMS", L * C * 8)  # force several chunks (8 pixels each)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, L, 5, 7, generator=g, dtype=torch.double, requires_grad=True)
    m = torch.randn(C, L, generator=g, dtype=torch.double)
    ref = nph.attend_reference(q, m).mean((2, 3))
    out = nph.attend_mean(q, m)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), q)
    (g_out,) = torch.autograd.grad((out * w).sum(), q)
    torch.testing.assert_close(g_out, g_ref)
    assert torch.autograd.gradcheck(lambda x: nph.attend_mean(x, m), (q,))
    zero = nph.attend_mean(q, torch.zeros(C, L, dtype=torch.double))
    assert torch.equal(zero, torch.zeros_like(zero))


@pytest.mark.parametrize("decoder", npd.DECODERS)
@pytest.mark.parametrize("hw", [(5, 7), (1, 4), (8, 8)])
def test_split_first_conv_equals_naive_concat(hw: tuple[int, int], decoder: str, monkeypatch) -> None:
    torch.manual_seed(0)
    head = NPHead(10, C, L, channels=12, decoder=decoder).double()
    for p in head.parameters():  # non-zero biases so the bias path is checked too
        torch.nn.init.normal_(p)
    feats = torch.randn(3, 10, *hw, dtype=torch.double)
    z = torch.randn(4, 3, L, dtype=torch.double)
    d = torch.randn(3, L, dtype=torch.double)
    ref = head.decode_reference(feats, z, d)
    torch.testing.assert_close(head.decode(feats, z, d), ref)
    monkeypatch.setattr(npd, "DECODE_ELEMS", 1)  # no-grad decoding in chunks of one sample
    with torch.no_grad():
        torch.testing.assert_close(head.decode(feats, z, d), ref)


def test_gradients_query_path_skips_backbone_decoder_reaches_it() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(), C)
    head = model.np_head
    q, lab, _ = known_query()
    head.update_banks(*gather_rows(q, lab, C), *gather_rows(q * 0.5, lab, C))
    x = torch.randn(2, 3, 64, 64)
    out = model(x, num_samples=2)
    trunk = list(model.encoder.parameters())
    grads = torch.autograd.grad(out.query.sum() + out.kl, trunk + list(head.phi.parameters()), allow_unused=True)
    assert all(gr is None for gr in grads[:len(trunk)])
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads[len(trunk):])
    model.zero_grad()
    model(x, num_samples=2).logits.square().mean().backward()
    assert model.encoder.backbone.conv1.weight.grad.abs().sum() > 0
    assert head.phi[0].weight.grad.abs().sum() > 0  # through z and d
    assert head.latent_mlp[2].weight.grad.abs().sum() > 0


def _fill(head: NPHead, scale: float) -> None:
    q, lab, _ = known_query()
    head.update_banks(*gather_rows(q * scale, lab, C), *gather_rows(q * -scale, lab, C))


def _eval_logits(model, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x, num_samples=3).logits


def test_centres_survive_save_load_and_drive_eval(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(), C)
    _fill(model.np_head, 1.0)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    before = _eval_logits(model, x)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert "head.context_bank.centres" in sd and "head.target_bank.rows" in sd
    fresh = build_model(tiny(), C)
    fresh.load_state_dict(sd)
    fresh.eval()
    torch.testing.assert_close(fresh.np_head.target_bank.centres, model.np_head.target_bank.centres)
    assert torch.equal(fresh.np_head.context_bank.count, model.np_head.context_bank.count)
    torch.testing.assert_close(_eval_logits(fresh, x), before)
    _fill(fresh.np_head, 3.0)  # different banks -> different eval output
    assert not torch.allclose(_eval_logits(fresh, x), before)


def test_released_mode_ignores_banks_at_eval_and_warns_when_empty() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(np_mode="released"), C)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    empty = _eval_logits(model, x)
    _fill(model.np_head, 2.0)
    torch.testing.assert_close(_eval_logits(model, x), empty)
    model.train()  # in training the released head does read its banks
    torch.manual_seed(0)
    out = model(x, 1)
    assert out.kl.item() != 0.0
    intended = build_model(tiny(), C).eval()
    with pytest.warns(RuntimeWarning, match="empty memory banks"):
        _eval_logits(intended, x)


def test_prior_and_posterior_test_latents() -> None:
    torch.manual_seed(0)
    post = build_model(tiny(test_latent="posterior"), C)
    prior = build_model(tiny(test_latent="prior"), C)
    prior.load_state_dict(post.state_dict())
    x = torch.randn(1, 3, 64, 64)
    _fill(post.np_head, 1.0)
    prior.np_head.copy_banks_(post.np_head)
    assert torch.equal(prior.np_head.target_bank.rows, post.np_head.target_bank.rows)
    post.eval(), prior.eval()
    a, b = _eval_logits(post, x), _eval_logits(prior, x)
    assert not torch.allclose(a, b)
    # prior sampling == decoding z from the context-bank latent by hand
    head = prior.np_head
    with torch.no_grad():
        feats = prior.encoder(x)
        pooled_c = nph.attend_mean(head.phi(feats), head.context_bank.centres)
        mu_c, s_c = head.latent(pooled_c)
        torch.manual_seed(0)
        eps = torch.randn(3, *mu_c.shape)
        ref = head.decode(feats, mu_c + s_c * eps, pooled_c)
    torch.testing.assert_close(b, ref)


def _interior_border_effect(decoder: str, which: str, size: int = 24) -> tuple[float, float]:
    """Mean |logit change| in the interior (>= 2 cells from the edge) and on the border ring of a size x size map
    when z (or d) changes, for a randomly initialised head."""
    torch.manual_seed(0)
    head = NPHead(16, C, L, channels=16, decoder=decoder).eval()
    feats = torch.randn(2, 16, size, size)
    z, d = torch.randn(1, 2, L), torch.randn(2, L)
    z2, d2 = (z + torch.randn_like(z), d) if which == "z" else (z, d + torch.randn_like(d))
    with torch.no_grad():
        delta = (head.decode(feats, z2, d2) - head.decode(feats, z, d)).abs().mean((0, 1, 2))  # h x w
    inner = torch.zeros(size, size, dtype=torch.bool)
    inner[2:-2, 2:-2] = True
    ring = torch.ones(size, size, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    return float(delta[inner].mean()), float(delta[ring].mean())


@pytest.mark.parametrize("decoder", ["splitnorm", "film", "film_last"])
@pytest.mark.parametrize("which", ["z", "d"])
def test_new_decoders_let_z_and_d_reach_the_interior(decoder: str, which: str) -> None:
    inner, border = _interior_border_effect(decoder, which)
    assert border > 0 and inner >= 0.1 * border, (inner, border)


@pytest.mark.parametrize("which", ["z", "d"])
def test_spec_decoder_is_inert_in_the_interior(which: str) -> None:
    """A documented property of the spec's decoder (docs/method.md §7.2): InstanceNorm after the first conv
    removes the spatially constant (z, d) part, so z and d reach the interior only through the border's share of
    the norm statistics: the interior/border ratio falls about as 1 / map size (0.17 at 24 x 24 here)."""
    inner24, border24 = _interior_border_effect("spec", which, 24)
    inner48, border48 = _interior_border_effect("spec", which, 48)
    assert border24 > 1e-2 and border48 > 1e-2
    assert inner24 < 0.3 * border24 and inner48 / border48 < 0.75 * inner24 / border24, (inner24, inner48)


def test_film_last_runs_only_the_classifier_per_sample() -> None:
    torch.manual_seed(0)
    head = NPHead(16, C, L, channels=16, decoder="film_last")
    feats = torch.randn(1, 16, 6, 6)
    calls = []
    hook = head.decoder.dec2.register_forward_hook(lambda *a: calls.append(1))
    head.decode(feats, torch.randn(7, 1, L), torch.randn(1, L))
    hook.remove()
    assert len(calls) == 1  # the 3x3 convs run once for 7 samples


def _shuffle_centres_(head: NPHead, perm: torch.Tensor) -> None:
    """Permute the entries of each bank's C x L centre matrix (``perm`` over C * L entries)."""
    for bank in (head.context_bank, head.target_bank):
        bank.centres.copy_(bank.centres.flatten()[perm].view_as(bank.centres))


def test_aggregator_is_invariant_to_class_permutations_of_the_centres() -> None:
    """docs/method.md §2's readout r[d] = sum_c softmax_c(-(q[d] - m[c,d])^2) m[c,d] is a symmetric function of the
    C values m[:, d]: permuting classes (even a different permutation per latent dim) cannot change anything, so a
    context-sensitivity check must move values across dims (or replace them), not only across classes."""
    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(2, L, 5, 5, generator=g), torch.randn(C, L, generator=g)
    per_dim = torch.stack([m[torch.randperm(C, generator=g), j] for j in range(L)], 1)
    torch.testing.assert_close(nph.attend_mean(q, per_dim), nph.attend_mean(q, m))
    mixed = m.flatten()[torch.randperm(C * L, generator=g)].view(C, L)
    assert not torch.allclose(nph.attend_mean(q, mixed), nph.attend_mean(q, m))


def test_briefly_trained_model_depends_on_its_centres() -> None:
    """A tiny model trained for a few steps (banks written as in training) predicts differently in the interior
    when its trained centres are shuffled (entries across classes and dims); the spec decoder could change only
    the border."""
    torch.manual_seed(0)
    model = build_model(tiny(decoder="film_last", bank_capacity=64), C)
    head = model.np_head
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(4, 64, 64, dtype=torch.long)
    for i in range(4):  # quadrants of four classes, in a different order per image
        for q, c in enumerate(torch.randperm(C, generator=g).tolist()):
            y[i, (q // 2) * 32:(q // 2 + 1) * 32, (q % 2) * 32:(q % 2 + 1) * 32] = c
    colours = torch.randn(C, 3, generator=g)
    x = colours[y].permute(0, 3, 1, 2) + 0.3 * torch.randn(4, 3, 64, 64, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(12):
        out = model(x, num_samples=2)
        logits = torch.nn.functional.interpolate(out.logits.mean(0), size=(64, 64), mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.005 * out.kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows, cls = head.select_rows(out.query.detach(), y)
        head.update_banks(rows, cls, rows, cls)
    model.eval()
    pred = _eval_logits(model, x).mean(0).argmax(1)
    _shuffle_centres_(head, torch.randperm(C * L, generator=g))
    shuffled = _eval_logits(model, x).mean(0).argmax(1)
    changed = (pred != shuffled)[:, 2:-2, 2:-2].float().mean().item()  # interior of the 16 x 16 map
    assert changed > 0.01, changed


def test_default_bank_write_samples_at_random_not_in_raster_order() -> None:
    """Two 40 x 40 maps of one class, K = 256: the default write keeps K random rows of the 3200, so the stored
    rows' mean pixel index is near the middle (1599.5), and both images contribute; a raster-order FIFO would keep
    only the last 256 rows (mean 3071.5, all from the second image)."""
    torch.manual_seed(0)
    head = NPHead(8, C, 1, channels=8, bank_capacity=256)
    query = torch.arange(3200.0).view(2, 1, 40, 40)  # row value = its raster index
    labels = torch.zeros(2, 40, 40, dtype=torch.long)
    rows, cls = head.select_rows(query, labels)
    head.update_banks(rows, cls, rows, cls)
    stored = head.context_bank.rows[0, :, 0]
    assert head.context_bank.count[0] == 256 and len(rows) == 256
    assert abs(stored.mean().item() - 1599.5) < 150, stored.mean()
    assert (stored < 1600).sum() > 80 and (stored >= 1600).sum() > 80
    rel = NPHead(8, C, 1, channels=8, bank_capacity=256, np_mode="released")  # released: every row, as released
    r_rows, r_cls = rel.select_rows(query, labels)
    rel.update_banks(r_rows, r_cls, r_rows, r_cls)
    assert len(r_rows) == 3200 and rel.context_bank.rows[0, :, 0].min() >= 3200 - 256


@pytest.mark.parametrize("world", [2, 3])
def test_bank_budget_is_global_across_ranks(world: int) -> None:
    """Rows selected by W simulated ranks (each on its own images) add up, per class, to the same budget as one
    rank selecting from all the images; without the split each rank would write the whole budget."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(6, L, 12, 12, generator=g)
    labels = torch.randint(0, C, (6, 12, 12), generator=g)
    head = NPHead(8, C, L, channels=8, bank_capacity=64, pixels_per_class=50)
    _, one = head.select_rows(query, labels)
    per_rank = [head.select_rows(query[r::world], labels[r::world], rank=r, world_size=world)[1]
                for r in range(world)]
    many = torch.cat(per_rank)
    assert torch.bincount(one, minlength=C).tolist() == [50] * C
    assert torch.bincount(many, minlength=C).tolist() == [50] * C
    assert sorted(len(p) for p in per_rank) == sorted(C * (50 // world + int(r < 50 % world)) for r in range(world))
    head.pixels_per_class = 0  # 0 = the capacity K, split the same way
    assert torch.bincount(torch.cat([head.select_rows(query[r::world], labels[r::world], rank=r,
                                                      world_size=world)[1] for r in range(world)]),
                          minlength=C).tolist() == [64] * C


def test_row_draws_use_their_own_resumable_stream() -> None:
    """Drawing bank rows leaves the global RNG alone (bank settings do not shift augmentation or latent noise);
    successive draws differ; a head restored from state_dict draws what the original would have drawn."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, L, 12, 12, generator=g)
    labels = torch.randint(0, C, (2, 12, 12), generator=g)
    head = NPHead(8, C, L, channels=8, bank_capacity=64, pixels_per_class=10)
    state = torch.get_rng_state()
    first = head.select_rows(query, labels)[0]
    assert torch.equal(torch.get_rng_state(), state)
    restored = NPHead(8, C, L, channels=8, bank_capacity=64, pixels_per_class=10)
    restored.load_state_dict(head.state_dict())
    second = head.select_rows(query, labels)[0]
    assert not torch.equal(first, second)
    torch.testing.assert_close(restored.select_rows(query, labels)[0], second)
