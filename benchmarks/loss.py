"""One training step with the superpixel loss vs the pixel-sampling loss at several sample counts.

    python benchmarks/loss.py [--preset tiny|paper] [--device cpu|cuda] [--batch 4] [--size 224]
                              [--superpixels 500] [--samples 1024 4096 16384] [--repeats 3] [--bf16]

A step is forward + loss + backward + Adam step of the same model on the same random batch
(random uint8 images, random-Voronoi superpixels, labels painted on a few random Voronoi regions,
some of them unlabelled). Each configuration runs in a fresh subprocess so that no allocator cache
or memory high-water mark carries over. Reported per configuration:
- time: median over --repeats steps after one warm-up step;
- peak memory: the most memory the steps (warm-up included, so Adam's state is in) held above what
  the process held before the first step (model, batch, imports). On CUDA this is
  torch.cuda.max_memory_allocated (tensors only, no allocator cache); on CPU it is the resident set
  high-water mark (Linux VmHWM, reset just before the first step), i.e. everything the process
  touched, allocator caches included.
A pixel configuration is skipped when its pair matrices would not fit in the free memory, judged
from the bytes per pair that the previous (smaller) pixel configuration used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pooling import random_superpixel_batch, random_voronoi_map  # sibling script (benchmarks/pooling.py)
from spix.trainer.losses import pixel_npair_loss, superpixel_npair_loss
from spix.trainer.model import build_model, normalize_images
from spix.trainer.pooling import superpixel_pool

NUM_CLASSES = 8
# Bytes per sampled pixel pair at the step's peak before any pixel run has measured it (CPU runs
# at P = 1024..3072 measured 25 to 45); later configurations use the latest measurement instead.
FIRST_BYTES_PER_PAIR = 100.0


def superpixel_label_stats(
    superpixels: torch.Tensor, labels: torch.Tensor, s_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority label (B, s_max) and its pixel fraction (purity) per superpixel, by one bincount."""
    batch = superpixels.shape[0]
    offsets = (torch.arange(batch) * s_max)[:, None]
    cell = (superpixels.flatten(1) + offsets) * (NUM_CLASSES + 1) + labels.flatten(1)
    counts = torch.bincount(cell.flatten(), minlength=batch * s_max * (NUM_CLASSES + 1))
    counts = counts.reshape(batch, s_max, NUM_CLASSES + 1)
    majority, label = counts.max(dim=2)
    return label, majority / counts.sum(dim=2).clamp(min=1)


def random_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Images, superpixel maps, pixel labels and per-superpixel label statistics, seeded."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8, generator=generator)
    superpixels, counts = random_superpixel_batch(args.batch, args.size, args.size, args.superpixels)
    region_labels = torch.randint(0, NUM_CLASSES + 1, (args.batch, 6), generator=generator)  # 0: unlabelled
    regions = torch.stack([random_voronoi_map(args.size, args.size, 6, generator) for _ in range(args.batch)])
    labels = torch.gather(region_labels, 1, regions.flatten(1)).view_as(regions)
    sp_label, sp_purity = superpixel_label_stats(superpixels, labels, int(counts.max()))
    batch = {"images": images, "superpixels": superpixels, "counts": counts, "labels": labels,
             "sp_label": sp_label, "sp_purity": sp_purity}
    return {key: value.to(args.device) for key, value in batch.items()}


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    loss_name: str,
    generator: torch.Generator,
    bf16: bool,
) -> float:
    """forward + loss + backward + optimizer step; loss_name is "superpixel" or a pixel sample count."""
    optimizer.zero_grad(set_to_none=True)
    device_type = batch["images"].device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        features = model(normalize_images(batch["images"]).contiguous(memory_format=torch.channels_last))
        if loss_name == "superpixel":
            pooled, mask = superpixel_pool(features, batch["superpixels"], batch["counts"])
            loss, _ = superpixel_npair_loss(pooled, batch["sp_label"], batch["sp_purity"], mask)
        else:
            loss, _ = pixel_npair_loss(features, batch["labels"], int(loss_name), generator)
    loss.backward()
    optimizer.step()
    return loss.item()  # also synchronises CUDA


def resident_high_water_mark() -> int:
    """Peak resident set size of this process in bytes (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def resident_now() -> int:
    """Current resident set size of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def run_configuration(args: argparse.Namespace) -> dict[str, float]:
    """Child process: time and peak memory of the training steps of one loss configuration."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.preset).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = random_batch(args)
    generator = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = resident_now()
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        training_step(model, optimizer, batch, args.child, generator, args.bf16)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resident_high_water_mark()
    return {"seconds": statistics.median(times[1:]), "peak_bytes": peak - before}


def free_bytes(device: torch.device) -> int:
    """Memory a child could still use: free GPU memory, or Linux MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo (Linux only)")


def launch(configuration: str, argv: list[str]) -> dict[str, float] | str:
    """Run one configuration in a fresh interpreter; its result, or why there is none."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", configuration]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or [""])[-1]
        return f"failed (exit {done.returncode}): {last_line}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_arguments() -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper" if gpu else "tiny")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--superpixels", type=int, default=500)
    parser.add_argument("--samples", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.child:
        print(json.dumps(run_configuration(args)))
        return
    argv = sys.argv[1:]
    print(f"device={args.device} preset={args.preset} batch={args.batch} size={args.size}x{args.size} "
          f"superpixels~{args.superpixels} bf16={args.bf16} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()}")
    results: dict[str, dict[str, float] | str] = {"superpixel": launch("superpixel", argv)}
    bytes_per_pair = FIRST_BYTES_PER_PAIR
    for samples in sorted(args.samples):
        pairs = args.batch * min(samples, args.size**2) ** 2
        needed, available = 1.2 * bytes_per_pair * pairs, free_bytes(torch.device(args.device))
        if needed > 0.8 * available:
            result = f"skipped: needs ~{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB free"
        else:
            result = launch(str(samples), argv)
        if isinstance(result, dict):
            bytes_per_pair = result["peak_bytes"] / pairs
        results[str(samples)] = result
    print_table(results)


def print_table(results: dict[str, dict[str, float] | str]) -> None:
    """One row per configuration with pixel/superpixel ratios of time and peak memory."""
    reference = results["superpixel"]
    print(f"{'loss':<22}{'step ms':>10}{'peak MiB':>11}{'time ratio':>12}{'memory ratio':>14}")
    for configuration, result in results.items():
        name = "superpixel" if configuration == "superpixel" else f"pixel P={configuration}"
        if isinstance(result, str):
            print(f"{name:<22}{result}")
            continue
        row = f"{name:<22}{result['seconds'] * 1e3:>10.1f}{result['peak_bytes'] / 2**20:>11.1f}"
        if isinstance(reference, dict):
            row += f"{result['seconds'] / reference['seconds']:>11.1f}x"
            row += f"{result['peak_bytes'] / max(reference['peak_bytes'], 1):>13.1f}x"
        print(row)


if __name__ == "__main__":
    main()
