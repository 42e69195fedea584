"""`spix infer`: the inference step without Ray, then the command: outputs vs in-process recomputation, soft
layers vs ground truth, broken inputs, re-runs, the run-wide basis, --outputs, crashes, 2 nodes."""

from __future__ import annotations

import html.parser
import io
import json
import os
import shutil
import textwrap
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from helpers import cli, run_spix, train_run_with_probe
from spix.configs import defaults
from spix.inference.basis import FeatureBasis
from spix.inference.filters import GuidedFilter, smoothing_radius
from spix.inference.inputs import default_out, list_inputs
from spix.inference.job import actor_layout, model_threads
from spix.inference.outputs import output_files, output_names, read_embeddings, read_soft_layers
from spix.inference.run import InferSummary, record_pace
from spix.inference.pictures import feature_picture, soft_layers, soft_memberships, superpixel_areas
from spix.inference.settings import OUTPUT_KINDS, InferInputError, parse_outputs
from spix.inference.step import InferenceStep, step_config
from spix.pipeline.imageio import decode_rgb
from spix.pipeline.superpixels import compute_superpixels, paint_superpixels
from spix.trainer.checkpoint import load_model
from spix.trainer.embedding import EmbeddingMoments, embed_batch, embed_superpixels
from spix.trainer.model import build_model
from spix.trainer.probe import LinearProbe

# Mean ARI of the soft layers' argmax vs the toy ground truth (labelled pixels, 6 validation images, K = 5).
# Measured with tiny models trained 8 epochs (24 steps) on the 12 toy training images: 0.38 (seed 0),
# 0.41, 0.44, 0.25 (seeds 1-3); an untrained tiny model scores 0.24-0.35 (the toy regions differ in colour
# too), and the same layers with superpixel embeddings shuffled within the image score about 0. Chance is
# 0 by construction of the ARI. 0.15 sits well above chance and the shuffled control and well below every
# trained run measured.
ARI_THRESHOLD = 0.15
K = 5
MAX_SIDE = 256
ALL_KINDS = OUTPUT_KINDS + ("dense", "labels")
INFER = defaults("infer")


# ----------------------------------------------------------------------------- unit tests (no Ray)


def test_output_names_are_flat_unique_and_stable() -> None:
    relpaths = ["a/x.png", "b/x.png", "a__x.png", "deep/é dir/photo #1.jpg", "x" * 300 + ".jpg", "a/b/c.jpg", "a__b/c.jpg"]
    names = output_names(relpaths)
    assert len(set(names.values())) == len(relpaths)
    assert all("/" not in n and len(n.encode()) <= 200 for n in names.values())
    assert names["a__x.png"] == "a__x.png" and names["a/x.png"] != "a__x.png", "the top-level file keeps its name"
    assert names["deep/é dir/photo #1.jpg"] == "deep__é dir__photo #1.jpg"
    assert names == output_names(list(reversed(relpaths))), "names do not depend on the order of the listing"


