"""Training throughput of `spix train` with 1 and 2 Ray Train workers on the same shards.

images/s is read from RUN/metrics.jsonl (training images of an epoch / its training seconds), averaged
over the epochs after the first (which includes worker start-up). Each worker holds one CPU.
Run: python benchmarks/train_scaling.py [--images 96] [--epochs 4] [--preset tiny] [--crop 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from spix.pipeline.toydata import make_toy_dataset


def spix(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spix", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def steady_images_per_second(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    steady = lines[1:] or lines
    return sum(m["images_per_s"] for m in steady) / len(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        make_toy_dataset(base / "ADE", n_train=args.images, n_val=4, n_classes=8, seed=1, min_side=256, max_side=384)
        spix("preprocess", "--data-root", str(base / "ADE"), "--out", str(base / "shards"), "--images-per-shard", "32")
        rates = {}
        for workers in (1, 2):
            run = base / f"run{workers}"
            spix("train", "--shards", str(base / "shards"), "--out", str(run), "--workers", str(workers),
                 "--epochs", str(args.epochs), "--preset", args.preset, "--crop", str(args.crop),
                 "--batch-size", str(args.batch_size), "--gpu" if args.gpu else "--no-gpu")
            rates[workers] = steady_images_per_second(run)
    print(f"preset {args.preset}, crop {args.crop}, batch {args.batch_size}/worker, {args.images} images, {args.epochs} epochs")
    for workers, rate in rates.items():
        print(f"workers {workers}: {rate:8.1f} images/s")
    print(f"scaling 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (ideal 2.00x)")


if __name__ == "__main__":
    main()
