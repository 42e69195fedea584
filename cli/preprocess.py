"""`spix preprocess`: ADE20K-layout images -> Parquet shards of SLIC superpixels (on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from spix.cli.config import resolve
from spix.cli.ui import fail, progress_bar


def preprocess(
    data_root: Path | None = typer.Option(None, help="ADEChallengeData2016 folder (default: data/ADEChallengeData2016)."),
    out: str | None = typer.Option(None, help="Shard folder (local path or s3://, gs:// URI) (default: data/shards)."),
    splits: list[str] | None = typer.Option(None, "--splits", help="Splits to process; repeat the flag (default: training, validation)."),
    num_superpixels: int | None = typer.Option(None, help="SLIC superpixels asked per image (fewer on tiny images) (default: 500)."),
    compactness: float | None = typer.Option(None, help="SLIC compactness: higher = more regular superpixels (default: 10)."),
    max_side: int | None = typer.Option(None, help="Shrink images so the longest side is at most this (labels nearest-neighbour); 0 keeps sizes (default: 0)."),
    images_per_shard: int | None = typer.Option(None, help="Rows per Parquet shard (default: 256)."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray instance; 0 = all (default: 0)."),
    address: str | None = typer.Option(None, help="Join a Ray cluster: 'auto' or HOST:PORT (default: local Ray)."),
    overwrite: bool | None = typer.Option(None, "--overwrite/--no-overwrite", help="Rebuild every shard instead of resuming."),
    strict: bool | None = typer.Option(None, "--strict/--no-strict", help="Exit 1 when any input was skipped."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with a \\[preprocess] section; flags override it."),
) -> None:
    """Compute SLIC superpixels and per-superpixel statistics for every image into Parquet shards.

    Resumable: a re-run with the same parameters skips finished shards. Broken inputs are skipped and
    listed under `errors` in OUT/manifest.json; the exit code is 0 unless nothing succeeded or --strict.
    """
    from spix.pipeline.dataset import DatasetLayoutError
    from spix.pipeline.preprocess import PreprocessParams, run_preprocess
    from spix.pipeline.shards import ShardFormatError

    s = resolve(
        "preprocess",
        config,
        dict(
            data_root=data_root, out=out, splits=splits or None, num_superpixels=num_superpixels,
            compactness=compactness, max_side=max_side, images_per_shard=images_per_shard,
            num_cpus=num_cpus, address=address, overwrite=overwrite, strict=strict,
        ),
    )
    if s["num_superpixels"] < 1 or s["images_per_shard"] < 1 or s["max_side"] < 0:
        fail("--num-superpixels and --images-per-shard must be >= 1, --max-side >= 0")
    params = PreprocessParams(
        num_superpixels=s["num_superpixels"], compactness=float(s["compactness"]), max_side=s["max_side"]
    )
    bar = progress_bar("preprocess")
    task = bar.add_task("images", total=None)

    def start(total: int) -> None:
        bar.update(task, total=total)
        bar.start()

    try:
        manifest = run_preprocess(
            Path(s["data_root"]), str(s["out"]), tuple(s["splits"]), params, s["images_per_shard"],
            num_cpus=s["num_cpus"], address=s["address"], overwrite=s["overwrite"],
            on_start=start, on_progress=lambda n: bar.advance(task, n),
        )
    except (DatasetLayoutError, ShardFormatError) as exc:
        fail(str(exc))
    finally:
        bar.stop()
    print_summary(manifest, s["out"])
    if manifest["images"] == 0:
        fail("no image could be preprocessed")
    if s["strict"] and manifest["errors"]:
        fail(f"--strict: {len(manifest['errors'])} inputs were skipped")


def print_summary(manifest: dict[str, Any], out: str) -> None:
    sp = manifest["superpixels_per_image"]
    t = manifest["timings"]
    per_split = ", ".join(f"{name} {v['images']}" for name, v in manifest["splits"].items())
    typer.echo(
        f"images: {manifest['images']} ({per_split}) | superpixels/image: {sp['mean']:.0f} "
        f"(min {sp['min']}, max {sp['max']}) | skipped: {len(manifest['errors'])} | "
        f"warnings: {len(manifest['warnings'])} | shards reused: {manifest['shards_reused']} | "
        f"seconds: {t['total_s']:.1f} (Ray start {t['ray_init_s']:.1f}) | "
        f"images/s: {t['images_per_s']:.1f}"
    )
    for error in manifest["errors"][:10]:
        typer.echo(f"  skipped {error['path']}: {error['reason']}", err=True)
    if len(manifest["errors"]) > 10:
        typer.echo(f"  ... {len(manifest['errors']) - 10} more in {out}/manifest.json", err=True)
