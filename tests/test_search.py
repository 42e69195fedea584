"""Region search (`spix search`, spix.inference.search) against a brute-force search over the Parquet files that
`spix infer` wrote for held-out images; --json; one-line errors; unreadable files skipped with a warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import run_spix
from spix.inference.search import SearchError, load_index, search
from spix.pipeline.shards import read_manifest
from spix.trainer.checkpoint import model_meta, write_final_model
from spix.trainer.config import train_config
from spix.trainer.loop import train_without_ray

POINTS = [("val/{0}", 0, 0), ("val/{0}", 57, 33), ("val/{1}", 90, 70), ("deep/er/{2}", 40, 95)]


@pytest.fixture(scope="module")
def inferred(toy_shards: Path, toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained here (no Ray) on the toy training split, and `spix infer --outputs embeddings` of the
    held-out validation images (in two subfolders, so names are paths) with it."""
    model, _ = train_without_ray(train_config(shards=str(toy_shards), out="", workers=1, epochs=4, batch_size=4, crop=64,
                                              preset="tiny", seed=0, gpu=False))
    manifest = read_manifest(str(toy_shards))
    base = tmp_path_factory.mktemp("search")
    run = base / "run"
    run.mkdir()
    write_final_model(run, model.state_dict(), model_meta("tiny", 128, manifest["params"], manifest["class_names"], {}))
    validation = sorted((toy_root / "images" / "validation").glob("*.jpg"))
    folder = base / "photos"
    for index, path in enumerate(validation):
        target = folder / ("deep/er" if index % 3 == 2 else "val") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    out = base / "out"
    result = run_spix("infer", str(folder), "--checkpoint", str(run), "--out", str(out), "--num-cpus", "2",
                      "--outputs", "embeddings")
    assert result.returncode == 0, result.stderr
    names = [p.name for p in validation]
    points = [(relpath.format(*names), y, x) for relpath, y, x in POINTS]
    return {"out": out, "points": points, "count": len(validation)}


def brute_force(out: Path, relpath: str, y: int, x: int) -> list[tuple[float, str, int, float, float]]:
    """(distance, relative path, superpixel, centroid y, centroid x) of every superpixel of the folder but the
    one at (y, x) of `relpath`, nearest first: plain pyarrow rows, a loop over superpixels, float64."""
    images = {}
    for path in (out / "embeddings").glob("*.parquet"):
        row = pq.read_table(path).to_pylist()[0]
        ids = np.frombuffer(row["superpixels"], "<u2").reshape(row["height"], row["width"])
        vectors = np.frombuffer(row["embeddings"], "<f2").reshape(row["num_superpixels"], row["dim"]).astype(np.float64)
        images[row["relative_path"]] = (ids, vectors)
    ids, vectors = images[relpath]
    query_id = int(ids[y, x])
    query = vectors[query_id]
    found = []
    for name, (ids, vectors) in images.items():
        for superpixel in range(len(vectors)):
            if name == relpath and superpixel == query_id:
                continue
            ys, xs = np.nonzero(ids == superpixel)
            found.append((float(np.sum((vectors[superpixel] - query) ** 2)), name, superpixel, ys.mean(), xs.mean()))
    return sorted(found)


