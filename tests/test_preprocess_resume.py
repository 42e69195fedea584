"""Resume and bookkeeping of `spix preprocess`: which shards a re-run reuses or rebuilds, how it treats
changed parameters and --overwrite, and whether the manifest's counts are the rows really written.

The bookkeeping (planning, reuse, manifest) is plain code around the Ray tasks, so most tests run it
in this process with the shard tasks done one after the other (helpers.run_preprocess_serially); the
command line is run where its own behaviour is under test (the refusal, the --overwrite flag).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from helpers import (
    remove_tiny_image,
    run_preprocess_serially,
    run_spix,
    write_tiny_dataset,
    write_tiny_image,
    write_untidy_dataset,
)
from spix.pipeline.preprocess import preprocess_params

TRAINING = [f"t{i:02d}" for i in range(10)]  # shards of 4: t00-t03 | t04-t07 | t08-t09
VALIDATION = ["v0", "v1", "v2"]
PARAMS = preprocess_params(num_superpixels=12)
CLI_ARGS = ("--num-superpixels", "12", "--images-per-shard", "4")  # the same parameters, as flags


def shard_files(out: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every shard file in the folder (what a rebuild would change)."""
    return {
        path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(out.glob("*.parquet"))
    }


def shard_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of one shard file, read by plain pyarrow."""
    return pq.read_table(path).to_pylist()


def footer(path: Path) -> dict[str, Any]:
    """The spix metadata of a shard file, read by plain pyarrow: parameters and the run's record."""
    parquet = pq.ParquetFile(path)
    return {**json.loads(parquet.schema_arrow.metadata[b"spix"]), **json.loads(parquet.metadata.metadata[b"spix.shard"])}


def ids_per_shard(out: Path) -> dict[str, list[str]]:
    return {path.name: [row["image_id"] for row in shard_rows(path)] for path in sorted(out.glob("*.parquet"))}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ADE"
    write_tiny_dataset(root, {"training": TRAINING, "validation": VALIDATION})
    return root


def test_changed_input_list_rebuilds_the_affected_shards_and_reuses_the_others(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "shards"
    first = run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS)
    assert first["shards_reused"] == 0
    before = shard_files(out)
    assert ids_per_shard(out) == {
        "training-00000.parquet": TRAINING[0:4],
        "training-00001.parquet": TRAINING[4:8],
        "training-00002.parquet": TRAINING[8:10],
        "validation-00000.parquet": VALIDATION,
    }

    # Training loses t05 and t09 (2 shards instead of 3: t00-t03 unchanged, t04 t06 t07 t08);
    # validation swaps v1 for v1b (same number of images, another list).
    remove_tiny_image(dataset, "training", "t05")
    remove_tiny_image(dataset, "training", "t09")
    remove_tiny_image(dataset, "validation", "v1")
    write_tiny_image(dataset, "validation", "v1b")
    second = run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS)

    after = shard_files(out)
    assert second["shards_reused"] == 1
    assert after["training-00000.parquet"] == before["training-00000.parquet"], "an unchanged shard is reused as it is"
    assert after["training-00001.parquet"] != before["training-00001.parquet"]
    assert after["validation-00000.parquet"] != before["validation-00000.parquet"]
    # Every shard file in the folder is a current one: a shard left over from the longer input list
    # would hand t08 twice and the removed t09 to anything that reads the folder's *.parquet files.
    assert ids_per_shard(out) == {
        "training-00000.parquet": ["t00", "t01", "t02", "t03"],
        "training-00001.parquet": ["t04", "t06", "t07", "t08"],
        "validation-00000.parquet": ["v0", "v1b", "v2"],
    }
    assert second["splits"]["training"]["shards"] == ["training-00000.parquet", "training-00001.parquet"]
    assert (second["splits"]["training"]["images"], second["splits"]["validation"]["images"], second["images"]) == (8, 3, 11)

    # The resumed folder holds exactly what a fresh run over the changed inputs writes, row for row.
    fresh_out = tmp_path / "fresh"
    fresh = run_preprocess_serially(monkeypatch, dataset, fresh_out, params=PARAMS)
    for name in after:
        assert shard_rows(out / name) == shard_rows(fresh_out / name), name
        assert footer(out / name)["inputs_digest"] == footer(fresh_out / name)["inputs_digest"]
    assert {key: second[key] for key in ("splits", "images", "errors")} == {key: fresh[key] for key in ("splits", "images", "errors")}


def test_overwrite_rebuilds_every_shard_even_with_the_same_parameters(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "shards"
    run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS)
    before = shard_files(out)
    again = run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS)
    assert again["shards_reused"] == 4 and shard_files(out) == before, "without --overwrite finished shards are kept"
    rebuilt = run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS, overwrite=True)
    assert rebuilt["shards_reused"] == 0
    after = shard_files(out)
    assert after.keys() == before.keys()
    assert all(after[name][1] != before[name][1] for name in before), "every shard file is written again"


