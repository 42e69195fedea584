"""The modified N-pair loss against a brute-force double loop over pairs, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from spix.trainer.losses import (
    pair_losses,
    pixel_npair_loss,
    sample_labelled_pixels,
    superpixel_npair_loss,
)
from spix.trainer.model import build_model
from spix.trainer.pooling import superpixel_pool


def brute_force(emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, pairs: str = "image") -> dict[str, float]:
    """DESIGN.md read literally: ordered pairs i != j of valid items of one image, plain Python; with
    pairs "batch" every ordered pair of distinct valid items of the batch (the superpixel-batch loss),
    with "across" only those of two different images."""
    pos, neg, pos_d, neg_d = [], [], [], []
    items = [(b, i) for b in range(emb.shape[0]) for i in range(emb.shape[1]) if valid[b, i]]
    for b, i in items:
        for c, j in items:
            if (b, i) == (c, j) or (b != c and pairs == "image") or (b == c and pairs == "across"):
                continue
            d = min(sum((float(x) - float(y)) ** 2 for x, y in zip(emb[b, i], emb[c, j])), 50.0)
            if labels[b, i] == labels[c, j]:
                pos.append(math.log((1 + math.exp(d)) / 2))
                pos_d.append(d)
            else:
                neg.append(math.log(1 + math.exp(-d) / 2))
                neg_d.append(d)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {
        "loss": mean(pos) + mean(neg),
        "pos_dist": mean(pos_d),
        "neg_dist": mean(neg_d),
        "pos_pairs": len(pos),
        "neg_pairs": len(neg),
    }


def assert_matches(loss: torch.Tensor, stats: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-4, abs=1e-5)
    for key in ("pos_dist", "neg_dist"):
        assert stats[key].item() == pytest.approx(expected[key], rel=1e-4, abs=1e-4)
    for key in ("pos_pairs", "neg_pairs"):
        assert stats[key].item() == expected[key]


def superpixel_batch() -> tuple[torch.Tensor, ...]:
    """Three images of up to 7 slots: unlabelled, impure and padded slots; image 2 has no positive pair."""
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 7, 4, generator=generator) * 2.5  # some squared distances exceed the clamp of 50
    labels = torch.tensor([[1, 1, 2, 0, 2, 1, 3], [4, 4, 4, 5, 0, 5, 0], [1, 2, 3, 4, 5, 0, 0]])
    purity = torch.tensor([[0.9, 0.4, 1.0, 1.0, 0.5, 0.8, 0.7], [1.0] * 7, [0.6] * 7])
    mask = torch.tensor([[True] * 7, [True] * 6 + [False], [True] * 5 + [False] * 2])
    return emb, labels, purity, mask


def test_pair_losses_match_the_formulas_and_stay_finite() -> None:
    d = torch.tensor([0.0, 1e-3, 0.7, 5.0, 30.0, 50.0], dtype=torch.float64, requires_grad=True)
    l_pos, l_neg = pair_losses(d)
    for value, pos, neg in zip(d.tolist(), l_pos.tolist(), l_neg.tolist()):
        assert pos == pytest.approx(math.log((1 + math.exp(value)) / 2), rel=1e-12, abs=1e-12)
        assert neg == pytest.approx(math.log(1 + math.exp(-value) / 2), rel=1e-12, abs=1e-15)
    (l_pos.sum() + l_neg.sum()).backward()
    assert torch.isfinite(d.grad).all()
    assert l_pos[0].item() == 0.0 and l_neg[0].item() == pytest.approx(math.log(1.5))


def test_superpixel_loss_matches_brute_force() -> None:
    emb, labels, purity, mask = superpixel_batch()
    loss, stats = superpixel_npair_loss(emb, labels, purity, mask)
    valid = mask & (labels != 0) & (purity >= 0.5)
    expected = brute_force(emb, labels, valid)
    assert expected["pos_pairs"] == 2 * (2 + 3 + 1)  # ordered; image 0: {0,5} {2,4}; image 1: {0,1,2} {3,5}
    assert_matches(loss, stats, expected)


def test_superpixel_batch_loss_also_pairs_superpixels_of_different_images() -> None:
    emb, labels, purity, mask = superpixel_batch()
    valid = mask & (labels != 0) & (purity >= 0.5)
    loss, stats = superpixel_npair_loss(emb, labels, purity, mask, pairs="batch")
    expected = brute_force(emb, labels, valid, pairs="batch")
    # 15 valid superpixels; per label over the batch 1: 3, 2: 3, 3: 2, 4: 4, 5: 3 -> 3+3+1+6+3 = 16 pairs
    assert (expected["pos_pairs"], expected["neg_pairs"]) == (2 * 16, 15 * 14 - 2 * 16)
    assert_matches(loss, stats, expected)
    for variant in ("batch", "both"):  # one image: nothing to pair across, DESIGN.md's loss
        one = superpixel_npair_loss(emb[:1], labels[:1], purity[:1], mask[:1], pairs=variant)
        assert_matches(*one, brute_force(emb[:1], labels[:1], valid[:1]))


def test_superpixel_both_loss_sums_a_within_image_and_an_across_image_term() -> None:
    emb, labels, purity, mask = superpixel_batch()
    valid = mask & (labels != 0) & (purity >= 0.5)
    loss, stats = superpixel_npair_loss(emb, labels, purity, mask, pairs="both")
    within, across = brute_force(emb, labels, valid), brute_force(emb, labels, valid, pairs="across")
    assert within["pos_pairs"] + across["pos_pairs"] == 2 * 16 and across["pos_pairs"] == 2 * (16 - 6)
    assert loss.item() == pytest.approx(within["loss"] + across["loss"], rel=1e-4, abs=1e-5)
    everything = brute_force(emb, labels, valid, pairs="batch")  # the statistics cover every pair of the batch
    for key in ("pos_dist", "neg_dist"):
        assert stats[key].item() == pytest.approx(everything[key], rel=1e-4, abs=1e-4)
    assert (stats["pos_pairs"].item(), stats["neg_pairs"].item()) == (everything["pos_pairs"], everything["neg_pairs"])


def test_min_purity_changes_which_superpixels_count() -> None:
    emb, labels, purity, mask = superpixel_batch()
    loss, stats = superpixel_npair_loss(emb, labels, purity, mask, min_purity=0.0)
    assert_matches(loss, stats, brute_force(emb, labels, mask & (labels != 0)))


def test_batch_without_positive_pairs_is_the_negative_term_alone() -> None:
    emb, labels, purity, mask = superpixel_batch()
    loss, stats = superpixel_npair_loss(emb[2:], labels[2:], purity[2:], mask[2:])
    expected = brute_force(emb[2:], labels[2:], mask[2:] & (labels[2:] != 0))
    assert expected["pos_pairs"] == 0 and stats["pos_dist"].item() == 0.0
    assert_matches(loss, stats, expected)


def test_batch_without_valid_superpixels_gives_zero_loss_and_zero_gradient() -> None:
    emb, labels, purity, mask = superpixel_batch()
    emb.requires_grad_(True)
    loss, stats = superpixel_npair_loss(emb, torch.zeros_like(labels), purity, mask)
    loss.backward()
    assert loss.item() == 0.0 and stats["neg_pairs"].item() == 0
    assert (emb.grad == 0).all()


def test_gradient_is_finite_where_embeddings_coincide() -> None:
    emb, labels, purity, mask = superpixel_batch()
    emb[0, 1] = emb[0, 0]  # a positive pair at distance 0
    emb[0, 2] = emb[0, 5]  # a negative pair at distance 0
    emb.requires_grad_(True)
    loss, _ = superpixel_npair_loss(emb, labels, purity, mask, min_purity=0.0)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad[0, 2].abs().sum() > 0 and emb.grad[1].abs().sum() > 0


def brute_force_differentiable(emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The loss of `brute_force` built pair by pair from scalar torch operations in float64, so that autograd
    gives the gradient of DESIGN.md's formula itself (including the clamp at 50, past which it is 0)."""
    pos: list[torch.Tensor] = []
    neg: list[torch.Tensor] = []
    for b in range(emb.shape[0]):
        for i in range(emb.shape[1]):
            for j in range(emb.shape[1]):
                if i == j or not (valid[b, i] and valid[b, j]):
                    continue
                d = torch.clamp(((emb[b, i] - emb[b, j]) ** 2).sum(), max=50.0)
                if labels[b, i] == labels[b, j]:
                    pos.append(torch.log((1 + torch.exp(d)) / 2))
                else:
                    neg.append(torch.log(1 + torch.exp(-d) / 2))
    zero = emb.sum() * 0.0
    return (torch.stack(pos).mean() if pos else zero) + (torch.stack(neg).mean() if neg else zero)


