"""Vectorised superpixel pooling vs a per-superpixel Python loop, on random-Voronoi superpixel maps.

    python benchmarks/pooling.py [--size 224] [--superpixels 500] [--dim 128] [--batch 5] [--repeats 5] [--device cpu]

Prints the time of each method (median of the repeats, after one warm-up run) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from spix.trainer.pooling import superpixel_pool


def random_voronoi_map(height: int, width: int, num_cells: int, generator: torch.Generator) -> torch.Tensor:
    """(H, W) ids 0..n-1 of the nearest of num_cells random seeds; ids made contiguous (n <= num_cells)."""
    seeds = torch.rand(num_cells, 2, generator=generator) * torch.tensor([height, width])
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()
    nearest = torch.cdist(pixels, seeds).argmin(dim=1)
    return torch.unique(nearest, return_inverse=True)[1].reshape(height, width)


def random_superpixel_batch(
    batch: int, height: int, width: int, num_superpixels: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of Voronoi superpixel maps (B, H, W) and their superpixel counts (B,)."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.stack([random_voronoi_map(height, width, num_superpixels, generator) for _ in range(batch)])
    return maps, maps.flatten(1).amax(dim=1) + 1


def naive_pool(features: torch.Tensor, superpixels: torch.Tensor, num_superpixels: torch.Tensor) -> torch.Tensor:
    """The loop the vectorised version replaces: one masked mean per superpixel per image."""
    pooled = features.new_zeros(features.shape[0], int(num_superpixels.max()), features.shape[1])
    for b in range(features.shape[0]):
        for s in range(int(num_superpixels[b])):
            pooled[b, s] = features[b][:, superpixels[b] == s].mean(dim=1)
    return pooled


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `run` over `repeats` calls after one warm-up call."""
    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--superpixels", type=int, default=500)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    superpixels, counts = random_superpixel_batch(args.batch, args.size, args.size, args.superpixels)
    superpixels, counts = superpixels.to(device), counts.to(device)
    features = torch.randn(args.batch, args.dim, args.size, args.size, generator=torch.Generator().manual_seed(1))
    features = features.to(device)

    vectorised, _ = superpixel_pool(features, superpixels, counts)
    difference = (vectorised - naive_pool(features, superpixels, counts)).abs().max().item()
    fast = median_seconds(lambda: superpixel_pool(features, superpixels, counts), args.repeats, device)
    slow = median_seconds(lambda: naive_pool(features, superpixels, counts), args.repeats, device)

    print(f"device={device} torch threads={torch.get_num_threads()} repeats={args.repeats} (median after 1 warm-up)")
    print(f"batch={args.batch} size={args.size}x{args.size} D={args.dim} superpixels/image={counts.tolist()}")
    print(f"max |vectorised - loop| = {difference:.2e}")
    print(f"vectorised superpixel_pool: {fast * 1e3:9.2f} ms")
    print(f"per-superpixel Python loop: {slow * 1e3:9.2f} ms")
    print(f"loop / vectorised: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
