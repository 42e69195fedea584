"""Shards of several Parquet row groups read back completely, every row exactly once and in order, by
every reader: spix's `iter_rows` / `iter_samples`, plain pyarrow, and Ray Data.

`spix preprocess` writes row groups of 32 rows, and a real shard holds 256 images, so a reader that
stops after the first row group loses most of the data; the toy shards of the other tests are smaller
than one row group and cannot notice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import brute_force_stats, png, run_preprocess_serially, tiny_image, write_tiny_dataset
from spix.pipeline.dataset import ImageRecord
from spix.pipeline.preprocess import preprocess_params, preprocess_image
from spix.pipeline.shards import MANIFEST, SCHEMA_VERSION, ShardWriter, iter_rows, iter_samples, shard_paths

PARAMS = preprocess_params(num_superpixels=12, num_classes=3)
ROWS_PER_GROUP = 4
# Shard sizes chosen so that the row groups come out 4+4+3 and 4+1 (a last group shorter than the others)
# and the validation split is a single partial group.
SHARDS = {"training": [11, 5], "validation": [3]}


def image_names(split: str) -> list[str]:
    return [f"{split[0]}{i:02d}" for i in range(sum(SHARDS[split]))]


def make_row(split: str, name: str) -> dict[str, Any]:
    rgb, labels = tiny_image(name)
    record = ImageRecord(name, split, f"images/{split}/{name}.png", f"annotations/{split}/{name}.png")
    return preprocess_image(png(rgb), png(labels), record, PARAMS)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """A shard folder written by ShardWriter with row groups of 4, and the rows that went into it per split."""
    out = tmp_path_factory.mktemp("readers") / "shards"
    rows = {split: [make_row(split, name) for name in image_names(split)] for split in SHARDS}
    manifest_splits = {}
    for split, sizes in SHARDS.items():
        names, start = [], 0
        for index, size in enumerate(sizes):
            name = f"{split}-{index:05d}.parquet"
            writer = ShardWriter(str(out), name, PARAMS.as_dict(), rows_per_group=ROWS_PER_GROUP)
            for row in rows[split][start : start + size]:
                writer.add(row)
            writer.commit({"split": split})
            names.append(name)
            start += size
        manifest_splits[split] = {"images": start, "shards": names}
    manifest = {"schema_version": SCHEMA_VERSION, "params": PARAMS.as_dict(), "splits": manifest_splits}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out, rows


def test_the_shards_really_have_several_row_groups(written) -> None:
    out, _ = written
    group_sizes = {
        path.name: [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(path).num_row_groups)]
        for path in sorted(out.glob("*.parquet"))
    }
    assert group_sizes == {
        "training-00000.parquet": [4, 4, 3],
        "training-00001.parquet": [4, 1],
        "validation-00000.parquet": [3],
    }


def assert_same_row(read: dict[str, Any], expected: dict[str, Any], columns: list[str]) -> None:
    """Field by field, whatever container the reader uses for lists (Python lists or numpy arrays)."""
    for column in columns:
        if isinstance(expected[column], (bytes, str, int)):
            assert read[column] == expected[column], column
        else:
            np.testing.assert_array_equal(np.asarray(read[column]).reshape(np.shape(expected[column])), expected[column], err_msg=column)


ROW_COLUMNS = ["image_id", "split", "height", "width", "image", "labels", "superpixels", "num_superpixels",
               "sp_area", "sp_label", "sp_purity", "sp_centroid", "sp_mean_rgb"]


@pytest.mark.parametrize("split", list(SHARDS))
def test_iter_rows_yields_every_row_once_in_order(written, split: str) -> None:
    out, rows = written
    read = list(iter_rows(str(out), split))
    assert [row["image_id"] for row in read] == image_names(split)
    for got, expected in zip(read, rows[split]):
        assert_same_row(got, expected, ROW_COLUMNS)


def test_iter_samples_decodes_every_row_to_the_original_arrays(written) -> None:
    out, _ = written
    samples = list(iter_samples(str(out), "training"))
    assert [s.image_id for s in samples] == image_names("training")
    for sample in samples:
        rgb, labels = tiny_image(sample.image_id)
        np.testing.assert_array_equal(sample.rgb, rgb)  # PNG: the original pixels
        np.testing.assert_array_equal(sample.labels, labels)
        expected = brute_force_stats(sample.superpixels, labels, rgb)
        np.testing.assert_array_equal(sample.sp_area, expected["area"])
        np.testing.assert_array_equal(sample.sp_label, expected["label"])
        np.testing.assert_allclose(sample.sp_purity, expected["purity"], rtol=1e-6)
        np.testing.assert_allclose(sample.sp_centroid, np.reshape(expected["centroid"], (-1, 2)), rtol=1e-5)


def test_plain_pyarrow_reads_every_row_once_in_order(written) -> None:
    out, rows = written
    for split in SHARDS:
        paths = shard_paths(str(out), split)
        table = pq.read_table(paths[0]) if len(paths) == 1 else pq.ParquetDataset(paths).read()
        assert table.column("image_id").to_pylist() == image_names(split)
        for got, expected in zip(table.to_pylist(), rows[split]):
            assert_same_row(got, expected, ROW_COLUMNS)
        per_file = [row for path in paths for row in pq.read_table(path).column("image_id").to_pylist()]
        assert per_file == image_names(split)


@pytest.mark.slow
def test_ray_data_reads_every_row_once(written) -> None:
    """ray.data.read_parquet over the manifest's shard paths (how Ray jobs read the shards): all rows,
    none twice, and in file order when Ray is asked to keep the order; rows turn into the same samples."""
    import ray
    import ray.data

    from spix.pipeline.cluster import init_ray
    from spix.pipeline.shards import row_to_sample

    out, rows = written
    was_running = ray.is_initialized()
    init_ray("", num_cpus=1)
    context = ray.data.DataContext.get_current()
    keep_order = context.execution_options.preserve_order
    try:
        context.execution_options.preserve_order = True
        for split in SHARDS:
            read = ray.data.read_parquet(shard_paths(str(out), split)).take_all()
            assert [row["image_id"] for row in read] == image_names(split)
            for got, expected in zip(read, rows[split]):
                assert_same_row(got, expected, ROW_COLUMNS)
                np.testing.assert_array_equal(row_to_sample(got).sp_centroid, expected["sp_centroid"])
        # A column subset (what a training job reads) and Ray's unordered streaming still see every row once.
        context.execution_options.preserve_order = False
        subset = ray.data.read_parquet(shard_paths(str(out), "training")).select_columns(["image_id", "superpixels"])
        assert sorted(row["image_id"] for row in subset.iter_rows()) == image_names("training")
    finally:
        context.execution_options.preserve_order = keep_order
        if not was_running:
            ray.shutdown()


def test_preprocess_writes_groups_of_32_rows_and_iter_samples_reads_all_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 70-image shard written by the preprocessing code itself: three row groups (32, 32, 6), all read."""
    names = [f"x{i:02d}" for i in range(70)]
    root = tmp_path / "ADE"
    write_tiny_dataset(root, {"training": names, "validation": []})
    out = tmp_path / "shards"
    manifest = run_preprocess_serially(monkeypatch, root, out, params=preprocess_params(num_superpixels=12),
                                       images_per_shard=70)
    assert manifest["splits"]["training"]["shards"] == ["training-00000.parquet"]
    metadata = pq.ParquetFile(out / "training-00000.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [32, 32, 6]
    samples = list(iter_samples(str(out), "training"))
    assert [s.image_id for s in samples] == names
    for sample in samples:
        rgb, labels = tiny_image(sample.image_id)
        np.testing.assert_array_equal(sample.rgb, rgb)
        np.testing.assert_array_equal(sample.labels, labels)
        np.testing.assert_array_equal(sample.sp_label, brute_force_stats(sample.superpixels, labels, rgb)["label"])


def test_a_relative_path_and_a_file_uri_read_the_same_rows(
    written, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--shards shards` (relative to the working directory) and `file:///abs/shards` name the same folder."""
    out, rows = written
    expected = [row["image_id"] for row in rows["training"]]
    monkeypatch.chdir(out.parent)
    assert [row["image_id"] for row in iter_rows(out.name, "training", ["image_id"])] == expected
    assert [row["image_id"] for row in iter_rows(f"file://{out}", "training", ["image_id"])] == expected


def test_a_shard_rewritten_without_its_run_record_is_refused_as_incomplete(written, tmp_path: Path) -> None:
    """A shard copied by plain pyarrow keeps the schema's parameters but not spix's footer record: not a
    complete shard (a clear ShardFormatError, not a KeyError deep in the resume logic)."""
    import pyarrow.fs as pafs

    from spix.pipeline.shards import ShardFormatError, read_shard_metadata

    out, _ = written
    copy = tmp_path / "copy.parquet"
    pq.write_table(pq.read_table(out / "training-00000.parquet"), copy)
    assert b"spix" in pq.ParquetFile(copy).schema_arrow.metadata  # the parameters survived the copy
    with pytest.raises(ShardFormatError, match="not a complete spix shard"):
        read_shard_metadata(pafs.LocalFileSystem(), str(copy))
    assert read_shard_metadata(pafs.LocalFileSystem(), str(out / "training-00000.parquet"))["num_rows"] == 11
