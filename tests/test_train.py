"""`spix train`: 2-worker DDP on Ray Train, its outputs, learning, resume, a killed worker, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from itertools import islice
from pathlib import Path

import pytest
import torch

from helpers import CALIBRATED, SPIX, cli, run_spix
from spix.pipeline.shards import iter_samples
from spix.trainer.checkpoint import load_model
from spix.trainer.config import train_config
from spix.trainer.distributed import TrainingInputError, check_cluster_fits
from spix.trainer.loop import estimate_batch_norm_statistics, train_without_ray, validate
from spix.trainer.metrics import pair_scores_auc
from spix.trainer.model import build_model

TINY = ["--preset", "tiny", "--crop", "64", "--batch-size", "4", "--lr", "0.001", "--workers", "2", "--config", str(CALIBRATED)]


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 training / 16 validation toy images (96-128 px, 6 classes) with 100 superpixels each."""
    from spix.pipeline.toydata import make_toy_dataset

    base = tmp_path_factory.mktemp("train")
    make_toy_dataset(base / "ADE", n_train=48, n_val=16, n_classes=6, seed=5, min_side=96, max_side=128)
    result = run_spix("preprocess", "--data-root", str(base / "ADE"), "--out", str(base / "shards"),
                      "--num-superpixels", "100", "--images-per-shard", "16", "--num-cpus", "2")
    assert result.returncode == 0, result.stderr
    return base / "shards"


