"""`spix export`: ONNX and torch.export files against the PyTorch model at odd sizes and N > 1, the pooled
outputs against `superpixel_pool` and `bincount`, the built-in check, a missing extra, unloadable runs.

The model is a seeded `tiny` network saved as `spix train` saves it, with random BN statistics so that the
exported (folded) batch norms are exercised; nothing is trained. The reference is always the PyTorch model
called directly, not the exporter's own `reference_outputs`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner, Result

from spix.cli.main import app
from spix.inference import export as export_module
from spix.inference.export import pool_to_max_id
from spix.trainer.checkpoint import load_model, model_meta, write_final_model
from spix.trainer.model import build_model, normalize_images
from spix.trainer.pooling import superpixel_pool

# The exported files reproduce PyTorch to ~1e-7 (measured); 1e-4 is far below what a wrong padding, a
# misaligned upsampling or a lost scatter update gives (1e-3 and more), and well above fp32 reordering noise.
CLOSE = 1e-4
# None a multiple of 4, none the exporter's example size, N > 1, and a 1-pixel and a 3-pixel side: the
# padded 3x3/2 max-pools and the bilinear upsampling back to full size must match PyTorch at every size.
ODD_SHAPES = [(3, 37, 53), (2, 29, 7), (2, 1, 3)]


def spix_export(*args: object) -> Result:
    return CliRunner().invoke(app, ["export", *map(str, args)])


def random_superpixels(shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Maps with a different id count per image, and one id (2) never used: padded and empty slots."""
    n, h, w = shape
    maps = torch.stack([torch.randint(0, 3 + 4 * i, (h, w), generator=generator) for i in range(n)])
    return torch.where(maps == 2, 0, maps)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with model.pt + model.json of a seeded tiny model, written as `spix train` writes it."""
    torch.manual_seed(0)
    model = build_model("tiny")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    run = tmp_path_factory.mktemp("run")
    write_final_model(run, model.state_dict(), model_meta("tiny", 128, {}, [], {}))
    return run


@pytest.fixture(scope="module")
def model(run_dir: Path) -> torch.nn.Module:
    return load_model(run_dir)[0]


@pytest.fixture(scope="module")
def dense_onnx(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("dense") / "model.onnx"
    return out, spix_export(run_dir, "--out", out)


@pytest.fixture(scope="module")
def pooled_onnx(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pooled") / "pooled.onnx"
    result = spix_export(run_dir / "model.pt", "--out", out, "--pool")
    assert result.exit_code == 0, result.output
    return out


def pytorch_dense(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(normalize_images(images)).numpy()


def session(path: Path, threads: int = 0) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ pooling in the graph


def test_traceable_pooling_equals_superpixel_pool_and_bincount() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 16, 11, 13, generator=generator)
    superpixels = random_superpixels((3, 11, 13), generator)
    num_superpixels = int(superpixels.max()) + 1
    expected, mask = superpixel_pool(features, superpixels, num_superpixels)
    pooled, counts = pool_to_max_id(features, superpixels)
    assert pooled.shape == (3, num_superpixels, 16)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    bincounts = np.stack([np.bincount(ids.ravel(), minlength=num_superpixels) for ids in superpixels.numpy()])
    np.testing.assert_array_equal(counts.numpy(), bincounts)
    np.testing.assert_array_equal(counts.numpy() > 0, mask.numpy())
    assert not mask[0, 2] and not mask[0, 3:].any(), "the unused id and the padding slots are empty"


# ------------------------------------------------------------------------------------------ ONNX files


@pytest.mark.slow
def test_dense_export_prints_its_check_and_leaves_one_file(dense_onnx: tuple[Path, Result]) -> None:
    out, result = dense_onnx
    assert result.exit_code == 0, result.output
    checks = re.findall(r"check ONNX Runtime vs PyTorch, (\d+) x (\d+)x(\d+): max abs diff (\S+)", result.stdout)
    assert [c[:3] for c in checks] == [("2", "37", "53"), ("1", "64", "96")]
    assert all(float(c[3]) <= 1e-3 for c in checks)
    assert f"wrote {out}" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"], "no partial file left behind"


@pytest.mark.slow
def test_dense_onnx_has_dynamic_axes_and_matches_pytorch_at_odd_sizes(dense_onnx: tuple[Path, Result], model: torch.nn.Module) -> None:
    out, _ = dense_onnx
    graph = onnx.load(str(out)).graph
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    assert shapes == {"images": ["N", "H", "W", 3], "embeddings": ["N", 128, "H", "W"]}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    runner = session(out)
    generator = torch.Generator().manual_seed(2)
    for shape in ODD_SHAPES:
        images = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=generator)
        (embeddings,) = runner.run(None, {"images": images.numpy()})
        expected = pytorch_dense(model, images)
        assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
        assert np.abs(embeddings - expected).max() < CLOSE, shape


@pytest.mark.slow
def test_pooled_onnx_matches_superpixel_pool_and_pixel_counts(pooled_onnx: Path, model: torch.nn.Module) -> None:
    graph = onnx.load(str(pooled_onnx)).graph
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output}
    assert shapes == {"embeddings": ["N", 128, "H", "W"], "superpixel_embeddings": ["N", "S", 128], "pixel_counts": ["N", "S"]}
    # Several threads, several runs: a scatter that loses updates under threading shows up here.
    runner = session(pooled_onnx, threads=4)
    generator = torch.Generator().manual_seed(3)
    for shape in [*ODD_SHAPES, (2, 95, 131)]:
        images = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=generator)
        superpixels = random_superpixels(shape, generator)
        num_superpixels = int(superpixels.max()) + 1
        dense = pytorch_dense(model, images)
        expected, mask = superpixel_pool(torch.from_numpy(dense), superpixels, num_superpixels)
        bincounts = np.stack([np.bincount(ids.ravel(), minlength=num_superpixels) for ids in superpixels.numpy()])
        for _ in range(3):
            embeddings, pooled, counts = runner.run(None, {"images": images.numpy(), "superpixels": superpixels.numpy()})
            assert np.abs(embeddings - dense).max() < CLOSE, shape
            assert pooled.shape == (shape[0], num_superpixels, 128) and pooled.dtype == np.float32
            assert np.abs(pooled - expected.numpy()).max() < CLOSE, shape
            np.testing.assert_array_equal(counts, bincounts)
            np.testing.assert_array_equal(counts > 0, mask.numpy())


@pytest.mark.slow
def test_export_that_does_not_match_pytorch_is_deleted(
    run_dir: Path, dense_onnx: tuple[Path, Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The written file is a valid ONNX model of the network with every weight 1% off: the check must catch it."""
    corrupted = onnx.load(str(dense_onnx[0]))
    for initializer in corrupted.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            weights = onnx.numpy_helper.to_array(initializer) * np.float32(1.01)
            initializer.CopyFrom(onnx.numpy_helper.from_array(weights, initializer.name))
    monkeypatch.setitem(export_module.WRITERS, "onnx", lambda program, path: onnx.save(corrupted, str(path)))
    out = tmp_path / "model.onnx"
    result = spix_export(run_dir, "--out", out)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    difference = float(re.fullmatch(r"error: the exported file differs from PyTorch by (\S+) \(> 0.001\) on input \d+x\d+x\d+; nothing written to .*", line)[1])
    assert difference > 1e-3
    assert list(tmp_path.iterdir()) == [], "neither the file nor its partial copy is left"


