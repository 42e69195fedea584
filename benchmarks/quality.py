"""How good are the features? Train for a fixed wall-clock budget on fresh toy data, then `spix eval`.

For each seed given: toy data of that seed (8 classes, 320 training and 16 validation images by default,
held out: the repository's tests use other seeds), `spix preprocess` with its defaults, `spix train --max-minutes M` with every other setting
at its default (plus any `--train-flag` you pass through), then `spix eval`. Prints, per seed and as
mean and spread over seeds, pair AUC, mIoU, pixel accuracy and ARI of the trained network, the same
network untrained, and the mean colour + position baseline, with ASA (the labelling ceiling); and the
validation pair AUC after each epoch against training time (from RUN/metrics.jsonl).
With `--train-seeds 0 1 ...` each toy seed is trained once per training seed (`spix train --seed`):
one five-minute run's mIoU moves by up to 0.13 with the training seed alone (README), so a recipe
comparison needs several of both; the summary then counts the runs that meet each goal.

Run: python benchmarks/quality.py --seeds 101 102 103 --minutes 5 [--train-seeds 0 1] [--classes 8]
     [--train-images 320] [--gpu] [--train-flag=--lr=0.003 ...] [--work DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = (("pair_auc", "pair AUC"), ("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"), ("ari", "ARI"))
SETS = ("trained", "untrained", "baseline")


def spix(*args: str) -> subprocess.CompletedProcess:
    """One spix command; a line as it starts and ends, so a run cut short still shows how far it came."""
    started = time.perf_counter()
    print(f"spix {args[0]} {args[1]} ...", flush=True)
    result = subprocess.run([sys.executable, "-m", "spix", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"spix {args[0]} failed:\n{result.stderr[-3000:]}")
    last_line = (result.stdout.strip().splitlines() or [""])[-1]
    print(f"  done in {time.perf_counter() - started:.0f} s: {last_line}", flush=True)
    return result


def one_run(work: Path, seed: int, train_seed: int, args: argparse.Namespace) -> dict:
    """Data of toy seed `seed`, training at `train_seed` and evaluation; returns the eval metrics and the training curve."""
    data = f"{seed}-{args.classes}c-{args.train_images}-{args.val_images}"
    root, shards, run = work / f"toy{data}", work / f"shards{data}", work / f"run{seed}t{train_seed}{args.tag}"
    if not root.exists():  # data and shards are reused by later runs in the same --work folder
        spix("make-toy-data", str(root), "--seed", str(seed), "--classes", str(args.classes),
             "--train", str(args.train_images), "--val", str(args.val_images))
    if not (shards / "manifest.json").exists():
        spix("preprocess", "--data-root", str(root), "--out", str(shards))
    started = time.perf_counter()
    spix("train", "--shards", str(shards), "--out", str(run), "--max-minutes", str(args.minutes), "--seed", str(train_seed),
         "--gpu" if args.gpu else "--no-gpu", *args.train_flag)
    train_s = time.perf_counter() - started
    spix("eval", "--shards", str(shards), "--checkpoint", str(run), "--device", "cuda" if args.gpu else "cpu")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    model = json.loads((run / "model.json").read_text())
    elapsed, curve = 0.0, []
    for epoch in epochs:
        elapsed += epoch["seconds"]
        curve.append((round(elapsed, 1), epoch["val_pair_auc"]))
    return {
        "seed": seed, "train_seed": train_seed, "train_wall_s": train_s, "epochs": len(epochs), "steps": epochs[-1]["step"],
        "preset": model["preset"], "asa": metrics["asa"], "curve": curve,
        "sets": {name: {key: metrics["feature_sets"][name][key] for key, _ in METRICS} for name in SETS},
    }


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"{args.classes} classes, {args.train_images} training / {args.val_images} validation toy images per seed, "
          f"`spix train --max-minutes {args.minutes:g}` {' '.join(args.train_flag)}".rstrip())
    for r in results:
        print(f"seed {r['seed']} (training seed {r['train_seed']}): preset {r['preset']}, {r['epochs']} epochs, {r['steps']} steps, "
              f"train wall {r['train_wall_s']:.0f} s, ASA {r['asa']:.3f}")
        print("  val pair AUC after (training seconds): " + ", ".join(f"{auc:.3f} ({t:.0f} s)" for t, auc in r["curve"]))
    print("\n| metric | trained | untrained | colour + position |\n|---|---|---|---|")
    for key, label in METRICS:
        cells = [spread([r["sets"][name][key] for r in results]) for name in SETS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| ASA (ceiling) | {spread([r['asa'] for r in results])} | | |")
    auc = [r["sets"]["trained"]["pair_auc"] for r in results]
    margin = [r["sets"]["trained"]["pair_auc"] - max(r["sets"]["untrained"]["pair_auc"], r["sets"]["baseline"]["pair_auc"])
              for r in results]
    miou = [r["sets"]["trained"]["miou"] for r in results]
    met = lambda values, goal: f"{spread(values)} (met in {sum(v >= goal for v in values)} of {len(values)} runs)"
    if args.gpu:
        share = [r["sets"]["trained"]["miou"] / r["asa"] for r in results]
        print(f"\ngoals (issue 13, GPU): pair AUC >= 0.97: {met(auc, 0.97)}; mIoU >= 0.85 x ASA: {met(share, 0.85)}")
    else:
        print(f"\ngoals (issue 13, CPU): pair AUC >= 0.90: {met(auc, 0.90)}; >= 0.10 above both references: "
              f"{met(margin, 0.10)}; mIoU >= 0.6: {met(miou, 0.6)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101], help="toy-data seeds")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="`spix train --seed` values; each toy seed is trained once per value")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=320,
                        help="training images per seed; with 64 the network overfits them within ~30 steps (README)")
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--train-flag", action="append", default=[], help="passed to `spix train` as is, e.g. --train-flag=--lr=0.003")
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("--tag", default="", help="suffix of the run folders in --work (several recipes on the same data)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [one_run(work, seed, train_seed, args) for seed in args.seeds for train_seed in args.train_seeds]
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