@pytest.mark.slow
def test_search_finds_what_brute_force_finds(inferred: dict) -> None:
    """Every superpixel ranked (top = all): the same distances in the same order, each match's distance and
    centroid those of brute force; order may differ only where distances tie within float32 rounding."""
    for relpath, y, x in inferred["points"]:
        expected = brute_force(inferred["out"], relpath, y, x)
        query, matches = search(inferred["out"], relpath, y, x, top=10_000)
        assert query.relpath.tolist() == [relpath] and query.distance.tolist() == [0.0]
        assert len(matches.distance) == len(expected) > 100
        np.testing.assert_allclose(matches.distance, [e[0] for e in expected], rtol=1e-5, atol=1e-6)
        by_key = {(e[1], e[2]): e for e in expected}
        for relpath_found, superpixel, distance, centroid in zip(matches.relpath, matches.superpixel, matches.distance, matches.centroid):
            truth = by_key[(str(relpath_found), int(superpixel))]
            assert distance == pytest.approx(truth[0], rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(centroid, truth[3:], atol=1e-3)
        top = search(inferred["out"], relpath, y, x, top=5)[1]
        np.testing.assert_array_equal(top.row, matches.row[:5])


@pytest.mark.slow
def test_the_index_holds_every_superpixel_in_path_order(inferred: dict) -> None:
    index = load_index(inferred["out"])
    assert index.relpaths.tolist() == sorted(index.relpaths.tolist()) and len(index.relpaths) == inferred["count"]
    assert len(index.image) == len(index.superpixel) == len(index.centroid) == len(index.embeddings)
    assert index.embeddings.dtype == np.float16 and not index.skipped
    starts = np.flatnonzero(np.diff(index.image, prepend=-1))
    assert (index.superpixel[starts] == 0).all() and (np.diff(index.image) >= 0).all()


@pytest.mark.slow
def test_json_lines_are_the_functions_matches(inferred: dict) -> None:
    relpath, y, x = inferred["points"][1]
    result = run_spix("search", str(inferred["out"]), "--image", relpath, "--point", f"{y},{x}", "--top", "7", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    _, matches = search(inferred["out"], relpath, y, x, top=7)
    assert [sorted(line) for line in lines] == [["distance", "relative_path", "superpixel", "x", "y"]] * 7
    assert [(m["relative_path"], m["superpixel"]) for m in lines] == list(zip(matches.relpath.tolist(), matches.superpixel.tolist()))
    np.testing.assert_allclose([m["distance"] for m in lines], matches.distance, rtol=1e-6)
    np.testing.assert_allclose([[m["y"], m["x"]] for m in lines], matches.centroid, rtol=1e-6)
    table = run_spix("search", str(inferred["out"]), "--image", relpath, "--point", f"{y},{x}")
    assert table.returncode == 0 and table.stdout.startswith(f"query: {relpath}, superpixel ")
    assert len(table.stdout.splitlines()) == 2 + 10, "the default --top of configs/default.toml"


@pytest.mark.slow
def test_bad_arguments_and_folders_are_one_clear_line(inferred: dict, tmp_path: Path) -> None:
    out = str(inferred["out"])
    relpath = inferred["points"][0][0]
    (tmp_path / "empty" / "embeddings").mkdir(parents=True)
    cases = [
        (("--image", "val/nope.jpg", "--point", "1,1"), "no image 'val/nope.jpg'"),
        (("--image", relpath, "--point", "1,100000"), "is outside"),
        (("--image", relpath, "--point", "1;2"), "--point takes Y,X"),
        (("--image", relpath, "--point", "-1,2"), "--point takes Y,X"),
        (("--image", relpath, "--point", "1,2", "--top", "0"), "--top must be >= 1"),
    ]
    for args, words in cases:
        result = run_spix("search", out, *args)
        assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    for folder, words in [(tmp_path, "has no embeddings/ folder"), (tmp_path / "empty", "no readable embeddings")]:
        result = run_spix("search", str(folder), "--image", relpath, "--point", "1,1")
        assert result.returncode == 1 and words in result.stderr, result.stderr
    with pytest.raises(SearchError, match="outside"):
        search(inferred["out"], relpath, -1, 0, 3)


@pytest.mark.slow
def test_an_unreadable_parquet_file_is_skipped_with_a_warning(inferred: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(inferred["out"] / "embeddings", out / "embeddings")
    first = sorted((out / "embeddings").glob("*.parquet"))[0]
    (out / "embeddings" / "garbage.parquet").write_bytes(b"not parquet at all")
    (out / "embeddings" / "truncated.parquet").write_bytes(first.read_bytes()[:100])
    relpath, y, x = inferred["points"][2]
    result = run_spix("search", str(out), "--image", relpath, "--point", f"{y},{x}", "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped ") for w in warnings), warnings
    with pytest.warns(UserWarning, match="skipped") as caught:
        index = load_index(out)
    assert len(index.skipped) == len(caught) == 2 and "garbage.parquet" in index.skipped[0]