# ------------------------------------------------------------------------------------------ torch.export


@pytest.mark.slow
def test_torch_format_pooled_program_matches_pytorch(run_dir: Path, model: torch.nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "model.pt2"
    result = spix_export(run_dir, "--out", out, "--format", "torch", "--pool")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("check torch.export.load vs PyTorch") == 2
    program = torch.export.load(out).module()
    generator = torch.Generator().manual_seed(4)
    shape = (3, 37, 53)  # the program's symbolic H and W start at 5 (see export.capture_program)
    images = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=generator)
    superpixels = random_superpixels(shape, generator)
    with torch.no_grad():
        embeddings, pooled, counts = program(images, superpixels)
    dense = pytorch_dense(model, images)
    expected, _ = superpixel_pool(torch.from_numpy(dense), superpixels, int(superpixels.max()) + 1)
    assert np.abs(embeddings.numpy() - dense).max() < CLOSE
    assert np.abs(pooled.numpy() - expected.numpy()).max() < CLOSE
    num_superpixels = int(superpixels.max()) + 1
    bincounts = np.stack([np.bincount(ids.ravel(), minlength=num_superpixels) for ids in superpixels.numpy()])
    np.testing.assert_array_equal(counts.numpy(), bincounts)


# ------------------------------------------------------------------------------------------ clear errors


@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_export_extra_is_one_clear_line(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what `import` meets when the package is not installed
    out = tmp_path / "model.onnx"
    result = spix_export(run_dir, "--out", out)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()  # a package that imports the blocked one is missing too
    prefix, suffix = "error: spix export needs the export extra (", " missing): pip install 'spix[export]'"
    assert line.startswith(prefix) and line.endswith(suffix)
    assert package in line.removeprefix(prefix).removesuffix(suffix).split(", ")
    assert not out.exists()


def test_unloadable_run_or_model_is_one_clear_line(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_weights = tmp_path / "not_weights"
    not_weights.mkdir()
    (not_weights / "model.pt").write_bytes(b"not a state dict")
    (not_weights / "model.json").write_bytes((run_dir / "model.json").read_bytes())
    bad_meta = tmp_path / "bad_meta"
    bad_meta.mkdir()
    (bad_meta / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    (bad_meta / "model.json").write_text("{broken")
    cases = {
        tmp_path / "missing": "no finished model",
        empty: "no finished model",
        not_weights: "model.pt is not a state dict",
        bad_meta: "cannot load the model (JSONDecodeError",
    }
    for path, reason in cases.items():
        result = spix_export(path, "--out", tmp_path / "model.onnx")
        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {path}") and reason in line, line
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_format_is_one_clear_line(run_dir: Path, tmp_path: Path) -> None:
    result = spix_export(run_dir, "--out", tmp_path / "model.tflite", "--format", "tflite")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: unknown format 'tflite'; choose one of ['onnx', 'torch']"]
