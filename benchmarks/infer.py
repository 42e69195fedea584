"""Inference throughput: `spix infer` end to end vs the one-process floor of the same model.

The floor is the least work an image needs: decode + SLIC + the model's forward pass + superpixel
pooling, in a tight loop in this process (no Ray, no pictures, no files). A second reference line adds
the post-processing and writing (`finish_image`) to the same loop: everything `spix infer` does per
image, one image at a time. The pipeline is `spix infer` run as a user runs it (a fresh process with
its own Ray). All numbers come from this one run on this machine; ratio = pipeline / floor.
Run: python benchmarks/infer.py [--images 100] [--side 512] [--preset paper] [--cores N]
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

import torch

from spix.pipeline.infer import InferParams, decode_input, embed_images, finish_image
from spix.pipeline.superpixels import compute_superpixels
from spix.pipeline.toydata import make_toy_dataset
from spix.trainer.checkpoint import model_meta, write_final_model
from spix.trainer.embedding import embed_superpixels
from spix.trainer.model import build_model

NUM_SUPERPIXELS, COMPACTNESS = 500, 10.0


def write_model(run: Path, preset: str) -> torch.nn.Module:
    """An untrained model of the preset (speed does not depend on the weights) as a finished run."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    run.mkdir(parents=True)
    preprocess = {"num_superpixels": NUM_SUPERPIXELS, "compactness": COMPACTNESS, "max_side": 0, "num_classes": 150}
    write_final_model(run, model.state_dict(), model_meta(preset, 128, preprocess, [], {}))
    return model


def floor_images_per_second(model: torch.nn.Module, paths: list[Path], device: torch.device, max_side: int) -> float:
    """decode + SLIC + forward + pooling, one image after another."""
    start = time.perf_counter()
    for path in paths:
        rgb, _ = decode_input(str(path), max_side)
        superpixels = compute_superpixels(rgb, NUM_SUPERPIXELS, COMPACTNESS)
        embed_superpixels(model, rgb, superpixels, device, amp=device.type == "cuda")
    return len(paths) / (time.perf_counter() - start)


def full_loop_images_per_second(
    model: torch.nn.Module, paths: list[Path], device: torch.device, max_side: int, out: Path
) -> float:
    """Everything spix infer does per image, in one process: the floor plus PCA, pictures, soft layers, files."""
    params = InferParams(model_sha1="bench", num_superpixels=NUM_SUPERPIXELS, compactness=COMPACTNESS, max_side=max_side)
    start = time.perf_counter()
    for path in paths:
        rgb, size = decode_input(str(path), max_side)
        superpixels = compute_superpixels(rgb, NUM_SUPERPIXELS, COMPACTNESS)
        embedded = embed_images(model, [rgb], [superpixels], device, amp=device.type == "cuda")[0]
        finish_image(out, path.name, path.name, rgb, superpixels, embedded, params, orig_size=size)
    return len(paths) / (time.perf_counter() - start)


def pipeline_run(folder: Path, run: Path, out: Path, cores: int, batch_size: int, max_side: int) -> dict:
    command = [sys.executable, "-m", "spix", "infer", str(folder), "--checkpoint", str(run), "--out", str(out),
               "--num-cpus", str(cores), "--batch-size", str(batch_size), "--max-side", str(max_side)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "infer.json").read_text())["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--side", type=int, default=512, help="longest side of the generated images")
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs of spix infer's local Ray")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--floor-images", type=int, default=20, help="images timed in the one-process loops")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "ADEChallengeData2016"
        make_toy_dataset(root, n_train=args.images, n_val=1, n_classes=16, seed=7,
                         min_side=max(8, args.side * 3 // 4), max_side=args.side)
        folder = root / "images" / "training"
        paths = sorted(folder.iterdir())
        model = write_model(tmp / "run", args.preset).to(device)
        summary = pipeline_run(folder, tmp / "run", tmp / "out", args.cores, args.batch_size, args.side)
        floor_paths = paths[: args.floor_images]
        floor_images_per_second(model, floor_paths[:2], device, args.side)  # warm-up: fast-slic, allocator
        floor = floor_images_per_second(model, floor_paths, device, args.side)
        full = full_loop_images_per_second(model, floor_paths, device, args.side, tmp / "loop")
    work_s = summary["seconds"] - summary["ray_start_s"]
    steady = summary["done"] / work_s
    end_to_end = summary["images_per_s"]
    print(f"images: {summary['done']} toy images, longest side {args.side}, model {args.preset}, device {device}, "
          f"Ray CPUs {args.cores}, torch threads in this process {torch.get_num_threads()}")
    print(f"floor (1 process: decode + SLIC + forward + pooling):   {floor:8.2f} images/s")
    print(f"full loop (1 process: floor + pictures, layers, files): {full:8.2f} images/s")
    print(f"spix infer (after Ray start):                           {steady:8.2f} images/s  ({work_s:.1f} s)")
    print(f"spix infer (end to end, Ray start {summary['ray_start_s']:.1f} s):              "
          f"{end_to_end:8.2f} images/s  ({summary['seconds']:.1f} s)")
    print(f"ratio spix infer / floor: {steady / floor:.2f} (end to end {end_to_end / floor:.2f}); "
          f"spix infer / full loop: {steady / full:.2f}")


if __name__ == "__main__":
    main()
