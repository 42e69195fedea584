"""Does the data path keep up with the training step? Measurements on the same shards, in one run.

(a) the training step alone on pre-made batches already on the device: the ceiling of spix's own step;
(b) the data path alone: crops made in one process (`crop_task`), and by the Ray Data stream that
    `spix train` uses, iterated without a step;
(c) `spix train` end to end (run_training, what the command calls), images/s of the epochs after the
    first (which includes start-up), and the share of the step loop spent waiting for data;
(d) without a GPU only: `spix train` with its step replaced by a fixed wait that releases the CPU, a
    stand-in for a fast GPU, at two speeds: faster and slower than the data path. With overlap the
    throughput approaches min(data path, batch / wait); without overlap it would be
    1 / (1 / data path + wait / batch).
Also (c) with --nondeterministic: the cost of keeping the planned order.
(e) `spix train` as in (c) for 3x the epochs (a stream that stays live), with and without spix's pause
    between idle steps of Ray Data's scheduling loop (trainer/feed.py, pause_when_idle).
(f) the step alone (one thread) on the same crops with their superpixel columns padded to the run's
    slots (the most superpixels of any image, as before `trim_slots`) and trimmed to each batch's
    largest crop, for the superpixel loss and its superpixel-batch variant; one image per crop (--mosaic 1),
    since with mosaic crops padded superpixel-batch pair matrices do not fit in memory.
(g) what mosaic crops cost (--mosaic, trainer/data.py mosaic_windows): (b)'s crops in one process and (a)'s
    step on one thread with the run's mosaic against one image per crop.
(h) the memory layout of the model's input (which a convolution keeps through the network): (a)'s step on
    one thread with the images fed NCHW-contiguous and channels_last; `normalize_images` gives channels_last.
(i) without a GPU only: (a)'s step on one thread in float32 and under bf16 autocast, which `spix train` uses
    on CPUs with native bf16 (AVX512-BF16 or AMX; model.cpu_runs_bf16).

Run: python benchmarks/train_throughput.py [--images 96] [--epochs 3] [--preset tiny] [--crop 128]
     [--batch-size 4] [--workers 1] [--gpu]
On a GPU machine use --gpu (paper preset, crop 224, batch 32, bf16 are then the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from spix.pipeline.shards import list_row_groups, read_manifest
from spix.pipeline.toydata import make_toy_dataset
from spix.trainer.config import TrainConfig, train_config
from spix.trainer.data import Batch, crop_task
from spix.trainer.distributed import read_metrics, run_training
from spix.trainer.feed import crop_settings, local_batches, rebatch, stream_batches, training_plan
from spix.trainer.loop import step_function
from spix.trainer.model import build_model, cpu_runs_bf16


def prepare_shards(base: Path, images: int, min_side: int, max_side: int) -> Path:
    make_toy_dataset(base / "ADE", n_train=images, n_val=4, n_classes=8, seed=1, min_side=min_side, max_side=max_side)
    subprocess.run([sys.executable, "-m", "spix", "preprocess", "--data-root", str(base / "ADE"), "--out",
                    str(base / "shards"), "--images-per-shard", "32"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return base / "shards"


class InputLayout(torch.nn.Module):
    """(h) The model with its input moved to one memory layout, whatever `normalize_images` gave."""

    def __init__(self, model: torch.nn.Module, layout: torch.memory_format):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.contiguous(memory_format=self.layout))


def step_alone(
    config: TrainConfig, device: torch.device, threads: int, steps: int, padded: bool = False,
    layout: torch.memory_format | None = None,
) -> float:
    """(a) images/s of spix's training step on batches made beforehand and already on the device;
    (f) with `padded`, their superpixel columns left at the run's slots instead of trimmed;
    (h) with `layout`, the model's input in that memory layout."""
    torch.set_num_threads(threads)
    groups = list_row_groups(config.shards, "training")
    plan = training_plan(config, groups, workers=1)
    settings = crop_settings(config, groups, read_manifest(config.shards))
    if padded:
        chunks = (crop_task(t.epoch, t.groups, t.rows, settings) for t in plan.tasks(0, 0))
        batches = [Batch.from_columns(columns, device) for columns in rebatch(chunks, config.batch_size)][: steps + 2]
    else:
        batches = list(local_batches(plan.tasks(0, 0), settings, config.batch_size, device))[: steps + 2]
    torch.manual_seed(0)
    model = build_model(config.preset).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if layout is not None:
        model = InputLayout(model, layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    step = step_function(config, device)
    for batch in batches[:2]:
        step(model, batch, optimizer)
    timed = batches[2:]
    synchronise(device)
    start = time.perf_counter()
    sums = sum(step(model, batch, optimizer) for batch in timed)
    sums.tolist()
    return len(timed) * config.batch_size / (time.perf_counter() - start)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def crops_alone(config: TrainConfig) -> float:
    """(b1) images/s of the crop tasks in this one process (one core)."""
    groups = list_row_groups(config.shards, "training")
    plan = training_plan(config, groups, workers=1)
    settings = crop_settings(config, groups, read_manifest(config.shards))
    tasks = plan.tasks(0, 0)
    crop_task(tasks[0].epoch, tasks[0].groups, tasks[0].rows[:2], settings)  # warm the decoders
    start = time.perf_counter()
    count = sum(len(crop_task(t.epoch, t.groups, t.rows, settings)["key"]) for t in tasks)
    return count / (time.perf_counter() - start)


def stream_alone(config: TrainConfig, device: torch.device, cpus: int) -> float:
    """(b2) images/s of the Ray Data stream of `spix train` with no step, on a Ray of `cpus` CPUs, start-up included."""
    import ray

    from spix.pipeline.cluster import init_ray

    init_ray(num_cpus=cpus)
    groups = list_row_groups(config.shards, "training")
    plan = training_plan(config, groups, workers=1)
    settings = crop_settings(config, groups, read_manifest(config.shards))
    tasks = [t for epoch in range(3) for t in plan.tasks(epoch, 0)]
    # Timed from the stream's creation: the executor works ahead while the first batch is awaited, so a clock
    # started at the first batch would count images made before it (measured: 806 images/s on 2 CPUs against
    # 108 in one process). Ray Data's start-up is in this figure, which makes it a lower bound.
    start, count = time.perf_counter(), 0
    batches = stream_batches(tasks, settings, config.batch_size, device, config.prefetch_batches, config.deterministic)
    for batch in batches:
        count += batch.images.shape[0]
    synchronise(device)
    rate = count / (time.perf_counter() - start)
    ray.shutdown()
    return rate


def sleeping_step(wait_s: float):
    """A step factory whose step sleeps `wait_s` (the CPU is free meanwhile), like a fast GPU would take that long."""

    def make(config: TrainConfig, device: torch.device, rank: int):
        def step(model, batch, optimizer) -> torch.Tensor:
            time.sleep(wait_s)
            return torch.zeros(3)

        return step

    return make


def train_end_to_end(config: TrainConfig, run: Path, make_step=step_function, pause_idle: bool = True) -> tuple[float, float]:
    """(c)/(d)/(e) images/s and data-wait share of `spix train`, mean over the epochs after the first."""
    run_training(replace(config, out=str(run)), make_step=make_step, pause_idle=pause_idle)
    steady = read_metrics(run)[1:] or read_metrics(run)
    return (sum(m["images_per_s"] for m in steady) / len(steady), sum(m["data_wait"] for m in steady) / len(steady))


class MeasuredSoFar(dict):
    """The measurements, each printed as it is taken, so a run cut short (a device's time limit) keeps them."""

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        print(f"  {key}: {value:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--preset", default=None, help="default: auto (paper on a GPU, cpu otherwise)")
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    gpu = args.gpu
    device = torch.device("cuda" if gpu else "cpu")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        shards = prepare_shards(base, args.images, args.min_side, args.max_side)
        config = train_config(
            shards=str(shards), out="", workers=args.workers, epochs=args.epochs, max_minutes=0.0,
            preset=args.preset or "auto", crop=args.crop or 0,  # auto: paper and 224 on a GPU, cpu and 128 on CPUs
            batch_size=args.batch_size or (32 if gpu else 4), gpu=gpu, val_max_images=0,
        )
        results: dict[str, float] = MeasuredSoFar()
        results["step_1_thread"] = step_alone(config, device, 1, steps=12)
        results[f"step_{cores}_threads"] = step_alone(config, device, cores, steps=12)
        results["crops_one_process"] = crops_alone(config)
        results["stream_all_cpus"] = stream_alone(config, device, cores)
        results["train"], results["train_wait"] = train_end_to_end(config, base / "run")
        results["train_nondeterministic"], _ = train_end_to_end(replace(config, deterministic=False), base / "run_nd")
        longer = replace(config, epochs=3 * config.epochs)
        results["train_long_paused"], _ = train_end_to_end(longer, base / "run_paused")
        results["train_long_spinning"], _ = train_end_to_end(longer, base / "run_spinning", pause_idle=False)
        for loss in ("superpixel", "superpixel-batch"):
            for padded in (True, False):
                # One image per crop: the run's slots are the most superpixels of one image times --mosaic, and
                # with 8 strips the padded superpixel-batch pair matrices alone need tens of GB (the trimmed: MB).
                results[f"step_{loss}_{'padded' if padded else 'trimmed'}"] = step_alone(
                    replace(config, loss=loss, mosaic=1), device, 1, steps=12, padded=padded)
        one_image = replace(config, mosaic=1)
        results["crops_one_image"] = crops_alone(one_image)
        results["step_one_image"] = step_alone(one_image, device, 1, steps=12)
        for name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            results[f"step_{name}"] = step_alone(config, device, 1, steps=12, layout=layout)
        if not gpu:
            for amp in (False, True):
                results[f"step_{'bf16' if amp else 'float32'}"] = step_alone(replace(config, amp=amp), device, 1, steps=12)
            data_rate = results["crops_one_process"] * max(1, cores - config.workers)
            for label, factor in (("fast", 2.0), ("slow", 0.5)):
                wait = config.batch_size / (factor * data_rate)
                rate, waited = train_end_to_end(config, base / f"run_{label}", sleeping_step(wait))
                results[f"wait_{label}_s"] = wait
                results[f"wait_{label}"], results[f"wait_{label}_data_wait"] = rate, waited
    report(config, cores, results, gpu)


def report(config: TrainConfig, cores: int, r: dict[str, float], gpu: bool) -> None:
    ceiling = r["step_1_thread"] if not gpu else r[f"step_{cores}_threads"]
    print(f"{'GPU' if gpu else 'CPU'}: preset {config.preset}, crop {config.crop}, batch {config.batch_size}/worker, "
          f"{config.workers} worker(s), {cores} cores, {config.epochs} epochs")
    print(f"(a) step alone, 1 thread:              {r['step_1_thread']:8.1f} images/s")
    print(f"(a) step alone, {cores} threads:             {r[f'step_{cores}_threads']:8.1f} images/s")
    print(f"(b) crops alone, one process:          {r['crops_one_process']:8.1f} images/s")
    print(f"(b) Ray Data stream alone, {cores} CPUs, start-up included: {r['stream_all_cpus']:8.1f} images/s")
    print(f"(c) spix train (epochs 2+):            {r['train']:8.1f} images/s, waiting for data {100 * r['train_wait']:.1f}% of the step loop")
    print(f"    (c)/(a) = {r['train'] / ceiling:.2f} (ceiling: the step alone on {'the GPU' if gpu else 'the one thread a CPU worker holds'})")
    print(f"    --nondeterministic:               {r['train_nondeterministic']:8.1f} images/s "
          f"({r['train_nondeterministic'] / r['train']:.2f}x the planned order)")
    if not gpu:
        step_cpu_s = 1 / r["step_1_thread"] + 1 / r["crops_one_process"]  # CPU-seconds per image, step + crop
        print(f"    honest ceiling on {cores} cores: step and crops share them, {1 / step_cpu_s:.1f} images/s per core of work "
              f"-> at most {cores / step_cpu_s:.1f} images/s if both used every core; with {config.workers} worker(s) "
              f"holding {config.workers} core(s) for the step: min({r['step_1_thread'] * config.workers:.1f}, "
              f"{r['crops_one_process'] * (cores - config.workers):.1f}) images/s")
        for label in ("fast", "slow"):
            wait, rate = r[f"wait_{label}_s"], r[f"wait_{label}"]
            data = r["crops_one_process"] * max(1, cores - config.workers)
            overlap, serial = min(data, config.batch_size / wait), 1 / (1 / data + wait / config.batch_size)
            print(f"(d) step = sleep {wait * 1e3:.0f} ms ({config.batch_size / wait:.1f} images/s): {rate:8.1f} images/s, "
                  f"data wait {100 * r[f'wait_{label}_data_wait']:.0f}%; with overlap -> {overlap:.1f}, "
                  f"in series -> {serial:.1f}; measured / overlap = {rate / overlap:.2f}")
    print(f"(e) spix train, {3 * config.epochs} epochs: {r['train_long_paused']:8.1f} images/s with the idle pause, "
          f"{r['train_long_spinning']:8.1f} without: {r['train_long_paused'] / r['train_long_spinning']:.2f}x")
    for loss in ("superpixel", "superpixel-batch"):
        padded, trimmed = r[f"step_{loss}_padded"], r[f"step_{loss}_trimmed"]
        print(f"(f) step alone, 1 thread, --loss {loss}, --mosaic 1: {padded:8.1f} images/s padded to the run's slots, "
              f"{trimmed:8.1f} trimmed: {trimmed / padded:.2f}x")
    crops, step = r["crops_one_process"], r["step_1_thread"]
    print(f"(g) --mosaic {config.mosaic} against 1: crops {crops:.1f} vs {r['crops_one_image']:.1f} images/s "
          f"({crops / r['crops_one_image']:.2f}x), step alone on 1 thread {step:.1f} vs {r['step_one_image']:.1f} "
          f"({step / r['step_one_image']:.2f}x)")
    print(f"(h) model input layout, step alone on 1 thread: channels_last {r['step_channels_last']:.1f}, NCHW-contiguous "
          f"{r['step_contiguous']:.1f} images/s ({r['step_channels_last'] / r['step_contiguous']:.2f}x)")
    if not gpu:
        print(f"(i) step alone on 1 thread: bf16 autocast {r['step_bf16']:.1f}, float32 {r['step_float32']:.1f} images/s "
              f"({r['step_bf16'] / r['step_float32']:.2f}x); this CPU has native bf16: {cpu_runs_bf16()}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