def test_superpixel_loss_gradient_matches_the_brute_force_gradient() -> None:
    """Not only finite and non-zero: the gradient with respect to every embedding is the formula's, also
    where two embeddings coincide and where distances pass the clamp (pairs of both kinds count)."""
    emb, labels, purity, mask = superpixel_batch()
    emb = emb.double()
    emb[0, 1] = emb[0, 0]  # a positive pair at distance 0
    emb[0, 2] = emb[0, 5]  # a negative pair at distance 0
    valid = mask & (labels != 0) & (purity >= 0.5)
    library = emb.clone().requires_grad_(True)
    superpixel_npair_loss(library, labels, purity, mask)[0].backward()
    reference = emb.clone().requires_grad_(True)
    brute_force_differentiable(reference, labels, valid).backward()
    assert reference.grad.abs().max() > 0.01
    torch.testing.assert_close(library.grad, reference.grad.to(library.grad.dtype), rtol=1e-4, atol=1e-5)


def pixel_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 4, 5, generator=generator)
    labels = torch.randint(0, 3, (2, 4, 5), generator=generator)
    labels[1, :, :3] = 0  # image 1 has at most 8 labelled pixels
    return features, labels


def test_pixel_loss_takes_every_labelled_pixel_when_there_are_few() -> None:
    features, labels = pixel_batch()
    loss, stats = pixel_npair_loss(features, labels, num_samples=100)
    emb = features.flatten(2).transpose(1, 2)
    flat = labels.flatten(1)
    assert_matches(loss, stats, brute_force(emb, flat, flat != 0))