@pytest.fixture()
def cli_shards(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shards of `dataset` written with the parameters that CLI_ARGS names."""
    out = tmp_path / "shards"
    run_preprocess_serially(monkeypatch, dataset, out, params=PARAMS)
    return out


@pytest.mark.parametrize(
    "changed", [("--num-superpixels", "30"), ("--compactness", "20"), ("--max-side", "16")], ids=lambda c: c[0]
)
def test_changed_parameters_are_refused_in_one_line_and_nothing_is_touched(
    changed: tuple[str, str], dataset: Path, cli_shards: Path
) -> None:
    before = shard_files(cli_shards)
    manifest_before = (cli_shards / "manifest.json").read_bytes()
    result = run_spix("preprocess", "--data-root", str(dataset), "--out", str(cli_shards), *CLI_ARGS, *changed)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert "other parameters" in result.stderr and "--overwrite" in result.stderr
    assert shard_files(cli_shards) == before
    assert (cli_shards / "manifest.json").read_bytes() == manifest_before


def test_cli_with_the_same_parameters_reuses_every_shard(dataset: Path, cli_shards: Path) -> None:
    """The flags map onto the same parameters as PARAMS: the command finds every shard finished (and so
    does not even start Ray)."""
    before = shard_files(cli_shards)
    result = run_spix("preprocess", "--data-root", str(dataset), "--out", str(cli_shards), *CLI_ARGS)
    assert result.returncode == 0, result.stderr
    assert "shards reused: 4" in result.stdout
    assert shard_files(cli_shards) == before


@pytest.mark.slow
def test_cli_overwrite_rebuilds_with_the_new_parameters(
    dataset: Path, cli_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_rows = {name: shard_rows(cli_shards / name) for name in shard_files(cli_shards)}
    result = run_spix("preprocess", "--data-root", str(dataset), "--out", str(cli_shards), *CLI_ARGS,
                      "--num-superpixels", "40", "--overwrite", "--num-cpus", "1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((cli_shards / "manifest.json").read_text())
    assert manifest["shards_reused"] == 0 and manifest["params"]["num_superpixels"] == 40
    new_params = preprocess_params(num_superpixels=40)
    fresh_out = tmp_path / "fresh"
    run_preprocess_serially(monkeypatch, dataset, fresh_out, params=new_params)
    assert shard_files(cli_shards).keys() == old_rows.keys()
    for name, rows in old_rows.items():
        assert footer(cli_shards / name)["params"]["num_superpixels"] == 40
        new_rows = shard_rows(cli_shards / name)
        assert [r["image_id"] for r in new_rows] == [r["image_id"] for r in rows]
        # 40 superpixels asked instead of 12: every image is cut into more pieces
        assert all(new["num_superpixels"] > old["num_superpixels"] for new, old in zip(new_rows, rows)), name
        assert new_rows == shard_rows(fresh_out / name), "the rebuilt rows are those of a fresh run"


def test_manifest_counts_are_the_rows_written_with_untidy_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """images / inputs / errors of the manifest against the rows read back from the shard files, on a
    dataset with broken files, a missing annotation and a size mismatch; again after a resume, where the
    counts come from the shards' footers."""
    root = tmp_path / "ADE"
    good, reasons = write_untidy_dataset(root)
    out = tmp_path / "shards"
    inputs = sorted(p.name for p in (root / "images" / "training").iterdir())
    assert len(inputs) == len(good) + len(reasons) == 14
    for attempt in ("first run", "resumed run"):
        manifest = run_preprocess_serially(monkeypatch, root, out, params=preprocess_params(num_superpixels=40))
        rows = {"training": [row for name in manifest["splits"]["training"]["shards"] for row in shard_rows(out / name)]}
        written = {Path(row["source_path"]).name for row in rows["training"]}
        assert written == good, attempt
        assert manifest["splits"]["training"]["images"] == len(rows["training"]) == len(good), attempt
        assert manifest["splits"]["training"]["inputs"] == len(inputs), attempt
        assert manifest["images"] == len(rows["training"]), attempt
        assert sorted(Path(e["path"]).name for e in manifest["errors"]) == sorted(reasons), attempt
        assert sorted(set(inputs) - written) == sorted(reasons), "every input is either a row or an error"
        shards = sorted(out.glob("*.parquet"))
        assert sum(footer(path)["num_rows"] for path in shards) == len(rows["training"])
        assert sum(pq.ParquetFile(path).metadata.num_rows for path in shards) == len(rows["training"])
        sp_counts = [row["num_superpixels"] for row in rows["training"]]
        assert manifest["superpixels_per_image"] == {"mean": pytest.approx(sum(sp_counts) / len(sp_counts)),
                                                     "min": min(sp_counts), "max": max(sp_counts)}
    assert manifest["shards_reused"] == len(shards) == 4
