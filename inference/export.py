"""`spix export`: the trained extractor as one self-contained ONNX file or torch.export program.

The exported graph takes raw uint8 pixels: the input scaling (`normalize_images`) is inside it, so a C++,
browser or edge runtime needs nothing from spix but the file. With `pool=True` the superpixel pooling is
inside too (one scatter), with the number of superpixel slots read from the map at run time.

Every export is checked before it is kept: the written file is run (ONNX Runtime, or `torch.export.load`)
on image sizes that are not multiples of 4 and on two batch sizes, and compared with `embed_batch`, the
embedding path of `spix infer`. A file that differs by more than `TOLERANCE` is deleted.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spix.trainer.embedding import embed_batch
from spix.trainer.model import normalize_images

FORMATS = {"onnx": ".onnx", "torch": ".pt2"}
# The opset the exporter's ONNX functions (torchlib) are written for: no version conversion, and ONNX Runtime
# has run it since 1.14, ONNX Runtime Web included.
ONNX_OPSET = 18
EXTRA_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra: torch.onnx needs the first two
TOLERANCE = 1e-3  # max abs difference allowed between the exported file and PyTorch, fp32
# (N, H, W) of the export's example input. N >= 2 and H, W >= 5 keep every axis symbolic: torch.export
# specialises axes of size 0 or 1 and guards on the max-pooled sizes staying above 1.
EXAMPLE_SHAPE = (2, 48, 64)
# The verification runs: neither is the example's size, none is a multiple of 4 (odd sizes test the padded
# max-pools and the bilinear upsampling back to full size), and the batch size changes.
CHECK_SHAPES = ((2, 37, 53), (1, 64, 96))
INPUT_NAMES = ("images", "superpixels")
OUTPUT_NAMES = ("embeddings", "superpixel_embeddings", "pixel_counts")
AXIS_NAMES = {0: "N", 1: "H", 2: "W"}


class ExportError(Exception):
    """An export that cannot be made, or whose file does not reproduce the PyTorch model."""


class DenseEmbedder(nn.Module):
    """uint8 images (N, H, W, 3) -> embeddings (N, D, H, W) float32: input scaling and model in one graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalize_images(images))


class PooledEmbedder(DenseEmbedder):
    """Also takes the superpixel maps (N, H, W) int64; adds the superpixel means and their pixel counts."""

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        embeddings = super().forward(images)
        return (embeddings, *pool_to_max_id(embeddings, superpixels))


def pool_to_max_id(features: torch.Tensor, superpixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`superpixel_pool` with the slot count S = max id + 1 of the batch computed inside the graph.

    `superpixel_pool` takes S as a host integer and checks the ids on the host; torch.export cannot trace
    either (both read tensor values into Python). Here S is a symbolic size, so one exported graph serves any
    number of superpixels. Returns the means (N, S, D) float32 and the pixel count of every slot (N, S)
    int64: the counts say which slots are real (count > 0; a map with ids 0..S_i-1 fills the first S_i) and
    are the area weights that averaging over superpixels needs. Ids must lie in 0..S-1 (not checked here).

    The sums use `scatter_add` (ONNX ScatterElements), not `index_add` (ONNX ScatterND): ONNX Runtime's CPU
    ScatterND with reduction "add" runs on several threads and loses updates (measured with onnxruntime
    1.31.1: sums off by up to hundreds, different on every run). The price is an index expanded to the
    size of the pixel features.
    """
    batch, dim = features.shape[:2]
    num_superpixels = superpixels.max().item() + 1
    offsets = torch.arange(batch, device=superpixels.device) * num_superpixels
    index = (superpixels.reshape(batch, -1) + offsets[:, None]).reshape(-1)
    pixels = features.permute(0, 2, 3, 1).reshape(-1, dim).float()
    slots = batch * num_superpixels
    sums = torch.zeros(slots, dim, device=features.device).scatter_add(0, index[:, None].expand(-1, dim), pixels)
    counts = torch.zeros(slots, dtype=torch.int64, device=features.device).scatter_add(0, index, torch.ones_like(index))
    pooled = sums / counts.clamp(min=1).unsqueeze(1)
    return pooled.reshape(batch, num_superpixels, dim), counts.reshape(batch, num_superpixels)


@dataclass
class ExportReport:
    """What `export_model` wrote and how closely the file reproduces PyTorch."""

    path: Path
    format: str
    pool: bool
    export_s: float  # capture + conversion + writing
    check_s: float  # loading and running the file on CHECK_SHAPES
    size_bytes: int
    max_abs_diff: dict[tuple[int, int, int], float]  # per (N, H, W) of CHECK_SHAPES, over every output


def require_export_extra() -> None:
    """Raise ExportError unless the packages ONNX export and its check need can be imported."""
    missing = []
    for name in EXTRA_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"spix export needs the export extra ({', '.join(missing)} missing): pip install 'spix[export]'"
        )


def example_inputs(shape: tuple[int, int, int], pool: bool, seed: int) -> tuple[torch.Tensor, ...]:
    """Random uint8 images of `shape` and, with `pool`, superpixel maps with a different id count per image
    (so the padded slots of the batch are exercised)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=generator)
    if not pool:
        return (images,)
    n, h, w = shape
    maps = [torch.randint(0, 5 + 7 * i, (h, w), generator=generator) for i in range(n)]
    return images, torch.stack(maps)