def test_pixel_loss_uses_the_seeded_sample() -> None:
    features, labels = pixel_batch()
    flat = labels.flatten(1)
    loss, stats = pixel_npair_loss(features, labels, 6, torch.Generator().manual_seed(7))
    index, valid = sample_labelled_pixels(flat, 6, torch.Generator().manual_seed(7))
    emb = torch.gather(features.flatten(2).transpose(1, 2), 1, index[:, :, None].expand(-1, -1, 3))
    expected = brute_force(emb, torch.gather(flat, 1, index), valid)
    assert expected["pos_pairs"] + expected["neg_pairs"] == 2 * 6 * 5
    assert_matches(loss, stats, expected)


def test_sampling_is_uniform_without_replacement_among_labelled_pixels() -> None:
    labels = torch.tensor([[0, 3, 1, 0, 2, 2, 5, 0, 1, 4]]).repeat(4000, 1)  # 7 labelled pixels
    labels[0, 2:] = 0  # one row with a single labelled pixel: it is taken, the rest is filler
    index, valid = sample_labelled_pixels(labels, 3, torch.Generator().manual_seed(0))
    assert index.shape == (4000, 3) and valid[0].sum() == 1 and valid[1:].all()
    assert torch.gather(labels, 1, index)[valid].ne(0).all()
    assert (index.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct within a row
    frequency = torch.bincount(index[1:][valid[1:]], minlength=10).double() / 3999
    labelled = labels[1] != 0
    assert (frequency[~labelled] == 0).all()
    assert (frequency[labelled] - 3 / 7).abs().max() < 0.03  # binomial sd is about 0.008


def test_gradients_reach_every_model_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", dim=8)
    images = torch.randn(2, 3, 12, 16)
    rows, cols = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    superpixels = ((rows // 4) * 4 + cols // 4).expand(2, -1, -1)  # 12 blocks of 4x4
    labels = torch.stack([1 + (cols >= 8).long(), 1 + (rows >= 4).long() + (cols >= 12).long()])
    block_labels = torch.stack([torch.bincount(superpixels[b].flatten(), labels[b].flatten()) / 16 for b in range(2)])
    pooled, mask = superpixel_pool(model(images), superpixels, 12)
    loss, _ = superpixel_npair_loss(pooled, block_labels.round().long(), torch.ones(2, 12), mask)
    loss.backward()
    head_bias = model.head[1].bias
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
        if parameter is not head_bias:
            assert parameter.grad.abs().sum() > 0, name
    # A common shift of every embedding changes no distance: the last BN bias gets no gradient.
    assert head_bias.grad.abs().max() < 1e-5 * model.head[1].weight.grad.abs().max()


def test_pixel_loss_gradient_reaches_the_model() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", dim=8)
    labels = torch.randint(0, 4, (2, 10, 9))
    loss, _ = pixel_npair_loss(model(torch.randn(2, 3, 10, 9)), labels, 16, torch.Generator().manual_seed(0))
    loss.backward()
    grad = model.stem[0].weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