@pytest.fixture(scope="session")
def trained_run(train_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 epochs x 6 steps of 2 workers x 4 crops: one to two minutes on 2 cores."""
    run = tmp_path_factory.mktemp("runs") / "run"
    result = run_spix("train", "--shards", str(train_shards), "--out", str(run), "--epochs", "10", *TINY, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val pair AUC" in result.stdout
    return run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def validation_auc(model: torch.nn.Module, shards: Path) -> float:
    part = validate(model, iter_samples(str(shards), "validation"), torch.device("cpu"), min_purity=0.5, seed=0, amp=False)
    return pair_scores_auc(part.scores, part.positives)


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_a_ray_free_model(trained_run: Path) -> None:
    metrics = read_jsonl(trained_run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == list(range(1, 11)), "epochs count from 1, as on the terminal"
    assert [m["step"] for m in metrics] == [6 * e for e in range(1, 11)], "48 images / 2 workers / batch 4"
    for m in metrics:
        assert {"train_loss", "pos_dist", "neg_dist", "images_per_s", "val_loss", "val_pair_auc", "lr"} <= m.keys()
        assert m["workers"] == 2 and m["val_images"] == 16
        assert 0.0 <= m["data_wait"] < 1.0 and m["images_per_s"] > 0
        assert m["ranks_in_sync"], "DDP must leave bit-identical parameters on both ranks"
        assert m["stopped_by_time"] is False
    state = torch.load(trained_run / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["preset"] == "tiny" and meta["preprocess"]["num_superpixels"] == 100 and meta["dim"] == 128
    assert meta["class_names"][0] and len(meta["class_names"]) == 6
    model, _ = load_model(trained_run)
    assert model(torch.zeros(1, 3, 17, 23)).shape == (1, 128, 17, 23)
    assert list((trained_run / "ray").glob("checkpoint_*")), "Ray Train checkpoints are kept"


@pytest.mark.slow
def test_training_raises_the_validation_pair_auc(trained_run: Path, train_shards: Path) -> None:
    torch.manual_seed(0)  # the run's seed: the very weights training started from
    untrained = validation_auc(build_model("tiny").eval(), train_shards)
    trained = validation_auc(load_model(trained_run)[0], train_shards)
    # Ray Data hands rows to the two workers in a timing-dependent order, so runs differ. Measured
    # with these settings in the plain loop: untrained 0.728 -> 0.815 (seed 0); other seeds gained
    # 0.019 and 0.060. The margin of 0.03 is a third of the gain seen with this seed.
    assert trained >= untrained + 0.03, (untrained, trained)
    assert read_jsonl(trained_run / "metrics.jsonl")[-1]["val_pair_auc"] == pytest.approx(trained, abs=0.02)


@pytest.mark.slow
def test_the_final_bn_statistics_are_those_of_whole_training_images_from_both_workers(trained_run: Path, train_shards: Path) -> None:
    """Each of the 2 workers estimates them on its half of the first 32 (bn_images) training images, then
    they are averaged: the same as one pass over all 32 with the saved weights, in float32 on a CPU (the
    precision of spix eval and infer there) even where training ran bf16. Only the last epoch does it."""
    model, _ = load_model(trained_run)
    saved = {k: v.clone() for k, v in model.state_dict().items() if ".running_" in k}
    images = (sample.rgb for sample in islice(iter_samples(str(train_shards), "training"), 32))
    assert estimate_batch_norm_statistics(model, images, torch.device("cpu")) == 32
    for key, value in saved.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert [m["bn_images"] for m in read_jsonl(trained_run / "metrics.jsonl")] == [0] * 9 + [32]


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch_and_step(trained_run: Path, train_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    again = cli("train", "--shards", str(train_shards), "--out", str(run), "--epochs", "11", *TINY)
    assert again.exit_code == 1 and "--resume" in again.stderr
    resumed = run_spix("train", "--shards", str(train_shards), "--out", str(run), "--epochs", "11", "--resume", *TINY, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [(m["epoch"], m["step"]) for m in metrics] == [(e, 6 * e) for e in range(1, 12)]
    assert metrics[:10] == read_jsonl(trained_run / "metrics.jsonl"), "the finished epochs are kept as they were"
    events = read_jsonl(run / "events.jsonl")
    assert events[-1] == {**events[-1], "event": "restored", "epoch": 10, "step": 60}


TIMING = {"images_per_s", "data_wait", "seconds"}


def same_run(first: Path, second: Path) -> None:
    """Two runs' metrics agree but for timings, and their final weights bit for bit."""
    strip = lambda path: [{k: v for k, v in m.items() if k not in TIMING} for m in read_jsonl(path / "metrics.jsonl")]
    assert strip(first) == strip(second)
    weights = torch.load(first / "model.pt", weights_only=True), torch.load(second / "model.pt", weights_only=True)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_killed_worker_is_restored_and_the_run_ends_as_if_nothing_happened(
    train_shards: Path, trained_run: Path, tmp_path: Path
) -> None:
    """Restored from the last checkpoint, the run ends exactly like an uninterrupted run with the same seed:
    the crops and their order depend on (seed, epoch, image) only, never on timing or on which process made them.
    The uninterrupted twin is the shared 10-epoch run."""
    run = tmp_path / "run"
    args = [*SPIX, "train", "--shards", str(train_shards), "--out", str(run), "--epochs", "10", *TINY]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Epoch 1's metrics line means epoch 0's checkpoint is registered with Ray Train's controller
        # (the checkpoint folder alone appears before the controller has taken note of it).
        while len(read_lines(run / "metrics.jsonl")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True).stdout.split()
        assert workers, "no Ray Train worker found to kill"
        os.kill(int(workers[-1]), signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(1, 11))
    assert any(e["event"] == "restored" for e in read_jsonl(run / "events.jsonl"))
    same_run(run, trained_run)


@pytest.mark.slow
def test_one_ray_worker_trains_exactly_like_the_single_process_loop_and_stops_on_time(train_shards: Path, tmp_path: Path) -> None:
    """`spix train --workers 1` and `train_without_ray` share the plan, the crops, the step, the epoch loop and
    the --max-minutes stop: both end cleanly after the first epoch past the limit, with the same weights."""
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--crop", "64", "--batch-size", "4", "--lr", "0.001", "--workers", "1", "--epochs", "3"]
    result = run_spix("train", "--shards", str(train_shards), "--out", str(run), *args, "--max-minutes", "0.001", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [(m["epoch"], m["step"], m["stopped_by_time"]) for m in metrics] == [(1, 12, True)]
    assert (run / "model.pt").exists() and "stopped after epoch 1" in result.stdout
    torch.set_num_threads(1)  # a Ray Train worker holding one CPU runs torch on one thread
    config = train_config(shards=str(train_shards), out="", workers=1, epochs=3, max_minutes=0.001, batch_size=4, crop=64,
                          lr=1e-3, preset="tiny", gpu=False)
    model, counters = train_without_ray(config)
    assert (counters["epochs"], counters["steps"]) == (1, 12)
    trained = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # its shards fixture runs `spix preprocess`
def test_bad_input_gets_one_clear_line(train_shards: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((train_shards / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    cases = {
        "missing": (["--shards", str(tmp_path / "nothing")], "no manifest.json"),
        "empty": (["--shards", str(empty)], "no manifest.json"),
        "schema": (["--shards", str(other)], "schema version 99"),
        "batch": (["--shards", str(train_shards), "--batch-size", "25", "--workers", "2"], "larger than the data"),
        "resume": (["--shards", str(train_shards), "--out", str(tmp_path / "new"), "--resume"], "holds no run"),
        "mosaic": (["--shards", str(train_shards), "--mosaic", "0"], "--mosaic must be >= 1"),
        "strips": (["--shards", str(train_shards), "--crop", "8", "--mosaic", "9"], "more strips than the 8-pixel crop"),
        "auto crop": (["--shards", str(train_shards), "--no-gpu", "--mosaic", "129"], "more strips than the 128-pixel crop"),
    }
    for name, (args, message) in cases.items():
        result = cli("train", *args, "--preset", "tiny")
        assert result.exit_code == 1, (name, result.stderr)
        assert message in result.stderr and result.stderr.strip().count("\n") == 0, (name, result.stderr)
    # After Ray's start, in a fresh process: workers that Ray Train could never place (it would wait without end).
    no_gpu = run_spix("train", "--shards", str(train_shards), "--out", str(tmp_path / "gpu"), "--gpu", "--workers", "1",
                      "--preset", "tiny", timeout=120)
    assert no_gpu.returncode == 1 and "--gpu: Ray sees no GPU" in no_gpu.stderr, no_gpu.stderr


def test_training_workers_must_fit_the_cluster_or_ray_train_would_wait_forever() -> None:
    config = train_config(shards="s", out="o", workers=2, gpu=True)
    with pytest.raises(TrainingInputError, match="needs 2 GPUs .* Ray sees 1: pass --workers 1"):
        check_cluster_fits(config, {"CPU": 16.0, "GPU": 1.0})
    check_cluster_fits(config, {"CPU": 16.0, "GPU": 2.0})
    on_cpus = train_config(shards="s", out="o", workers=2, gpu=False)
    with pytest.raises(TrainingInputError, match="needs 3 CPUs .* Ray sees 2"):
        check_cluster_fits(on_cpus, {"CPU": 2.0})
    check_cluster_fits(on_cpus, {"CPU": 3.0})
