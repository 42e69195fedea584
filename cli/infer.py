"""`spix infer FOLDER`: embeddings, dominant-feature pictures and soft segmentations of a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail, progress

if TYPE_CHECKING:
    from spix.inference.run import InferSummary

S = "infer"


def infer(
    folder: Path = typer.Argument(..., help="Folder of images (jpg, jpeg, png, bmp, webp, tif, tiff), searched recursively."),
    checkpoint: str | None = flag(S, "checkpoint", "Run folder or model.pt.", empty="the newest finished run under runs/"),
    out: str | None = flag(S, "out", "Output folder.", empty="FOLDER_spix next to FOLDER"),
    outputs: str | None = flag(S, "outputs", "What to write per image, a comma list of embeddings, features, soft, inputs; embeddings alone is the cheapest run."),
    soft_layers: int | None = flag(S, "soft_layers", "Soft layers K of the soft segmentation."),
    dense: bool | None = flag(S, "dense", "Also write per-pixel embeddings, float16 .npy (large).", "--dense/--no-dense"),
    labels: bool | None = flag(S, "labels", "Also write label maps from the linear probe of `spix eval`.", "--labels/--no-labels"),
    classifier: str | None = flag(S, "classifier", "classifier.npz of `spix eval` (implies --labels).", empty="the newest in the model's run folder"),
    pca: str | None = flag(S, "pca", "Feature-picture colours: run (one principal basis for every image) or image (each its own)."),
    max_side: int | None = flag(S, "max_side", "Shrink larger images to this longest side; 0 keeps sizes."),
    batch_size: int | None = flag(S, "batch_size", "Images per model-actor call; same-size images share a forward pass."),
    num_superpixels: int | None = flag(S, "num_superpixels", "SLIC superpixels per image.", empty="as the model was trained"),
    compactness: float | None = flag(S, "compactness", "SLIC compactness.", empty="as the model was trained"),
    gpu: bool | None = flag(S, "gpu", "GPU model actors; auto: when Ray sees a GPU.", "--gpu/--no-gpu"),
    num_cpus: int | None = flag(S, "num_cpus", "CPUs of the local Ray instance.", empty="all"),
    address: str | None = flag(S, "address", "Join a Ray cluster: 'auto' or HOST:PORT; FOLDER and OUT on a shared filesystem.", empty="a local Ray"),
    overwrite: bool | None = flag(S, "overwrite", "Redo every image, finished or unreadable before (otherwise only what is missing).", "--overwrite/--no-overwrite"),
    config: Path | None = config_flag(S),
) -> None:
    """Per image: superpixel embeddings (Parquet), the dominant-features picture, K soft layers (PNG).

    Runs on Ray Data (decode + SLIC tasks, a model actor pool that also draws the pictures and soft layers on its
    device, writing tasks) and streams, so memory stays bounded on any number of images. Broken files are skipped
    and listed in OUT/errors.jsonl; a re-run only does what is missing. OUT/index.html shows every image beside
    its pictures.
    """
    s = resolve(
        S, config,
        dict(checkpoint=checkpoint, out=out, outputs=outputs, soft_layers=soft_layers, dense=dense, labels=labels,
             classifier=classifier, pca=pca, max_side=max_side, batch_size=batch_size, num_superpixels=num_superpixels,
             compactness=compactness, gpu=gpu, num_cpus=num_cpus, address=address, overwrite=overwrite),
    )
    check_arguments(s)
    from spix.configs import SettingsError, build
    from spix.inference.inputs import default_out
    from spix.inference.model_files import classifier_for_inference, file_sha1, model_for_inference
    from spix.inference.run import run_infer
    from spix.inference.settings import InferInputError, InferOptions, InferParams, parse_outputs
    from spix.trainer.checkpoint import CheckpointError

    try:
        kinds = parse_outputs(s["outputs"])
        weights, run_dir, meta = model_for_inference(s["checkpoint"])
        probe, class_names, classifier_path = None, None, ""
        if s["labels"] or s["classifier"]:
            classifier_path, probe, class_names = classifier_for_inference(s["classifier"], run_dir, meta)
        superpixels = {key: s[key] or meta.get("preprocess", {}).get(key) for key in ("num_superpixels", "compactness")}
        if None in superpixels.values():
            fail(f"{weights.with_name('model.json')} does not say how the model's superpixels were made; "
                 "pass --num-superpixels and --compactness")
        params = build(InferParams, {**s, **superpixels, "model_sha1": file_sha1(weights)})
        options = build(InferOptions, {
            **s, "checkpoint": str(weights), "outputs": kinds, "classifier": str(classifier_path),
            "gpu": None if s["gpu"] == "auto" else s["gpu"],
        })
        out_dir = Path(s["out"]) if s["out"] else default_out(folder)
    except (CheckpointError, InferInputError, SettingsError) as exc:
        fail(str(exc))
    try:
        with progress("infer") as (on_start, on_progress):
            summary = run_infer(folder, out_dir, params, options, meta, probe, class_names,
                                on_start=on_start, on_progress=on_progress)
    except (CheckpointError, InferInputError) as exc:
        fail(str(exc))
    report(summary, out_dir)


def check_arguments(s: dict[str, Any]) -> None:
    """One clear line for the first bad argument, before torch or Ray is imported."""
    from spix.inference.settings import PCA_MODES

    if s["soft_layers"] < 1 or s["batch_size"] < 1 or s["basis_images"] < 1:
        fail("--soft-layers, --batch-size and basis_images must be >= 1")
    if s["max_side"] < 0 or s["num_superpixels"] < 0 or s["compactness"] < 0 or s["num_cpus"] < 0:
        fail("--max-side, --num-superpixels, --compactness and --num-cpus must be >= 0")
    if s["pca"] not in PCA_MODES:
        fail(f"--pca must be one of {', '.join(PCA_MODES)}, not {s['pca']!r}")
    if s["gpu"] not in (True, False, "auto"):
        fail(f"gpu must be true, false or \"auto\", not {s['gpu']!r}")


def report(summary: InferSummary, out_dir: Path) -> None:
    """The summary on stdout (what was done, skipped, and where the time went), errors on stderr."""
    from spix.inference.job import STAGE_TIMES

    if not summary.ray_started:
        typer.echo(
            f"nothing to do: {summary.already_done} already done, {summary.broken_before} unreadable before and unchanged "
            f"(see {out_dir / 'errors.jsonl'}; --overwrite retries every image)"
        )
    else:
        typer.echo(
            f"images: {summary.inputs} | done: {summary.done} | already done: {summary.already_done} | "
            f"skipped: {summary.skipped} | failed: {summary.failed} | unreadable before: {summary.broken_before} | "
            f"seconds: {summary.seconds:.1f} (Ray start {summary.ray_start_s:.1f}, basis {summary.basis_s:.1f}) | "
            f"images/s: {summary.images_per_s:.2f} (model ready after {summary.model_ready_s:.1f} s, then "
            f"{summary.images_per_s_after_ready:.2f}/s) | nodes: {len(summary.nodes)}"
        )
        if summary.done:
            per_image = (f"{name.removesuffix('_s')} {summary.stage_s.get(name, 0.0) / summary.done:.3f}" for name in STAGE_TIMES)
            typer.echo("seconds per image: " + ", ".join(per_image))
    for error in summary.errors[:10]:
        typer.echo(f"  {error['status']} {error['path']}: {error['reason']}", err=True)
    if len(summary.errors) > 10:
        typer.echo(f"  ... {len(summary.errors) - 10} more in {out_dir}/errors.jsonl", err=True)
    typer.echo(f"gallery: {out_dir / 'index.html'}")
    if summary.done == 0 and summary.already_done == 0:
        fail("no image could be processed")
