"""Inference throughput: `spix infer` against the model's forward pass alone, and where the time goes.

In one run, on the same images, model and cores:
- forward: the model's forward pass alone, in a fresh process (decoded images, no SLIC, no pooling, no pictures,
  no files; on a GPU bf16 and same-size stacks of --batch-size, as the model actor runs it). The ceiling.
- `spix infer` with the default outputs, and `spix infer --outputs embeddings`, each as a user runs it (a fresh
  process with its own Ray), throughput after Ray's start, and their ratios to the ceiling; and that time split
  into the model actors' start-up (process, imports, CUDA, the model; until the first is ready) and the
  pace after it, which is what a long run approaches (with few images the start-up dominates).
- where `spix infer`'s time goes per image, from the stage timings it records in infer.json: decode, SLIC,
  forward (with pooling), post-processing (principal components, guided filters, k-means, soft layers,
  quantisation, copies to the host), writing (encoding and files), and the share of post-processing + writing
  in the per-image time.
The model is untrained (speed does not depend on the weights) and its model.json carries a feature basis, as
`spix train` writes one, so nothing is fitted at start. --rounds repeats the three measurements alternately.
Run: python benchmarks/infer.py [--images 24] [--rounds 2] [--preset paper] [--cores N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spix.pipeline.imageio import decode_rgb
from spix.pipeline.toydata import make_toy_dataset
from spix.trainer.checkpoint import load_model, model_meta, write_final_model
from spix.trainer.model import autocast, build_model, normalize_images

NUM_SUPERPIXELS, COMPACTNESS = 500, 10.0
SIZE = (683, 512)  # width, height: ADE20K's most common size
STAGES = ("decode_s", "slic_s", "forward_s", "post_s", "write_s")


def write_images(folder: Path, count: int) -> None:
    """`count` toy images (textured regions, JPEG), all SIZE."""
    root = folder.parent / "toy"
    make_toy_dataset(root, n_train=count, n_val=1, n_classes=16, seed=7, min_side=SIZE[1], max_side=SIZE[0])
    folder.mkdir()
    for path in sorted((root / "images" / "training").iterdir()):
        Image.open(path).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR).save(folder / path.name, quality=90)


def write_model(run: Path, preset: str) -> None:
    """An untrained model of the preset as a finished run, with a feature basis in model.json."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    run.mkdir(parents=True)
    preprocess = {"num_superpixels": NUM_SUPERPIXELS, "compactness": COMPACTNESS, "max_side": 0, "num_classes": 150}
    basis = {"mean": [0.0] * 128, "components": np.eye(3, 128).tolist(), "std": [1.0] * 3, "images": 0, "source": "benchmark"}
    write_final_model(run, model.state_dict(), {**model_meta(preset, 128, preprocess, [], {}), "feature_basis": basis})


@torch.no_grad()
def forward_images_per_second(run: Path, paths: list[Path], batch_size: int) -> float:
    """The forward pass alone over already decoded images: batches of one on CPU (as the CPU actor runs),
    same-size stacks of `batch_size` under bf16 autocast on a GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(run, device)
    gpu = device.type == "cuda"
    images = [torch.from_numpy(np.array(decode_rgb(p.read_bytes()))) for p in paths]
    stack = batch_size if gpu else 1
    batches = [torch.stack(images[i : i + stack]).to(device) for i in range(0, len(images), stack)]
    with autocast(device, gpu):
        model(normalize_images(batches[0]))  # warm-up
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            model(normalize_images(batch))
        if gpu:
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def forward_in_fresh_process(folder: Path, run: Path, cores: int, batch_size: int) -> float:
    """`forward_images_per_second` in a new process, like each `spix infer` run: no state carried over."""
    command = [sys.executable, __file__, "--forward-of", str(folder), "--run", str(run), "--cores", str(cores),
               "--batch-size", str(batch_size)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def spix_infer(folder: Path, run: Path, out: Path, cores: int, batch_size: int, outputs: str) -> dict:
    """`spix infer` in a fresh process; its infer.json summary."""
    command = [sys.executable, "-m", "spix", "infer", str(folder), "--checkpoint", str(run), "--out", str(out),
               "--num-cpus", str(cores), "--batch-size", str(batch_size), "--outputs", outputs, "--overwrite"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"spix infer failed:\n{result.stderr}")
    return json.loads((out / "infer.json").read_text())["summary"]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" + (f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs of spix infer's Ray and torch threads here")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--forward-of", type=Path, help=argparse.SUPPRESS)  # internal: the forward pass of this folder
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.cores)
    if args.forward_of:
        print(forward_images_per_second(args.run, sorted(args.forward_of.iterdir()), args.batch_size))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    outputs = {"default": "embeddings,features,soft,inputs", "embeddings": "embeddings"}
    forward, infer = [], {name: [] for name in outputs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        write_images(folder, args.images)
        write_model(tmp / "run", args.preset)
        for _ in range(args.rounds):
            forward.append(forward_in_fresh_process(folder, tmp / "run", args.cores, args.batch_size))
            for name, kinds in outputs.items():
                infer[name].append(spix_infer(folder, tmp / "run", tmp / f"out_{name}", args.cores, args.batch_size, kinds))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.cores} torch threads"
    print(f"{args.images} toy images {SIZE[0]}x{SIZE[1]}, model {args.preset}, {device_name}, Ray CPUs {args.cores}, "
          f"batch {args.batch_size}, {args.rounds} rounds: median (min-max)")
    print(f"forward pass alone (the ceiling):        {spread(forward)} images/s")
    for name in outputs:
        rates = [s["images_per_s_after_start"] for s in infer[name]]
        ratios = [rate / ceiling for rate, ceiling in zip(rates, forward)]
        print(f"spix infer --outputs {outputs[name]:<31} {spread(rates)} images/s after Ray start; "
              f"/ forward {spread(ratios)}; end to end {spread([s['images_per_s'] for s in infer[name]])} images/s")
        steady = [s["images_per_s_after_ready"] for s in infer[name]]
        print(f"    model ready after {spread([s['model_ready_s'] for s in infer[name]])} s (the actors' start-up), "
              f"then {spread(steady)} images/s; / forward {spread([a / b for a, b in zip(steady, forward)])}")
    for name in outputs:
        per_image = [1.0 / s["images_per_s_after_start"] for s in infer[name]]
        stages = {stage: [s["stage_s_per_image"][stage] for s in infer[name]] for stage in STAGES}
        share = [(stages["post_s"][i] + stages["write_s"][i]) / per_image[i] for i in range(args.rounds)]
        print(f"{name}: seconds per image {spread(per_image)}; stages " +
              ", ".join(f"{stage.removesuffix('_s')} {spread(values)}" for stage, values in stages.items()) +
              f"; post-processing + writing = {spread(share)} of the per-image time")


if __name__ == "__main__":
    main()
