"""`spix infer FOLDER`: embeddings, dominant-feature pictures and soft segmentations of a folder of images."""

from __future__ import annotations

from pathlib import Path

import typer

from spix.cli.config import resolve
from spix.cli.ui import fail, progress_bar


def infer(
    folder: Path = typer.Argument(..., help="Folder of images (jpg, jpeg, png, bmp, webp, tif, tiff), searched recursively."),
    checkpoint: str | None = typer.Option(None, help="Run folder or model.pt (default: the newest finished run under runs/)."),
    out: Path | None = typer.Option(None, help="Output folder (default: FOLDER_spix next to FOLDER)."),
    soft_layers: int | None = typer.Option(None, help="Soft layers K of the soft segmentation (default: 5)."),
    dense: bool | None = typer.Option(None, "--dense/--no-dense", help="Also write per-pixel embeddings, float16 .npy (large)."),
    labels: bool | None = typer.Option(None, "--labels/--no-labels", help="Also write label maps from the linear probe of `spix eval`."),
    classifier: Path | None = typer.Option(None, help="classifier.npz of `spix eval` (implies --labels; default: the newest in the run folder)."),
    max_side: int | None = typer.Option(None, help="Shrink larger images to this longest side; 0 keeps sizes (default: 1024)."),
    batch_size: int | None = typer.Option(None, help="Images per model-actor call; same-size images share a forward pass on GPU (default: 4)."),
    num_superpixels: int | None = typer.Option(None, help="SLIC superpixels per image (default: as the model was trained)."),
    compactness: float | None = typer.Option(None, help="SLIC compactness (default: as the model was trained)."),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="GPU model actors (default: when Ray sees a GPU)."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray instance; 0 = all (default: 0)."),
    address: str | None = typer.Option(None, help="Join a Ray cluster: 'auto' or HOST:PORT; FOLDER and OUT must be on a shared filesystem."),
    overwrite: bool | None = typer.Option(None, "--overwrite/--no-overwrite", help="Redo images whose outputs exist (default: skip them)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with an \\[infer] section; flags override it."),
) -> None:
    """Per image: superpixel embeddings (Parquet), the dominant-features picture, K soft layers (PNG + NPZ).

    Runs on Ray Data (decode + SLIC tasks, a model actor pool, post-processing tasks) and streams, so memory
    stays bounded on any number of images. Broken files are skipped and listed in OUT/errors.jsonl; a
    re-run only does what is missing. OUT/index.html shows every image beside its pictures.
    """
    from spix.pipeline.infer import (
        InferInputError,
        InferOptions,
        InferParams,
        default_out,
        file_sha1,
        find_classifier,
        load_classifier,
        resolve_checkpoint,
        run_infer,
    )
    from spix.trainer.checkpoint import CheckpointError

    s = resolve(
        "infer", config,
        dict(checkpoint=checkpoint, out=str(out) if out else None, soft_layers=soft_layers, dense=dense, labels=labels,
             classifier=str(classifier) if classifier else None, max_side=max_side, batch_size=batch_size,
             num_superpixels=num_superpixels, compactness=compactness, gpu=gpu, num_cpus=num_cpus, address=address,
             overwrite=overwrite),
    )
    if s["soft_layers"] < 1 or s["batch_size"] < 1 or s["max_side"] < 0 or s["num_superpixels"] < 0:
        fail("--soft-layers and --batch-size must be >= 1, --max-side and --num-superpixels >= 0")
    try:
        weights, meta = resolve_checkpoint(s["checkpoint"])
        probe, class_names, classifier_path = None, None, ""
        if s["labels"] or s["classifier"]:
            classifier_path = Path(s["classifier"]) if s["classifier"] else find_classifier(weights)
            probe, class_names = load_classifier(classifier_path, meta)
        trained = meta.get("preprocess", {})
        params = InferParams(
            model_sha1=file_sha1(weights),
            num_superpixels=s["num_superpixels"] or int(trained.get("num_superpixels", 500)),
            compactness=float(s["compactness"] or trained.get("compactness", 10.0)),
            max_side=s["max_side"], soft_layers=s["soft_layers"], smooth_radius=s["smooth_radius"],
            feature_eps=float(s["feature_eps"]), layer_eps=float(s["layer_eps"]), seed=s["seed"],
        )
        options = InferOptions(
            checkpoint=str(weights), dense=s["dense"], classifier=str(classifier_path), batch_size=s["batch_size"],
            gpu=None if s["gpu"] == "auto" else bool(s["gpu"]), address=s["address"], num_cpus=s["num_cpus"],
            overwrite=s["overwrite"],
        )
        out_dir = Path(s["out"]) if s["out"] else default_out(folder)
    except (CheckpointError, InferInputError) as exc:
        fail(str(exc))
    bar = progress_bar("infer")
    task = bar.add_task("images", total=None)

    def start(total: int) -> None:
        bar.update(task, total=total)
        bar.start()

    try:
        summary = run_infer(folder, out_dir, params, options, probe, class_names,
                            on_start=start, on_progress=lambda n: bar.advance(task, n))
    except InferInputError as exc:
        fail(str(exc))
    finally:
        bar.stop()
    typer.echo(
        f"images: {summary.inputs} | done: {summary.done} | already done: {summary.already_done} | "
        f"skipped: {summary.skipped} | failed: {summary.failed} | seconds: {summary.seconds:.1f} "
        f"(Ray start {summary.ray_start_s:.1f}) | images/s: {summary.images_per_s:.2f} | nodes: {len(summary.nodes)}"
    )
    for error in summary.errors[:10]:
        typer.echo(f"  {error['status']} {error['path']}: {error['reason']}", err=True)
    if len(summary.errors) > 10:
        typer.echo(f"  ... {len(summary.errors) - 10} more in {out_dir}/errors.jsonl", err=True)
    typer.echo(f"gallery: {out_dir / 'index.html'}")
    if summary.done == 0 and summary.already_done == 0:
        fail("no image could be processed")