def test_inputs_are_listed_recursively_without_the_output_folder(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("a.JPG", "sub/b.png", "sub/deeper/c.tiff", "notes.txt", "out/old.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_inputs(tmp_path, tmp_path / "out") == (["a.JPG", "sub/b.png", "sub/deeper/c.tiff"], 1)
    assert default_out(tmp_path / "sub") == tmp_path / "sub_spix"


def test_outputs_option_is_parsed_in_a_fixed_order() -> None:
    assert parse_outputs("soft, embeddings") == ("embeddings", "soft")
    for bad in ("", "embeddings,pictures", ","):
        with pytest.raises(InferInputError, match="--outputs"):
            parse_outputs(bad)


def test_actor_layout_leaves_cpus_for_the_other_stages() -> None:
    assert actor_layout(cpus=16, gpus=2, use_gpu=True) == (2, 1.0, 1.0)
    assert actor_layout(cpus=2, gpus=0, use_gpu=False) == (1, 1.0, 0.0)
    assert actor_layout(cpus=16, gpus=0, use_gpu=False) == (3, 4.0, 0.0)
    assert actor_layout(cpus=1, gpus=0, use_gpu=False) == (1, 0.5, 0.0)
    # CPU actors' torch threads share all cores, including those Ray keeps for the light stages.
    assert model_threads(cpus=2, actors=1, actor_cpus=1.0, use_gpu=False) == 2
    assert model_threads(cpus=16, actors=3, actor_cpus=4.0, use_gpu=False) == 5
    assert model_threads(cpus=16, actors=2, actor_cpus=1.0, use_gpu=True) == 1


def some_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four images of three sizes (two share a size, two a height) with their SLIC maps."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(40, 52, 3), (33, 20, 3), (40, 52, 3), (40, 30, 3)]]
    return images, [compute_superpixels(rgb, 30, 10.0) for rgb in images]


@pytest.mark.slow
def test_the_step_gives_each_image_what_it_gives_the_image_alone() -> None:
    """Images of two sizes in one call, stacked or not: each result equals the one-image call, and the
    embeddings equal the trainer's own single-image path."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images, maps = some_images()
    dim = 128
    rng = np.random.default_rng(2)
    basis = FeatureBasis(rng.normal(0, 0.02, dim).tolist(), np.linalg.qr(rng.normal(size=(dim, 3)))[0].T.tolist(),
                         [0.05, 0.03, 0.02], 1, "test")
    config = step_config(ALL_KINDS, soft_layers=3)
    probe = LinearProbe().fit(np.random.default_rng(1).normal(size=(40, dim)), np.arange(40) % 3 + 1)
    alone = InferenceStep(model, torch.device("cpu"), config, basis, probe)
    for max_stack in (None, 1):
        step = InferenceStep(model, torch.device("cpu"), config, basis, probe, max_stack=max_stack)
        for rgb, sp, result in zip(images, maps, step(images, maps)):
            single = alone([rgb], [sp])[0]
            np.testing.assert_allclose(result.embeddings, embed_superpixels(model, rgb, sp, "cpu"), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(result.embeddings, single.embeddings, rtol=1e-5, atol=1e-6)
            for name in ("features", "layers", "composite"):
                difference = np.abs(getattr(result, name).astype(int) - getattr(single, name).astype(int))
                assert difference.max() <= 1, name
            assert result.features.shape == rgb.shape and result.layers.shape == (3,) + rgb.shape[:2]
            features, _ = embed_batch(model, torch.from_numpy(rgb)[None], torch.from_numpy(sp.astype(np.int64))[None], int(sp.max()) + 1)
            mean, components, std = (t[None] for t in basis.tensors(torch.device("cpu")))
            smooth = GuidedFilter(torch.from_numpy(rgb)[None].permute(0, 3, 1, 2) / 255.0, smoothing_radius(*rgb.shape[:2]))
            direct = feature_picture(features, smooth, mean, components, std, INFER["feature_eps"])[0].numpy()
            assert np.abs(result.features.astype(int) - direct.astype(int)).max() <= 1
            assert (result.layers.astype(int).sum(0) == 255).all()
            np.testing.assert_array_equal(result.classes, probe.predict(result.embeddings))
            assert result.dense.dtype == np.float16 and result.dense.shape == rgb.shape[:2] + (dim,)


def test_the_step_needs_a_basis_for_run_wide_pictures_and_fits_its_own_per_image() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images, maps = some_images()
    with pytest.raises(ValueError, match="basis"):
        InferenceStep(model, torch.device("cpu"), step_config(("features",)))
    per_image = InferenceStep(model, torch.device("cpu"), step_config(("features",), pca="image"))
    assert all(r.features.std() > 0 for r in per_image(images, maps))


# ----------------------------------------------------------------------------- one real run, shared


@pytest.fixture(scope="module")
def trained_run(toy_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained here (8 epochs, no Ray; its model.json has no feature basis) and its linear probe
    in RUN/eval/classifier.npz."""
    return train_run_with_probe(toy_shards, tmp_path_factory.mktemp("runs") / "run", epochs=8)


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 60 x 40 (w x h) JPEG whose EXIF says 'rotate 90 clockwise to view': upright it is 40 x 60."""
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:30] = (220, 30, 30)  # red top half
    upright[30:] = (30, 30, 220)  # blue bottom half
    stored = np.rot90(upright, k=1)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue(), upright


def write_input_folder(folder: Path, toy_root: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Good inputs (relative path -> expected processed (H, W)) and broken ones (relative path -> reason word)."""
    rng = np.random.default_rng(1)
    good: dict[str, tuple[int, int]] = {}
    for path in sorted((toy_root / "images" / "validation").glob("*.jpg")):
        (folder / "val").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / "val" / path.name)
        good[f"val/{path.name}"] = decode_rgb(path.read_bytes()).shape[:2]
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    odd = {
        "odd/gray.jpg": Image.fromarray(rgb[:, :, 0]),
        "odd/palette.png": Image.fromarray(rgb).convert("P"),
        "odd/rgba.png": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])),
        "odd/cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "odd/sixteen.png": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
        "odd/UPPER.JPG": Image.fromarray(rgb),
        "odd/with space é #1.jpg": Image.fromarray(rgb),
        "odd/photo.webp": Image.fromarray(rgb),
        "odd/scan.tif": Image.fromarray(rgb),
        "odd/drawing.bmp": Image.fromarray(rgb),
        "odd/tiny.png": Image.fromarray(rgb[:3, :4]),
        "odd/dot.png": Image.fromarray(rgb[:1, :1]),
        "a/x.png": Image.fromarray(rgb),
        "b/x.png": Image.fromarray(rgb[::-1]),
        "a__x.png": Image.fromarray(rgb[:, ::-1]),
    }
    for relpath, image in odd.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relpath)
        good[relpath] = (image.height, image.width)
    Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8)).save(folder / "odd" / "huge.png")
    good["odd/huge.png"] = (110, 256)  # longest side shrunk to --max-side 256
    rotated, _ = exif_rotated_jpeg()
    (folder / "odd" / "rotated.jpg").write_bytes(rotated)
    good["odd/rotated.jpg"] = (60, 40)
    full = io.BytesIO()
    Image.fromarray(rgb).save(full, format="JPEG")
    (folder / "broken").mkdir()
    (folder / "broken" / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (folder / "broken" / "zero.png").write_bytes(b"")
    (folder / "broken" / "text.jpg").write_bytes(b"not an image\n" * 20)
    (folder / "broken" / "dangling.jpg").symlink_to(folder / "missing.jpg")
    (folder / "notes.txt").write_text("not an input")
    bad = {"broken/truncated.jpg": "decode", "broken/zero.png": "empty", "broken/text.jpg": "not an image",
           "broken/dangling.jpg": "cannot read"}
    return good, bad


@pytest.fixture(scope="module")
def infer_run(trained_run: Path, toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`spix infer` once over good, odd and broken files, with --dense and --labels."""
    base = tmp_path_factory.mktemp("infer")
    folder = base / "photos"
    good, bad = write_input_folder(folder, toy_root)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    result = run_spix("infer", str(folder), "--checkpoint", str(trained_run), "--num-cpus", "2",
                      "--max-side", str(MAX_SIDE), "--soft-layers", str(K), "--dense", "--labels", cwd=base)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before, "nothing written into the input folder"
    out = base / "photos_spix"
    return {"result": result, "folder": folder, "out": out, "good": good, "bad": bad, "names": output_names(sorted(good)),
            "run": trained_run, "record": json.loads((out / "infer.json").read_text())}


@pytest.mark.slow
def test_summary_counts_every_input_and_ray_says_nothing(infer_run: dict) -> None:
    result = infer_run["result"]
    good, bad = infer_run["good"], infer_run["bad"]
    expected = f"images: {len(good) + len(bad)} | done: {len(good)} | already done: 0 | skipped: {len(bad)} | failed: 0"
    assert expected in result.stdout
    assert "images/s" in result.stdout and "seconds per image: decode" in result.stdout
    noise = [line for line in result.stderr.splitlines() if "core_worker" in line or "max_restarts" in line or "WARNING" in line]
    assert not noise, noise
    stages = infer_run["record"]["summary"]["stage_s_per_image"]
    assert all(stages[name] > 0 for name in ("decode_s", "slic_s", "forward_s", "post_s", "write_s")), stages
    # The start-up and the pace after it fit inside the run's measured seconds, and the model actor was ready
    # before the first image could have been through the model.
    summary = infer_run["record"]["summary"]
    after_ready = summary["done"] / summary["images_per_s_after_ready"]
    assert 0 < summary["model_ready_s"]
    assert summary["ray_start_s"] + summary["basis_s"] + summary["model_ready_s"] + after_ready <= summary["seconds"]
    assert after_ready >= summary["done"] * stages["forward_s"]  # one actor: its forward passes come one after another


def test_the_pace_after_start_up_counts_finished_images_from_the_first_ready_actor() -> None:
    rows = [{"status": "ok", "model_ready": 102.0}, {"status": "ok", "model_ready": 101.0},
            {"status": "failed", "model_ready": 100.0}, {"status": "ok", "model_ready": 101.0}]
    summary = InferSummary(inputs=4)
    record_pace(rows, job_start=98.0, job_end=107.0, summary=summary)
    assert summary.model_ready_s == 3.0  # the earliest actor that finished an image
    assert summary.images_per_s_after_ready == 3 / 6.0
    record_pace([{"status": "failed", "model_ready": 0.0}], 98.0, 107.0, empty := InferSummary(inputs=1))
    assert (empty.model_ready_s, empty.images_per_s_after_ready) == (0.0, 0.0)


@pytest.mark.slow
def test_broken_inputs_are_one_line_each_in_errors_jsonl(infer_run: dict) -> None:
    lines = (infer_run["out"] / "errors.jsonl").read_text().splitlines()
    errors = {e["path"]: e for e in map(json.loads, lines)}
    assert set(errors) == set(infer_run["bad"]) and len(lines) == len(errors)
    for path, word in infer_run["bad"].items():
        assert errors[path]["status"] == "skipped" and word in errors[path]["reason"], errors[path]


@pytest.mark.slow
def test_every_good_input_has_its_pictures_and_layers_that_sum_to_one(infer_run: dict) -> None:
    out, names = infer_run["out"], infer_run["names"]
    for relpath, (height, width) in infer_run["good"].items():
        files = output_files(out, names[relpath], ALL_KINDS)
        assert all(p.is_file() for p in files.values()), relpath
        layers = read_soft_layers(files["layers"])
        assert layers.shape == (K, height, width), relpath
        np.testing.assert_allclose(layers.sum(axis=0), 1.0, atol=1e-6)
        for kind in ("features", "soft", "inputs"):
            picture = np.asarray(Image.open(files[kind]))
            assert picture.dtype == np.uint8 and picture.shape == (height, width, 3), (relpath, kind)
        if relpath.startswith("val/"):
            assert np.asarray(Image.open(files["features"])).std(axis=(0, 1)).max() > 5, "feature picture is flat"


@pytest.mark.slow
def test_exif_orientation_is_honoured(infer_run: dict) -> None:
    _, upright = exif_rotated_jpeg()
    files = output_files(infer_run["out"], infer_run["names"]["odd/rotated.jpg"], ("inputs",))
    processed = np.asarray(Image.open(files["inputs"])).astype(int)
    assert processed.shape == upright.shape
    assert np.abs(processed - upright).mean() < 10, "the image was not turned upright"


@pytest.mark.slow
def test_embeddings_dense_and_labels_match_an_in_process_recomputation(infer_run: dict) -> None:
    """Parquet rows hold the SLIC map and the trainer's own superpixel embeddings (float16); dense means agree."""
    model, meta = load_model(infer_run["run"], "cpu")
    probe = LinearProbe.load(infer_run["run"] / "eval" / "classifier.npz")
    for relpath in [r for r in infer_run["good"] if r.startswith("val/")]:
        files = output_files(infer_run["out"], infer_run["names"][relpath], ALL_KINDS)
        row = read_embeddings(files["embeddings"])
        rgb = decode_rgb((infer_run["folder"] / relpath).read_bytes())
        superpixels = compute_superpixels(rgb, meta["preprocess"]["num_superpixels"], meta["preprocess"]["compactness"])
        assert row["relative_path"] == relpath and (row["height"], row["width"]) == rgb.shape[:2]
        np.testing.assert_array_equal(row["superpixels"], superpixels)
        expected = embed_superpixels(model, rgb, superpixels, torch.device("cpu"))
        np.testing.assert_allclose(row["embeddings"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        dense = np.load(files["dense"])
        assert dense.shape == rgb.shape[:2] + (128,) and dense.dtype == np.float16
        flat = superpixels.ravel().astype(np.intp)
        means = np.stack([np.bincount(flat, dense[..., d].ravel().astype(np.float64)) for d in range(128)], 1)
        np.testing.assert_allclose(means / np.bincount(flat)[:, None], expected, atol=5e-3)
        labels = Image.open(files["labels"])
        assert labels.mode == "P"
        predicted = paint_superpixels(superpixels, probe.predict(expected))
        assert (np.asarray(labels) == predicted).mean() > 0.99
    assert (infer_run["out"] / "labels" / "legend.png").is_file()


@pytest.mark.slow
def test_the_run_wide_basis_is_fitted_on_the_first_usable_images_and_used_for_every_picture(infer_run: dict) -> None:
    """The model brings no basis: the run records one fitted on the first 8 usable images of the folder (in
    listing order); it equals the principal axes of those images' area-weighted superpixel embeddings, read back
    from the Parquet outputs; and a feature picture equals the inference step's with that basis."""
    record = infer_run["record"]["feature_basis"]
    assert record["images"] == 8 and "first 8 usable images" in record["source"]
    first = [r for r in sorted(infer_run["good"])][:8]
    moments = EmbeddingMoments(128)
    for relpath in first:
        row = read_embeddings(output_files(infer_run["out"], infer_run["names"][relpath], ("embeddings",))["embeddings"])
        moments.add(row["embeddings"].astype(np.float64), np.bincount(row["superpixels"].ravel(), minlength=row["num_superpixels"]))
    expected = moments.principal_basis()
    assert np.abs(np.abs(np.sum(np.array(expected["components"]) * np.array(record["components"]), axis=1)) - 1).max() < 1e-3
    np.testing.assert_allclose(record["std"], expected["std"], rtol=1e-2)
    model, _ = load_model(infer_run["run"], "cpu")
    basis = FeatureBasis.from_record(record, 128, "infer.json")
    step = InferenceStep(model, torch.device("cpu"), step_config(("features",), soft_layers=K), basis)
    relpath = next(r for r in infer_run["good"] if r.startswith("val/"))
    files = output_files(infer_run["out"], infer_run["names"][relpath], ALL_KINDS)
    row = read_embeddings(files["embeddings"])
    rgb = decode_rgb((infer_run["folder"] / relpath).read_bytes())
    picture = step([rgb], [row["superpixels"]])[0].features
    written = np.asarray(Image.open(files["features"]))
    assert (np.abs(picture.astype(int) - written.astype(int)) <= 1).mean() > 0.999


@pytest.mark.slow
def test_soft_layers_agree_with_the_ground_truth_well_above_chance(infer_run: dict, toy_root: Path) -> None:
    aris, shuffled = [], []
    rng = np.random.default_rng(0)
    for relpath in [r for r in infer_run["good"] if r.startswith("val/")]:
        files = output_files(infer_run["out"], infer_run["names"][relpath], ALL_KINDS)
        hard = read_soft_layers(files["layers"]).argmax(axis=0)
        gt = np.asarray(Image.open(toy_root / "annotations" / "validation" / Path(relpath).with_suffix(".png").name))
        labelled = gt > 0
        aris.append(adjusted_rand_score(gt[labelled], hard[labelled]))
        row = read_embeddings(files["embeddings"])  # control: the same layers from shuffled embeddings
        rgb = torch.from_numpy(np.array(Image.open(files["inputs"])))[None]
        ids = torch.from_numpy(row["superpixels"].astype(np.int64))[None]
        embeddings = torch.from_numpy(rng.permutation(row["embeddings"].astype(np.float32)))[None]
        memberships = soft_memberships(embeddings, superpixel_areas(ids, embeddings.shape[1]), K)
        smooth = GuidedFilter(rgb.permute(0, 3, 1, 2) / 255.0, smoothing_radius(*rgb.shape[1:3]))
        control = soft_layers(memberships, ids, smooth, INFER["layer_eps"])[0].numpy()
        shuffled.append(adjusted_rand_score(gt[labelled], control.argmax(axis=0)[labelled]))
    print(f"soft-layer ARI per image {np.round(aris, 3)}, mean {np.mean(aris):.3f}; shuffled {np.mean(shuffled):.3f}")
    assert np.mean(aris) > ARI_THRESHOLD > np.mean(shuffled)


class LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


@pytest.mark.slow
def test_gallery_links_point_at_files_that_exist(infer_run: dict) -> None:
    out = infer_run["out"]
    page = (out / "index.html").read_text()
    parser = LinkParser()
    parser.feed(page)
    targets = {(out / unquote(link)).resolve() for link in parser.links}
    assert all(t.exists() for t in targets), [str(t) for t in targets if not t.exists()]
    for relpath in infer_run["good"]:
        assert (infer_run["folder"] / relpath).resolve() in targets, relpath
        files = output_files(out, infer_run["names"][relpath], ALL_KINDS)
        assert {files[k].resolve() for k in ("inputs", "features", "soft", "labels")} <= targets
    assert all(path in page for path in infer_run["bad"]), "the skipped files are listed"


@pytest.mark.slow
def test_rerun_redoes_missing_outputs_only_and_a_rerun_with_nothing_to_do_starts_nothing(infer_run: dict, trained_run: Path) -> None:
    out, names = infer_run["out"], infer_run["names"]
    args = ("infer", str(infer_run["folder"]), "--checkpoint", str(trained_run), "--num-cpus", "2",
            "--max-side", str(MAX_SIDE), "--soft-layers", str(K), "--dense", "--labels")
    redo = "val/" + sorted(p.name for p in (infer_run["folder"] / "val").iterdir())[0]
    output_files(out, names[redo], ("soft",))["layers"].unlink()
    untouched = output_files(out, names["odd/gray.jpg"], ALL_KINDS)
    stamps = {kind: path.stat().st_mtime_ns for kind, path in untouched.items()}
    basis = infer_run["record"]["feature_basis"]
    result = run_spix(*args)
    assert result.returncode == 0, result.stderr
    good, bad = len(infer_run["good"]), len(infer_run["bad"])
    assert f"images: {good + bad} | done: 1 | already done: {good - 1} | skipped: 0 | failed: 0 | unreadable before: {bad}" in result.stdout
    assert output_files(out, names[redo], ("soft",))["layers"].is_file()
    assert {kind: path.stat().st_mtime_ns for kind, path in untouched.items()} == stamps
    assert not list(out.glob("*/*.partial-*"))
    record = json.loads((out / "infer.json").read_text())
    assert record["feature_basis"] == basis, "a re-run keeps the basis of the first run"
    assert {json.loads(line)["path"] for line in (out / "errors.jsonl").read_text().splitlines()} == set(infer_run["bad"])
    idle = run_spix(*args)
    assert idle.returncode == 0, idle.stderr
    assert f"nothing to do: {good} already done, {bad} unreadable before and unchanged" in idle.stdout
    assert json.loads((out / "infer.json").read_text())["summary"]["ray_started"] is False
    changed = run_spix("infer", str(infer_run["folder"]), "--checkpoint", str(trained_run), "--max-side", "128")
    assert changed.returncode == 1 and "other settings (max_side)" in changed.stderr
    assert changed.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_outputs_embeddings_writes_only_embeddings_and_a_repaired_file_is_retried(infer_run: dict, trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    relpath = sorted(r for r in infer_run["good"] if r.startswith("val/"))[0]
    shutil.copy(infer_run["folder"] / relpath, folder / "good.jpg")
    (folder / "later.png").write_bytes(b"")
    out = tmp_path / "out"
    args = ("infer", str(folder), "--checkpoint", str(trained_run), "--out", str(out), "--num-cpus", "2",
            "--max-side", str(MAX_SIDE), "--outputs", "embeddings")
    first = run_spix(*args)
    assert first.returncode == 0, first.stderr
    assert "done: 1 |" in first.stdout and "skipped: 1 |" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == ["embeddings", "errors.jsonl", "index.html", "infer.json", "search"]
    full = read_embeddings(output_files(infer_run["out"], infer_run["names"][relpath], ("embeddings",))["embeddings"])
    np.testing.assert_array_equal(read_embeddings(out / "embeddings" / "good.jpg.parquet")["embeddings"], full["embeddings"])
    assert json.loads((out / "infer.json").read_text())["feature_basis"] is None
    idle = run_spix(*args)
    assert "nothing to do: 1 already done, 1 unreadable before and unchanged" in idle.stdout, idle.stdout
    shutil.copy(folder / "good.jpg", folder / "later.png")  # the broken file is replaced: it is tried again
    again = run_spix(*args)
    assert again.returncode == 0, again.stderr
    assert "done: 1 | already done: 1 | skipped: 0" in again.stdout
    assert (out / "embeddings" / "later.png.parquet").is_file() and (out / "errors.jsonl").read_text() == ""


@pytest.mark.slow
def test_a_model_with_its_own_basis_colours_every_image_with_it(infer_run: dict, trained_run: Path, tmp_path: Path) -> None:
    """model.json's feature_basis (as `spix train` stores it) is used as is and recorded; nothing is fitted.
    `--pca image` ignores it and gives each image its own."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "model.json").read_text())
    rng = np.random.default_rng(3)
    components = np.linalg.qr(rng.normal(size=(128, 3)))[0].T
    meta["feature_basis"] = {"mean": rng.normal(0, 0.1, 128).tolist(), "components": components.tolist(),
                             "std": [0.5, 0.3, 0.2], "images": 16, "source": "validation superpixel embeddings, area-weighted"}
    (run / "model.json").write_text(json.dumps(meta))
    folder = tmp_path / "pics"
    shutil.copytree(infer_run["folder"] / "val", folder)
    out = tmp_path / "out"
    result = run_spix("infer", str(folder), "--checkpoint", str(run), "--out", str(out), "--num-cpus", "2",
                      "--max-side", str(MAX_SIDE), "--outputs", "features")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "infer.json").read_text())
    assert record["feature_basis"]["source"] == "validation superpixel embeddings, area-weighted"
    assert record["summary"]["basis_s"] == 0.0
    model, _ = load_model(run, "cpu")
    step = InferenceStep(model, torch.device("cpu"), step_config(("features",)), FeatureBasis.from_record(meta["feature_basis"], 128, "m"))
    for path in sorted(folder.iterdir())[:2]:
        rgb = decode_rgb(path.read_bytes())
        sp = compute_superpixels(rgb, meta["preprocess"]["num_superpixels"], meta["preprocess"]["compactness"])
        written = np.asarray(Image.open(out / "features" / f"{path.name}.png"))
        assert (np.abs(step([rgb], [sp])[0].features.astype(int) - written.astype(int)) <= 1).mean() > 0.999
    own = run_spix("infer", str(folder), "--checkpoint", str(run), "--out", str(tmp_path / "own"), "--num-cpus", "2",
                   "--max-side", str(MAX_SIDE), "--outputs", "features", "--pca", "image")
    assert own.returncode == 0, own.stderr
    record = json.loads((tmp_path / "own" / "infer.json").read_text())
    assert record["params"]["pca"] == "image" and record["feature_basis"] is None
    path = sorted(folder.iterdir())[0]
    per_image = np.asarray(Image.open(tmp_path / "own" / "features" / f"{path.name}.png")).astype(int)
    assert np.abs(per_image - np.asarray(Image.open(out / "features" / f"{path.name}.png")).astype(int)).mean() > 5


@pytest.mark.slow
def test_missing_checkpoint_and_empty_folder_are_one_clear_line(
    tmp_path: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "pics").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pics" / "a.png")
    monkeypatch.chdir(tmp_path)  # no runs/ here
    no_run = cli("infer", str(tmp_path / "pics"))
    missing = cli("infer", str(tmp_path / "pics"), "--checkpoint", str(tmp_path / "nope"))
    empty = cli("infer", str(tmp_path / "empty"), "--checkpoint", str(trained_run))
    outputs = cli("infer", str(tmp_path / "pics"), "--checkpoint", str(trained_run), "--outputs", "pictures")
    for result, words in [(no_run, "no finished run under runs"), (missing, "no finished model"), (empty, "no images"),
                          (outputs, "--outputs takes")]:
        assert result.exit_code == 1 and words in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- a 2-node cluster


@pytest.mark.slow
def test_infer_on_a_two_node_cluster_matches_the_local_run(two_node_cluster, infer_run: dict, tmp_path: Path) -> None:
    folder = tmp_path / "val"
    shutil.copytree(infer_run["folder"] / "val", folder)
    out = tmp_path / "out"
    result = run_spix("infer", str(folder), "--checkpoint", str(infer_run["run"]), "--out", str(out),
                      "--max-side", str(MAX_SIDE), "--soft-layers", str(K), "--address", two_node_cluster.address)
    assert result.returncode == 0, result.stderr
    assert f"done: {len(list(folder.iterdir()))} |" in result.stdout and "nodes: 2" in result.stdout
    for path in sorted(folder.iterdir()):
        local = output_files(infer_run["out"], infer_run["names"][f"val/{path.name}"], ALL_KINDS)
        remote = output_files(out, path.name, OUTPUT_KINDS)
        np.testing.assert_allclose(read_soft_layers(local["layers"]), read_soft_layers(remote["layers"]), atol=1.5 / 255)
        np.testing.assert_array_equal(read_embeddings(local["embeddings"])["embeddings"],
                                      read_embeddings(remote["embeddings"])["embeddings"])


FAKE_FAST_SLIC = """
import ctypes, numpy as np

class Slic:
    \"\"\"Segfaults on 97-pixel-wide images (like fast-slic on some systems); a 4 x 4 grid otherwise.\"\"\"

    def __init__(self, num_components=400, compactness=10, num_threads=-1, **kwargs):
        pass

    def iterate(self, image):
        if image.shape[1] == 97:
            ctypes.string_at(0)
        height, width = image.shape[:2]
        return (np.arange(height)[:, None] * 4 // height * 4 + np.arange(width)[None, :] * 4 // width).astype(np.int16)
"""


@pytest.mark.slow
def test_a_crashing_worker_costs_one_image_not_the_run(trained_run: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "fast_slic"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(FAKE_FAST_SLIC))
    (fake / "avx2.py").write_text("from fast_slic import Slic as SlicAvx2\n")
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for width in (60, 97, 70):
        Image.fromarray(rng.integers(0, 255, (40, width, 3), dtype=np.uint8)).save(folder / f"w{width}.png")
    result = run_spix("infer", str(folder), "--checkpoint", str(trained_run), "--num-cpus", "2",
                      env={"PYTHONPATH": str(tmp_path / "fake") + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stderr
    assert "done: 2 |" in result.stdout and "failed: 1 |" in result.stdout
    errors = [json.loads(line) for line in (tmp_path / "pics_spix" / "errors.jsonl").read_text().splitlines()]
    assert [(e["path"], e["status"]) for e in errors] == [("w97.png", "failed")] and "crashed" in errors[0]["reason"]