def reference_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
    """What the export must reproduce: `embed_batch` (the path of `spix infer`) and, for pooled exports,
    per-slot pixel counts from `bincount`."""
    images = inputs[0]
    pool = len(inputs) == 2
    superpixels = inputs[1] if pool else torch.zeros(images.shape[:3], dtype=torch.int64)
    num_superpixels = int(superpixels.max()) + 1
    dense, pooled = embed_batch(model, images, superpixels, num_superpixels)
    if not pool:
        return (dense.numpy(),)
    counts = torch.stack([torch.bincount(ids.reshape(-1), minlength=num_superpixels) for ids in superpixels])
    return dense.numpy(), pooled.numpy(), counts.numpy()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and warnings (about optional torchvision ops, renamed axes,
    deprecations); a failure still raises."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def capture_program(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export with N, H and W symbolic in every input, captured as torch.onnx.export captures a module
    (non-strict tracing, deferred runtime asserts), so both formats come from one program.

    Dim.DYNAMIC, not a named Dim, because the graph is not valid for every size and torch.export must be
    allowed to narrow the range: the stride checks of the channels_last convolutions need the max-pooled
    sizes above 1, so the torch.export program takes H, W >= 5 (ONNX Runtime runs the ONNX file at any size).
    """
    axes = {axis: torch.export.Dim.DYNAMIC for axis in AXIS_NAMES}
    return torch.export.export(
        module, example, dynamic_shapes=tuple(axes for _ in example), strict=False,
        prefer_deferred_runtime_asserts_over_guards=True,
    )


def write_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """One .onnx file (weights inside), opset ONNX_OPSET, the symbolic axes named N, H, W and S."""
    signature = program.graph_signature
    num_inputs = len(signature.user_inputs)
    onnx_program = torch.onnx.export(
        program, input_names=list(INPUT_NAMES[:num_inputs]), output_names=list(OUTPUT_NAMES[: len(signature.user_outputs)]),
        dynamic_shapes=tuple(AXIS_NAMES for _ in range(num_inputs)),
        opset_version=ONNX_OPSET, optimize=True, verbose=False,
    )
    outputs = onnx_program.model.graph.outputs
    if len(outputs) > 1:  # the superpixel axis, named after the traced `max().item()` (u0 + 1) until here
        onnx_program.rename_axes({outputs[1].shape[1]: "S"})
    onnx_program.save(path, external_data=False)


def write_torch(program: torch.export.ExportedProgram, path: Path) -> None:
    torch.export.save(program, path)


def onnx_runner(path: Path) -> Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]:
    """Run the file with ONNX Runtime on the CPU, as a user of the export would."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return lambda inputs: session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})


def torch_runner(path: Path) -> Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]:
    """Run the file as `torch.export.load` gives it back."""
    program = torch.export.load(path).module()

    def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = program(*inputs)
        return [tensor.numpy() for tensor in (outputs if isinstance(outputs, tuple) else (outputs,))]

    return run


WRITERS = {"onnx": write_onnx, "torch": write_torch}
RUNNERS = {"onnx": onnx_runner, "torch": torch_runner}


def max_abs_differences(
    model: nn.Module, run: Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]], pool: bool
) -> dict[tuple[int, int, int], float]:
    """Max abs difference between the exported file and `reference_outputs`, over every output, per check shape."""
    differences = {}
    for seed, shape in enumerate(CHECK_SHAPES, start=1):
        inputs = example_inputs(shape, pool, seed)
        expected = reference_outputs(model, inputs)
        actual = run(inputs)
        if [a.shape for a in actual] != [e.shape for e in expected]:
            raise ExportError(
                f"the exported file gives shapes {[a.shape for a in actual]} for input {tuple(shape)}, "
                f"PyTorch {[e.shape for e in expected]}"
            )
        worst = np.max([np.abs(a.astype(np.float64) - e).max() for a, e in zip(actual, expected)])  # NaN propagates
        differences[shape] = float(np.nan_to_num(worst, nan=np.inf))
    return differences


def export_model(model: nn.Module, out: Path, fmt: str = "onnx", pool: bool = False) -> ExportReport:
    """Export a loaded FeatureExtractor (`load_model`) to `out`, check the file, keep it only if it matches.

    The file is written beside `out` under a hidden name and renamed into place after the check, so `out`
    never holds a half-written or unchecked export. Raises ExportError, also when ONNX is asked for and the
    `export` extra is missing.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    if fmt == "onnx":
        require_export_extra()
    if out.is_dir():
        raise ExportError(f"{out} is a folder; --out names the file to write")
    module = (PooledEmbedder if pool else DenseEmbedder)(model).eval()
    partial = out.with_name(f".{out.name}.partial{FORMATS[fmt]}")  # torch.export.load wants the .pt2 suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        with quiet_exporter():
            WRITERS[fmt](capture_program(module, example_inputs(EXAMPLE_SHAPE, pool, seed=0)), partial)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        differences = max_abs_differences(model, RUNNERS[fmt](partial), pool)
        check_s = time.perf_counter() - start
        worst_shape, worst = max(differences.items(), key=lambda item: item[1])
        if worst > TOLERANCE:
            raise ExportError(
                f"the exported file differs from PyTorch by {worst:.3g} (> {TOLERANCE:g}) on input "
                f"{'x'.join(map(str, worst_shape))}; nothing written to {out}"
            )
        size_bytes = partial.stat().st_size
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportReport(out, fmt, pool, export_s, check_s, size_bytes, differences)
