"""Preprocessing throughput: `spix preprocess` on Ray vs the single-process floor, and fast-slic vs skimage.

Prints images/s of the pipeline and of the floor (decode + SLIC + statistics in a tight loop, no Ray,
no Parquet) measured in this one run, and efficiency = pipeline / (floor x cores used).

This VM's speed drifts by several percent from one minute to the next, so the two are measured in
alternation: floor, pipeline, floor, pipeline, ..., floor. Each pipeline run is compared with the mean
of the floors just before and after it, and the median over the rounds is the headline figure. Each
measurement runs in a fresh process, as the pipeline's workers do (a long-lived benchmark process that
keeps the floor's memory measurably slows the pipeline run after it on this VM).
Run: python benchmarks/preprocess.py [--images 300] [--cores 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spix.pipeline.dataset import list_split
from spix.pipeline.imageio import decode_labels, decode_rgb
from spix.pipeline.preprocess import PreprocessParams, keep_freed_memory_in_process, preprocess_image, preprocess_params
from spix.pipeline.toydata import make_toy_dataset

PARAMS = preprocess_params(num_classes=16)  # the toy data below has 16 classes; everything else default


def floor_images_per_second(root: Path, params: PreprocessParams) -> float:
    """The plain per-image function over files already in memory: the best one core can do."""
    keep_freed_memory_in_process()  # as the pipeline's workers do
    records = list_split(root, "training")
    inputs = [((root / r.image_path).read_bytes(), (root / r.label_path).read_bytes(), r) for r in records]
    preprocess_image(*inputs[0], params)  # load fast-slic before timing
    start = time.perf_counter()
    for image_bytes, label_bytes, record in inputs:
        preprocess_image(image_bytes, label_bytes, record, params)
    return len(inputs) / (time.perf_counter() - start)


def floor_in_fresh_process(root: Path) -> float:
    """The floor, measured by a new Python process running this script with --floor-of ROOT."""
    command = [sys.executable, __file__, "--floor-of", str(root)]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def skimage_floor_images_per_second(root: Path, params: PreprocessParams, limit: int) -> float:
    """The same loop with scikit-image's SLIC (the seed's choice) in place of fast-slic."""
    from skimage.segmentation import slic

    from spix.pipeline.superpixels import relabel_contiguous, superpixel_stats

    records = list_split(root, "training")[:limit]
    start = time.perf_counter()
    for record in records:
        rgb = decode_rgb((root / record.image_path).read_bytes())
        labels = decode_labels((root / record.label_path).read_bytes())
        sp = relabel_contiguous(slic(rgb, n_segments=params.num_superpixels, compactness=params.compactness, start_label=0))
        superpixel_stats(sp, labels, rgb, params.num_classes + 1)
    return len(records) / (time.perf_counter() - start)


def pipeline_run(root: Path, out: Path, cores: int, images_per_shard: int) -> dict:
    """One fresh `spix preprocess` (its own Ray instance) into an empty folder; its manifest timings."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "spix", "preprocess", "--data-root", str(root), "--out", str(out),
               "--splits", "training", "--num-cpus", str(cores), "--images-per-shard", str(images_per_shard)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--images-per-shard", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skimage-images", type=int, default=20)
    parser.add_argument("--floor-of", type=Path, help=argparse.SUPPRESS)  # internal: print the floor of a dataset
    args = parser.parse_args()
    if args.floor_of:
        print(floor_images_per_second(args.floor_of, PARAMS))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ADEChallengeData2016"
        make_toy_dataset(root, n_train=args.images, n_val=1, n_classes=16, seed=7, min_side=512, max_side=683)
        sizes = np.array([decode_labels((root / r.label_path).read_bytes()).shape for r in list_split(root, "training")])
        floors = [floor_in_fresh_process(root)]
        runs = []
        for _ in range(args.rounds):
            runs.append(pipeline_run(root, Path(tmp) / "shards", args.cores, args.images_per_shard))
            floors.append(floor_in_fresh_process(root))
        skimage_floor = skimage_floor_images_per_second(root, PARAMS, args.skimage_images)
    superpixels = runs[0]["superpixels_per_image"]["mean"]
    print(f"images: {args.images}, mean size {sizes[:, 1].mean():.0f}x{sizes[:, 0].mean():.0f}, cores used: {args.cores}, "
          f"superpixels/image: {superpixels:.0f}, images/shard: {args.images_per_shard}, rounds: {args.rounds}")
    efficiencies, with_start = [], []
    for i, manifest in enumerate(runs):
        t = manifest["timings"]
        floor = (floors[i] + floors[i + 1]) / 2
        efficiencies.append(t["images_per_s"] / (floor * args.cores))
        with_start.append(t["inputs_processed"] / t["total_s"] / (floor * args.cores))
        busy = t["shard_tasks_s"] / (t["process_s"] * args.cores)
        print(f"round {i + 1}: floor {floor:5.1f} images/s | pipeline {t['images_per_s']:5.1f} images/s after Ray start "
              f"({t['process_s']:.1f} s), {t['inputs_processed'] / t['total_s']:5.1f} incl. Ray start ({t['ray_init_s']:.1f} s) | "
              f"efficiency {efficiencies[-1]:.2f} ({with_start[-1]:.2f} incl. start) | workers busy {busy:.0%}, "
              f"Parquet {t['parquet_write_s'] / t['shard_tasks_s']:.1%} of their time")
    floor = statistics.mean(floors)
    print(f"floor (1 process, fast-slic):      {floor:8.1f} images/s (mean of {len(floors)})")
    print(f"floor (1 process, skimage slic):   {skimage_floor:8.1f} images/s  -> fast-slic / skimage = "
          f"{floor / skimage_floor:.1f}x")
    print(f"efficiency = pipeline / (floor x {args.cores} cores): median {statistics.median(efficiencies):.2f} "
          f"(rounds {', '.join(f'{e:.2f}' for e in efficiencies)}); "
          f"incl. Ray start: median {statistics.median(with_start):.2f}")


if __name__ == "__main__":
    main()
