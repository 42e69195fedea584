"""Weighted k-means in torch, for many small problems at once (the superpixels of each image of a batch).

The soft layers need k-means on a few hundred superpixel embeddings per image. Run one image at a time on a
GPU that is a few hundred tiny kernel launches; here every image of a batch and every restart is one slice of
the same tensors, so each Lloyd iteration is a handful of batched matrix products, on whatever device holds
the embeddings.
"""

from __future__ import annotations

import torch

MAX_ITER = 100


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """||p - c||^2 for points (..., S, D) and centres (..., K, D) -> (..., S, K), clipped at 0."""
    cross = points @ centres.transpose(-1, -2)
    return ((points * points).sum(-1, keepdim=True) + (centres * centres).sum(-1)[..., None, :] - 2 * cross).clamp(min=0)


def sample_index(probabilities: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row of unnormalised `probabilities` (..., S), by inverse CDF at `uniform` (...,) in [0, 1)."""
    cumulative = probabilities.cumsum(-1)
    target = uniform * cumulative[..., -1]
    index = torch.searchsorted(cumulative, target[..., None].contiguous(), right=True)[..., 0]
    return index.clamp(max=probabilities.shape[-1] - 1)


def kmeans_plus_plus(points: torch.Tensor, weights: torch.Tensor, k: int, uniform: torch.Tensor) -> torch.Tensor:
    """Weighted k-means++ seeds (B, R, k, D) for points (B, S, D), weights (B, S), `uniform` (R, k) draws.

    The first seed is drawn with probability proportional to the weight, each next one proportional to weight
    times the squared distance to the nearest seed so far. Where no point is farther than 0 from the seeds
    (fewer distinct points than k), the draw falls back to the weights alone. Zero-weight points (padding) are
    never drawn.
    """
    batch, restarts = points.shape[0], uniform.shape[0]
    draws = uniform.to(points.device)[None].expand(batch, restarts, k)
    expanded = points[:, None].expand(batch, restarts, *points.shape[1:])
    weight = weights[:, None].expand(batch, restarts, weights.shape[1])
    index = sample_index(weight, draws[..., 0])
    seeds = [torch.gather(expanded, 2, index[..., None, None].expand(batch, restarts, 1, points.shape[2]))]
    nearest = squared_distances(expanded, seeds[0])[..., 0]
    for j in range(1, k):
        spread = weight * nearest
        spread = torch.where(spread.sum(-1, keepdim=True) > 0, spread, weight)
        index = sample_index(spread, draws[..., j])
        seed = torch.gather(expanded, 2, index[..., None, None].expand(batch, restarts, 1, points.shape[2]))
        seeds.append(seed)
        nearest = torch.minimum(nearest, squared_distances(expanded, seed)[..., 0])
    return torch.cat(seeds, 2)


def lloyd(points: torch.Tensor, weights: torch.Tensor, centres: torch.Tensor, max_iter: int = MAX_ITER) -> torch.Tensor:
    """Weighted Lloyd iterations from `centres` (B, R, k, D) until no assignment changes (or `max_iter`).

    A cluster left without weight keeps its centre. Problems that converged early are unchanged by the extra
    iterations (a fixed point), so a result does not depend on the other problems of the batch.
    """
    weight = weights[:, None, :, None]  # (B, 1, S, 1)
    previous = None
    for _ in range(max_iter):
        assignment = squared_distances(points[:, None], centres).argmin(-1)  # (B, R, S)
        if previous is not None and torch.equal(assignment, previous):
            break
        members = torch.nn.functional.one_hot(assignment, centres.shape[2]).to(points.dtype) * weight  # (B, R, S, k)
        mass = members.sum(2)[..., None]  # (B, R, k, 1)
        sums = members.transpose(2, 3) @ points[:, None]  # (B, R, k, D)
        centres = torch.where(mass > 0, sums / mass.clamp(min=torch.finfo(points.dtype).tiny), centres)
        previous = assignment
    return centres


def weighted_kmeans(
    points: torch.Tensor, weights: torch.Tensor, k: int, restarts: int = 4, seed: int = 0, max_iter: int = MAX_ITER
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of each problem's points (B, S, D) weighted by `weights` (B, S) -> centres (B, k, D), inertia (B,).

    `restarts` k-means++ initialisations per problem, Lloyd iterations each, the lowest weighted inertia
    (sum of weight x squared distance to the nearest centre) kept. The random draws come from `seed` alone
    and are the same for every problem, so a problem's result does not depend on the batch it is in.
    Padding points carry weight 0 and change nothing.
    """
    points, weights = points.float(), weights.float()
    uniform = torch.rand(restarts, k, generator=torch.Generator().manual_seed(seed))
    centres = lloyd(points, weights, kmeans_plus_plus(points, weights, k, uniform), max_iter)
    inertia = (squared_distances(points[:, None], centres).min(-1).values * weights[:, None]).sum(-1)  # (B, R)
    best = inertia.argmin(1)
    chosen = torch.gather(centres, 1, best[:, None, None, None].expand(-1, 1, *centres.shape[2:]))[:, 0]
    return chosen, torch.gather(inertia, 1, best[:, None])[:, 0]
