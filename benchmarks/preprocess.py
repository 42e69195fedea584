"""Preprocessing throughput: `spix preprocess` on Ray vs the single-process floor, and fast-slic vs skimage.

Prints images/s of the pipeline and of the floor (decode + SLIC + statistics in a tight loop, no Ray,
no Parquet) measured in this one run, and efficiency = pipeline / (floor x cores used).
Run: python benchmarks/preprocess.py [--images 300] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spix.pipeline.dataset import list_split
from spix.pipeline.imageio import decode_labels, decode_rgb
from spix.pipeline.preprocess import PreprocessParams, keep_image_arrays_on_the_heap, preprocess_image
from spix.pipeline.toydata import make_toy_dataset


def floor_images_per_second(root: Path, params: PreprocessParams, limit: int) -> float:
    """The plain per-image function over files already in memory: the best one core can do."""
    keep_image_arrays_on_the_heap()  # as the pipeline's workers do
    records = list_split(root, "training")[:limit]
    inputs = [((root / r.image_path).read_bytes(), (root / r.label_path).read_bytes(), r) for r in records]
    preprocess_image(*inputs[0], params)  # load fast-slic before timing
    start = time.perf_counter()
    for image_bytes, label_bytes, record in inputs:
        preprocess_image(image_bytes, label_bytes, record, params)
    return len(inputs) / (time.perf_counter() - start)


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
    command = [sys.executable, "-m", "spix", "preprocess", "--data-root", str(root), "--out", str(out),
               "--splits", "training", "--num-cpus", str(cores), "--images-per-shard", str(images_per_shard)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--images-per-shard", type=int, default=25)
    parser.add_argument("--skimage-images", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ADEChallengeData2016"
        make_toy_dataset(root, n_train=args.images, n_val=1, n_classes=16, seed=7, min_side=512, max_side=683)
        params = PreprocessParams(num_classes=16)
        sizes = np.array([decode_labels((root / r.label_path).read_bytes()).shape for r in list_split(root, "training")])
        # The VM's speed drifts by ~10% over a minute: the floor is measured before and after the
        # pipeline and averaged, so both see the same machine.
        floor_before = floor_images_per_second(root, params, args.images)
        manifest = pipeline_run(root, Path(tmp) / "shards", args.cores, args.images_per_shard)
        floor = (floor_before + floor_images_per_second(root, params, args.images)) / 2
        skimage_floor = skimage_floor_images_per_second(root, params, args.skimage_images)
    timings = manifest["timings"]
    steady = timings["images_per_s"]
    end_to_end = timings["inputs_processed"] / timings["total_s"]
    print(f"images: {args.images}, mean size {sizes[:, 1].mean():.0f}x{sizes[:, 0].mean():.0f}, cores used: {args.cores}, "
          f"superpixels/image: {manifest['superpixels_per_image']['mean']:.0f}")
    print(f"floor (1 process, fast-slic):      {floor:8.1f} images/s")
    print(f"floor (1 process, skimage slic):   {skimage_floor:8.1f} images/s  -> fast-slic / skimage = {floor / skimage_floor:.1f}x")
    print(f"pipeline (Ray, after Ray start):   {steady:8.1f} images/s  ({timings['process_s']:.1f} s)")
    print(f"pipeline (incl. Ray start {timings['ray_init_s']:.1f} s): {end_to_end:8.1f} images/s  ({timings['total_s']:.1f} s)")
    print(f"efficiency = pipeline / (floor x {args.cores} cores): {steady / (floor * args.cores):.2f} "
          f"(incl. Ray start: {end_to_end / (floor * args.cores):.2f})")


if __name__ == "__main__":
    main()
