"""`spix export RUN_OR_MODEL --out FILE`: the trained extractor as ONNX or a torch.export program, checked."""

from __future__ import annotations

import pickle
from pathlib import Path

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail

S = "export"


def export(
    run_or_model: Path = typer.Argument(..., metavar="RUN_OR_MODEL", help="Run folder of `spix train`, or its model.pt (model.json beside it)."),
    out: Path = typer.Option(..., help="File to write: FILE.onnx, or FILE.pt2 with --format torch."),
    format: str | None = flag(S, "format", "'onnx' (ONNX Runtime and friends) or 'torch' (a torch.export program, .pt2).", "--format"),
    pool: bool | None = flag(S, "pool", "Also take superpixel maps (N, H, W) int64 and give the superpixel means and pixel counts.", "--pool/--no-pool"),
    config: Path | None = config_flag(S),
) -> None:
    """Export the network with its input scaling: uint8 images (N, H, W, 3), any N, H, W -> embeddings
    (N, 128, H, W) float32.

    With --pool a second input, the superpixel maps (N, H, W) int64, and two more outputs: the superpixel
    mean embeddings (N, S, 128), S = largest id in the batch + 1, and the pixel count of every superpixel
    (N, S) int64 (0 marks a padding slot). Before the file is kept it is run (ONNX Runtime, or
    torch.export.load) on two image sizes that are not multiples of 4 and compared with PyTorch; a max abs
    difference above 1e-3 deletes it and exits 1. ONNX needs `pip install 'spix\\[export]'`.
    """
    s = resolve(S, config, dict(format=format, pool=pool))
    from spix.inference.export import TOLERANCE, ExportError, export_model
    from spix.trainer.checkpoint import CheckpointError, load_model

    try:
        model, _ = load_model(run_or_model)
    except CheckpointError as exc:
        fail(str(exc).splitlines()[0])
    except pickle.UnpicklingError:  # torch's message runs over many lines and is about weights_only
        fail(f"{run_or_model}: cannot load the model: its model.pt is not a state dict as `spix train` writes it")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        fail(f"{run_or_model}: cannot load the model ({type(exc).__name__}: {exc})")
    try:
        report = export_model(model, out, s["format"], s["pool"])
    except ExportError as exc:
        fail(str(exc))
    runtime = "ONNX Runtime" if report.format == "onnx" else "torch.export.load"
    for (n, h, w), difference in report.max_abs_diff.items():
        typer.echo(f"check {runtime} vs PyTorch, {n} x {h}x{w}: max abs diff {difference:.2e} (limit {TOLERANCE:g})")
    typer.echo(
        f"wrote {report.path} ({report.format}{', pooled' if report.pool else ''}, {report.size_bytes / 1e6:.2f} MB) | "
        f"export {report.export_s:.1f} s | check {report.check_s:.1f} s"
    )
