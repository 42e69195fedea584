"""`spix preprocess`: statistics against brute force, the shard format, resume, untidy and broken inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import SPIX, brute_force_stats, png, run_spix, write_untidy_dataset
from spix.pipeline.dataset import ImageRecord
from spix.pipeline.preprocess import preprocess_params, preprocess_image
from spix.pipeline.shards import SHARD_SCHEMA, iter_samples, read_manifest, row_to_sample
from spix.pipeline.superpixels import majority_labels, relabel_contiguous, superpixel_stats


def test_statistics_match_brute_force(toy_shards: Path) -> None:
    samples = list(iter_samples(str(toy_shards), "validation"))
    assert len(samples) == 6
    for sample in samples:
        count = len(sample.sp_area)
        assert sorted(np.unique(sample.superpixels)) == list(range(count)), "ids must be contiguous 0..S-1"
        assert sample.superpixels.shape == sample.labels.shape == sample.rgb.shape[:2]
        assert 0.5 * 150 <= count <= 1.2 * 150, f"{count} superpixels for 150 asked"
        expected = brute_force_stats(sample.superpixels, sample.labels, sample.rgb)
        np.testing.assert_array_equal(sample.sp_area, expected["area"])
        np.testing.assert_array_equal(sample.sp_label, expected["label"])
        np.testing.assert_allclose(sample.sp_purity, expected["purity"], rtol=1e-6)
        np.testing.assert_allclose(sample.sp_centroid, expected["centroid"], rtol=1e-5)
        np.testing.assert_allclose(sample.sp_mean_rgb, expected["mean_rgb"], rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 5), (64, 48), (3, 4000)])
def test_run_based_statistics_match_brute_force_on_awkward_maps(shape: tuple[int, int]) -> None:
    """Noise maps (runs of one pixel), one-row and one-column images, labels changing inside superpixels,
    superpixels in several separate pieces, wide rows of bright pixels: the run-by-run sums still equal
    a loop over superpixels."""
    rng = np.random.default_rng(shape[0] * 10_000 + shape[1])
    superpixels = relabel_contiguous(rng.integers(0, 6, shape))
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    rgb = rng.integers(200, 256, shape + (3,), dtype=np.uint8)
    stats = superpixel_stats(superpixels, labels, rgb, 4)
    expected = brute_force_stats(superpixels, labels, rgb)
    np.testing.assert_array_equal(stats.area, expected["area"])
    np.testing.assert_array_equal(stats.label, expected["label"])
    np.testing.assert_allclose(stats.purity, expected["purity"], rtol=1e-6)
    np.testing.assert_allclose(stats.centroid, np.array(expected["centroid"]).reshape(-1, 2), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_rgb, np.array(expected["mean_rgb"]).reshape(-1, 3), rtol=1e-5)
    # majority_labels (what training crops use) shares the run-based counting with superpixel_stats, so
    # it is checked against the loop too, not against superpixel_stats.
    label, purity, area = majority_labels(superpixels, labels, 4)
    np.testing.assert_array_equal(label, expected["label"])
    np.testing.assert_allclose(purity, expected["purity"], rtol=1e-6)
    np.testing.assert_array_equal(area, expected["area"])


def test_statistics_of_a_hand_made_map() -> None:
    """Values worked out by hand: 2/3 majorities, a 1:1 tie (the smaller label wins), and labels that
    change inside a row run of one superpixel."""
    superpixels = np.array([[0, 0, 1, 2],
                            [0, 1, 1, 2]], dtype=np.uint16)
    labels = np.array([[2, 1, 1, 3],
                       [1, 2, 2, 1]], dtype=np.uint8)
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[..., 0] = [[10, 20, 30, 40], [50, 60, 70, 80]]
    # sp 0: pixels (0,0) (0,1) (1,0), labels 2 1 1 -> label 1, purity 2/3, centroid (1/3, 1/3), red 80/3
    # sp 1: pixels (0,2) (1,1) (1,2), labels 1 2 2 -> label 2, purity 2/3, centroid (2/3, 5/3), red 160/3
    # sp 2: pixels (0,3) (1,3), labels 3 1 (a tie)  -> label 1, purity 1/2, centroid (1/2, 3), red 60
    stats = superpixel_stats(superpixels, labels, rgb, 4)
    np.testing.assert_array_equal(stats.area, [3, 3, 2])
    np.testing.assert_array_equal(stats.label, [1, 2, 1])
    np.testing.assert_allclose(stats.purity, [2 / 3, 2 / 3, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(stats.centroid, [[1 / 3, 1 / 3], [2 / 3, 5 / 3], [1 / 2, 3]], rtol=1e-6)
    np.testing.assert_allclose(stats.mean_rgb[:, 0], [80 / 3, 160 / 3, 60], rtol=1e-6)
    np.testing.assert_array_equal(stats.mean_rgb[:, 1:], 0)
    label, purity, area = majority_labels(superpixels, labels, 4)
    np.testing.assert_array_equal(label, [1, 2, 1])
    np.testing.assert_allclose(purity, [2 / 3, 2 / 3, 1 / 2], rtol=1e-6)
    np.testing.assert_array_equal(area, [3, 3, 2])


def test_relabel_contiguous_keeps_order_with_and_without_gaps() -> None:
    with_gaps = np.array([[5, 5, 2], [9, 2, 5]], dtype=np.int16)
    np.testing.assert_array_equal(relabel_contiguous(with_gaps), [[1, 1, 0], [2, 0, 1]])
    contiguous = np.array([[1, 0], [2, 1]], dtype=np.int16)
    result = relabel_contiguous(contiguous)
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, contiguous)
    with pytest.raises(RuntimeError, match="unassigned"):
        relabel_contiguous(np.array([[0, -1]], dtype=np.int16))


def test_shards_are_plain_parquet_with_parameters(toy_shards: Path, toy_root: Path) -> None:
    manifest = read_manifest(str(toy_shards))
    assert manifest["splits"]["training"]["images"] == 12 and manifest["splits"]["validation"]["images"] == 6
    assert manifest["errors"] == []
    total = 0
    for name in manifest["splits"]["training"]["shards"] + manifest["splits"]["validation"]["shards"]:
        table = pq.read_table(toy_shards / name)  # plain pyarrow, no spix
        assert table.schema.remove_metadata() == SHARD_SCHEMA
        meta = json.loads(table.schema.metadata[b"spix"])
        assert meta["schema_version"] == 1 and meta["params"]["num_superpixels"] == 150
        assert meta["params"]["num_classes"] == 6
        frame = table.to_pandas()
        total += len(frame)
        row = frame.iloc[0].to_dict()
        original = (toy_root / row["source_path"]).read_bytes()
        assert row["image"] == original, "unresized images keep their original bytes"
        sample = row_to_sample(row)
        assert sample.superpixels.shape == (row["height"], row["width"])
        columns = pq.ParquetFile(toy_shards / name).metadata.row_group(0)
        codecs = {columns.column(i).path_in_schema: columns.column(i).compression for i in range(columns.num_columns)}
        assert codecs["superpixels"] == "ZSTD" and codecs["image"] == "UNCOMPRESSED", codecs
    assert total == 18
    timings = manifest["timings"]
    assert 0 < timings["parquet_write_s"] < timings["shard_tasks_s"] <= 2 * timings["process_s"]


def test_max_side_resizes_image_and_labels_nearest() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(1, 5, dtype=np.uint8), 50)[None, :].repeat(120, axis=0)
    record = ImageRecord("x", "training", "images/training/x.png", "annotations/training/x.png")
    row = preprocess_image(png(rgb), png(labels), record, preprocess_params(num_superpixels=50, max_side=64, num_classes=4))
    assert (row["height"], row["width"], row["orig_height"], row["orig_width"]) == (38, 64, 120, 200)
    sample = row_to_sample(row)
    assert set(np.unique(sample.labels)) <= {1, 2, 3, 4}, "nearest-neighbour labels invent no values"
    assert sample.rgb.shape == (38, 64, 3) and row["image_format"] == "jpeg"
    np.testing.assert_array_equal(np.sort(np.unique(sample.superpixels)), np.arange(row["num_superpixels"]))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 4), (16, 16), (7, 300), (300, 7)])
def test_tiny_images_get_fewer_superpixels_not_a_crash(shape: tuple[int, int]) -> None:
    # In a child process: a fast-slic SIGFPE would otherwise kill the test runner itself.
    code = (
        "import numpy as np; from spix.pipeline.superpixels import compute_superpixels; "
        f"m = compute_superpixels(np.random.default_rng(0).integers(0, 255, {shape + (3,)}, dtype=np.uint8), 500, 10); "
        "assert m.shape == " + repr(shape) + "; assert m.max() + 1 == len(np.unique(m)); print(m.max() + 1)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 1 <= int(result.stdout) <= max(1, shape[0] * shape[1] // 4)


@pytest.mark.slow
def test_untidy_and_broken_inputs(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    good, reasons = write_untidy_dataset(root)
    out = tmp_path / "shards"
    result = run_spix("preprocess", "--data-root", str(root), "--out", str(out), "--num-superpixels", "40",
                      "--images-per-shard", "4", "--num-cpus", "2")
    assert result.returncode == 0, result.stderr
    assert f"skipped: {len(reasons)}" in result.stdout
    manifest = read_manifest(str(out))
    skipped = {Path(e["path"]).name: e["reason"] for e in manifest["errors"]}
    assert set(skipped) == set(reasons)
    for name, word in reasons.items():
        assert word in skipped[name], (name, skipped[name])
    processed = {s.image_id for s in iter_samples(str(out), "training")}
    assert processed == {Path(n).stem for n in good}
    assert [Path(w["path"]).name for w in manifest["warnings"]] == ["overflow.jpg"]
    for sample in iter_samples(str(out), "training"):
        assert sample.rgb.dtype == np.uint8 and sample.rgb.shape[2] == 3
        assert sample.labels.max() <= 3, "label values above the class count become 0"
        if sample.image_id == "tiny":
            assert sample.rgb.shape == (3, 4, 3) and len(sample.sp_area) <= 3
    assert_manifest_counts_rows(manifest, out, inputs=len(good) + len(reasons))
    assert manifest["shards_reused"] == 0
    strict = run_spix("preprocess", "--data-root", str(root), "--out", str(out), "--num-superpixels", "40",
                      "--images-per-shard", "4", "--strict")
    assert strict.returncode == 1 and "--strict" in strict.stderr
    resumed = read_manifest(str(out))  # every shard reused: the counts now come from the shards' footers
    assert resumed["shards_reused"] == len(resumed["splits"]["training"]["shards"])
    assert_manifest_counts_rows(resumed, out, inputs=len(good) + len(reasons))


def assert_manifest_counts_rows(manifest: dict, out: Path, inputs: int) -> None:
    """The manifest's counts equal the rows in the shard files (read by plain pyarrow), and every input
    is either a row or an error."""
    rows = sum(pq.read_table(out / name).num_rows for name in manifest["splits"]["training"]["shards"])
    assert manifest["images"] == manifest["splits"]["training"]["images"] == rows
    assert manifest["splits"]["training"]["inputs"] == inputs
    assert len(manifest["errors"]) == inputs - rows


@pytest.mark.slow
def test_nothing_succeeded_exits_1_and_bad_root_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "ADE"
    for kind in ("images", "annotations"):
        for split in ("training", "validation"):
            (root / kind / split).mkdir(parents=True)
    (root / "images" / "training" / "a.jpg").write_bytes(b"")
    result = run_spix("preprocess", "--data-root", str(root), "--out", str(tmp_path / "s"), "--num-cpus", "1")
    assert result.returncode == 1 and "no image could be preprocessed" in result.stderr
    missing = run_spix("preprocess", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2"))
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "not an ADEChallengeData2016 folder" in missing.stderr


@pytest.mark.slow
def test_resume_after_kill_processes_every_image_once(toy_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    args = [*SPIX, "preprocess", "--data-root", str(toy_root), "--out", str(out), "--num-superpixels", "100",
            "--images-per-shard", "1", "--num-cpus", "1"]
    process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its Ray processes and workers
    process.wait()
    finished_before = len(list(out.glob("*.parquet")))
    assert 3 <= finished_before < 18, "the kill must land mid-run"
    assert not (out / "manifest.json").exists()
    result = run_spix(*args[3:])
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert manifest["shards_reused"] >= finished_before
    ids = [s.image_id for split in ("training", "validation") for s in iter_samples(str(out), split)]
    assert len(ids) == len(set(ids)) == 18
    assert not (out / "_partial").exists()


@pytest.mark.slow
def test_help_of_every_command() -> None:
    import typer.main

    from spix.cli.main import app

    top = subprocess.run([*SPIX, "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "preprocess" in top.stdout
    commands = sorted(typer.main.get_command(app).commands)
    assert {"preprocess", "make-toy-data"} <= set(commands)
    for command in commands:
        result = subprocess.run([*SPIX, command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "Usage" in result.stdout, command
