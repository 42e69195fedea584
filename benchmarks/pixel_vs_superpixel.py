"""Pixel-sampled vs superpixel metric learning on the same toy data and wall-clock budget, scored by `spix eval`.

    python benchmarks/pixel_vs_superpixel.py [--work DIR] [--seeds 101 102 103] [--budget 300] [--train 64]
        [--val 16] [--min-side 256] [--max-side 512] [--superpixels 500] [--preset auto] [--crop 0]
        [--batch-size 8] [--pixel-samples 1024] [--device cpu|cuda]

For each seed (toy data, crops, weights and pair sampling all follow it):
1. WORK/seed<N>/ADEChallengeData2016 (`spix make-toy-data --seed N`) and WORK/seed<N>/shards (`spix
   preprocess`), unless the shards' manifest.json is already there;
2. for each loss, a fresh interpreter trains the model (train_without_ray with the default recipe of
   `spix train`: AdamW, warm-up + cosine schedule, --max-minutes set to the budget) until --budget
   seconds of training have passed and writes WORK/seed<N>/runs/<loss>/model.pt + model.json;
3. `spix eval` on each run.
Then one table, printed and written to WORK/comparison.md: per loss the mean ± standard deviation over
the seeds, and a table per seed.

Columns: steps done in the budget; seconds per step (training wall time / steps, crop decoding
included, which is the same work for both losses); peak memory: on CPU the resident-set
high-water mark (Linux VmHWM) of the training process, reset just before training and counted
above the resident set at that moment (imports and the model excluded; data rows, activations,
gradients and the loss's pair matrices included); on CUDA torch.cuda.max_memory_allocated
(tensors only). Then the validation metrics of `spix eval`; the untrained network and the colour
baseline are the same for both runs of a seed and are listed once, with ASA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from loss import resident_high_water_mark, resident_now  # sibling script (benchmarks/loss.py)

LOSSES = ("superpixel", "pixel")
SPIX = [sys.executable, "-m", "spix"]
COLUMNS = ("steps", "s/step", "peak MiB", "pair AUC", "pixel acc", "mIoU", "ARI")
METRICS = ("pair_auc", "pixel_accuracy", "miou", "ari")


def parse_arguments() -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench_pixel_vs_superpixel"))
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per loss")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--superpixels", type=int, default=500)
    parser.add_argument("--preset", default="auto", help="model preset; auto: paper on a GPU, cpu otherwise")
    parser.add_argument("--crop", type=int, default=0, help="0: as spix train (224 on a GPU, 128 otherwise)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pixel-samples", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--child", choices=LOSSES, help=argparse.SUPPRESS)
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command; exit with its stderr when it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return done


def seed_folder(args: argparse.Namespace, seed: int) -> Path:
    return args.work / f"seed{seed}"


def make_shards(args: argparse.Namespace, seed: int) -> Path:
    """Toy data of one seed and its shards (reused when the manifest exists)."""
    shards = seed_folder(args, seed) / "shards"
    if (shards / "manifest.json").is_file():
        return shards
    data = seed_folder(args, seed) / "ADEChallengeData2016"
    run([*SPIX, "make-toy-data", str(data), "--train", str(args.train), "--val", str(args.val),
         "--seed", str(seed), "--min-side", str(args.min_side), "--max-side", str(args.max_side)])
    run([*SPIX, "preprocess", "--data-root", str(data), "--out", str(shards), "--num-superpixels", str(args.superpixels)])
    return shards


def train_child(args: argparse.Namespace) -> dict[str, float]:
    """Child process: train one loss for the budget, save the run, return steps, time and peak memory."""
    from spix.pipeline.shards import read_manifest
    from spix.trainer.checkpoint import model_meta, write_final_model
    from spix.trainer.config import train_config
    from spix.trainer.loop import train_without_ray

    seed = args.child_seed
    shards = str(seed_folder(args, seed) / "shards")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        before = resident_now()
    config = train_config(
        shards=shards, out="", workers=1, epochs=10**9, batch_size=args.batch_size, crop=args.crop, seed=seed,
        preset=args.preset, loss=args.child, pixel_samples=args.pixel_samples, max_minutes=args.budget / 60,
        gpu=args.device.startswith("cuda"),
    )
    model, counters = train_without_ray(config, device=args.device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resident_high_water_mark()
    manifest = read_manifest(shards)
    record = {**asdict(config), "budget_s": args.budget, "steps": counters["steps"]}
    run_dir = seed_folder(args, seed) / "runs" / args.child
    run_dir.mkdir(parents=True, exist_ok=True)
    write_final_model(run_dir, model.state_dict(), model_meta(config.preset, 128, manifest["params"], manifest["class_names"], record))
    return {"steps": counters["steps"], "seconds": counters["seconds"], "peak_bytes": peak - before}


def train_and_evaluate(args: argparse.Namespace, seed: int, loss: str) -> tuple[dict[str, float], dict]:
    """Training counters of one loss (fresh interpreter) and its `spix eval` metrics.json."""
    done = run([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", loss, "--child-seed", str(seed)])
    counters = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = seed_folder(args, seed) / "runs" / loss
    run([*SPIX, "eval", "--shards", str(seed_folder(args, seed) / "shards"), "--checkpoint", str(run_dir),
         "--device", args.device, "--seed", str(seed)])
    return counters, json.loads((run_dir / "eval" / "metrics.json").read_text())


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def spread(values: list[float], digits: int = 3) -> str:
    """mean ± sample standard deviation (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summary_rows(by_seed: dict[int, dict[str, tuple[dict[str, float], dict]]]) -> list[list[str]]:
    """Mean ± spread over seeds (the values themselves for one seed): one row per loss, then the untrained
    network and the colour baseline."""
    seeds = list(by_seed.values())
    rows = []
    for loss in LOSSES:
        counters = [s[loss][0] for s in seeds]
        trained = [s[loss][1]["feature_sets"]["trained"] for s in seeds]
        rows.append([
            f"{loss} loss", spread([c["steps"] for c in counters], digits=0),
            spread([c["seconds"] / max(c["steps"], 1) for c in counters]),
            f"{max(c['peak_bytes'] for c in counters) / 2**20:.0f}",
            *(spread([t[key] for t in trained]) for key in METRICS),
        ])
    for name, title in (("untrained", "untrained network"), ("baseline", "colour + position")):
        scores = [s[LOSSES[0]][1]["feature_sets"][name] for s in seeds]
        rows.append([title, "", "", "", *(spread([x[key] for x in scores]) for key in METRICS)])
    return rows


def markdown(rows: list[list[str]], footer: str, header: str) -> str:
    lines = [header, "", "| run | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", footer, ""])


def main() -> None:
    args = parse_arguments()
    if args.child:
        print(json.dumps(train_child(args)))
        return
    by_seed = {}
    for seed in args.seeds:
        make_shards(args, seed)
        by_seed[seed] = {loss: train_and_evaluate(args, seed, loss) for loss in LOSSES}
    settings = (
        f"device={args.device} torch threads={torch.get_num_threads()} budget={args.budget:.0f}s/loss preset={args.preset} "
        f"crop={args.crop or 'auto'} batch={args.batch_size} pixel samples={args.pixel_samples}, the default schedule of spix train"
    )
    asa = [next(iter(r.values()))[1]["asa"] for r in by_seed.values()]
    parts = [markdown(summary_rows(by_seed), f"ASA (ceiling of pixel accuracy): {spread(asa)}",
                      f"{settings}; mean ± standard deviation over seeds {args.seeds}")]
    parts += [markdown(summary_rows({seed: results}), f"ASA: {number(next(iter(results.values()))[1]['asa'])}", f"seed {seed}")
              for seed, results in by_seed.items()]
    text = "\n".join(parts)
    (args.work / "comparison.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
