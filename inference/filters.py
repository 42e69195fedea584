"""Edge-aware smoothing in torch: box means and He et al.'s guided filter, batched, on any device.

Both pictures of `spix infer` (the dominant-features picture and the soft layers) are smoothed where the
image is flat and kept sharp at the image's edges by the guided filter, guided by the image itself. Everything
here is float32 tensor algebra over whole images (no loop over pixels), so it runs where the features already
are: on the GPU of a GPU actor, on CPU threads otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothing_radius(height: int, width: int) -> int:
    """Default guided-filter radius: about 1/64 of the longer side (16 px at 1024), at least 1."""
    return max(1, round(max(height, width) / 64))


def window_sums(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over the window [i - radius, i + radius] (clipped at the borders) along `dim` (-1 or -2).

    One cumulative sum of x padded with radius + 1 zeros in front and radius behind: every window, the
    clipped ones at both borders included, is then the difference of two shifted views.
    """
    n = x.shape[dim]
    padding = (radius + 1, radius) if dim == -1 else (0, 0, radius + 1, radius)
    cumulative = F.pad(x, padding).cumsum(dim)
    return cumulative.narrow(dim, 2 * radius + 1, n) - cumulative.narrow(dim, 0, n)


def window_counts(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """How many positions of 0..n-1 each clipped window [i - radius, i + radius] covers."""
    index = torch.arange(n, device=device)
    return ((index + radius).clamp(max=n - 1) - (index - radius).clamp(min=0) + 1).float()


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of x (..., H, W) over the (2r+1) x (2r+1) window around each pixel, clipped at the borders.

    Separable: window sums along H, then along W, each from a cumulative sum (a few passes over memory,
    whatever the radius). float32 cumulative sums lose precision as they grow; the guided filter centres its
    inputs first, so the sums stay small enough (tested against float64 brute force).
    """
    height, width = x.shape[-2:]
    sums = window_sums(window_sums(x, radius, -2), radius, -1)
    counts = window_counts(height, radius, x.device)[:, None] * window_counts(width, radius, x.device)[None, :]
    return sums / counts


def symmetric_inverse(s: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric positive definite matrices given as (N, G, G, h, w), G in {1, 3}.

    Closed forms (a reciprocal, or cofactors over the determinant): plain element-wise tensor algebra, far
    faster than a batched LAPACK call over ~10^5 tiny systems, and the same on CPU and GPU.
    """
    guides = s.shape[1]
    if guides == 1:
        return 1.0 / s
    if guides != 3:
        raise ValueError(f"the guide must have 1 or 3 channels, not {guides}")
    a, b, c = s[:, 0, 0], s[:, 0, 1], s[:, 0, 2]
    d, e, f = s[:, 1, 1], s[:, 1, 2], s[:, 2, 2]
    ad, be, cf = d * f - e * e, c * e - b * f, b * e - c * d
    determinant = a * ad + b * be + c * cf
    rows = [[ad, be, cf], [be, a * f - c * c, b * c - a * e], [cf, b * c - a * e, a * d - b * b]]
    return torch.stack([torch.stack(row, 1) for row in rows], 1) / determinant[:, None, None]


class GuidedFilter:
    """He et al.'s guided filter with one guide: smooth sources where the guide is flat, keep its edges.

    Per window the output is a linear function of the guide, q = a . I + b, fitted to the source by ridge
    regression with penalty `eps` (guide values in [0, 1]); a colour guide (G = 3) solves a 3 x 3 system per
    pixel. With `subsample` s > 1 the coefficients are fitted on an s-times smaller image (radius / s) and
    enlarged bilinearly before q is formed at full resolution: He and Sun's "fast guided filter", about s^2
    times less work; by default s = radius // 4 (exact for radius < 8).

    What depends on the guide alone (its shrunk copy, window means and covariances) is computed once, here,
    and serves every source filtered with it: both pictures of an image share it. The guide is centred on its
    mean first: q is affine in the guide, so the result is the same, and E[I^2] - E[I]^2 cancels less in float32.
    """

    def __init__(self, guide: torch.Tensor, radius: int, subsample: int | None = None):
        """guide (N, G, H, W) in [0, 1]."""
        self.subsample = max(1, radius // 4) if subsample is None else subsample
        guide = guide.float()
        self.guide = guide - guide.mean(dim=(2, 3), keepdim=True)
        self.size = tuple(guide.shape[-2:])
        height, width = self.size
        self.small = (max(1, round(height / self.subsample)), max(1, round(width / self.subsample)))
        self.radius = max(1, round(radius / self.subsample))
        self.small_guide = small = self.shrink(self.guide)
        guides = guide.shape[1]
        self.mean_guide = box_mean(small, self.radius)
        upper = [(i, j) for i in range(guides) for j in range(i, guides)]  # the covariance is symmetric
        products = box_mean(torch.stack([small[:, i] * small[:, j] for i, j in upper], 1), self.radius)
        covariance = [[None] * guides for _ in range(guides)]
        for index, (i, j) in enumerate(upper):
            covariance[i][j] = covariance[j][i] = products[:, index] - self.mean_guide[:, i] * self.mean_guide[:, j]
        self.covariance = torch.stack([torch.stack(row, 1) for row in covariance], 1)  # (N, G, G, h, w)

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.small, mode="area") if self.subsample > 1 else x

    def enlarge(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False) if self.subsample > 1 else x

    def __call__(self, source: torch.Tensor, eps: float) -> torch.Tensor:
        """source (N, C, H, W) -> filtered float32 (N, C, H, W)."""
        guides, channels = self.guide.shape[1], source.shape[1]
        small_source = self.shrink(source.float())
        mean_source = box_mean(small_source, self.radius)
        products = (self.small_guide[:, :, None] * small_source[:, None]).flatten(1, 2)
        cov_gs = box_mean(products, self.radius).unflatten(1, (guides, channels)) - self.mean_guide[:, :, None] * mean_source[:, None]
        eye = torch.eye(guides, device=source.device)[None, :, :, None, None]
        inverse = symmetric_inverse(self.covariance + eps * eye)  # (N, G, G, h, w)
        a = (inverse[:, :, :, None] * cov_gs[:, None]).sum(2)  # (N, G, C, h, w)
        b = mean_source - (a * self.mean_guide[:, :, None]).sum(1)
        mean_a = self.enlarge(box_mean(a.flatten(1, 2), self.radius)).unflatten(1, (guides, channels))
        mean_b = self.enlarge(box_mean(b, self.radius))
        return (mean_a * self.guide[:, :, None]).sum(1) + mean_b


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float, subsample: int | None = None) -> torch.Tensor:
    """Filter `source` (N, C, H, W) with `guide` (N, G, H, W) in [0, 1] once (see GuidedFilter)."""
    return GuidedFilter(guide, radius, subsample)(source, eps)
