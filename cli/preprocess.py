"""`spix preprocess`: ADE20K-layout images -> Parquet shards of SLIC superpixels (on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail, progress
from spix.configs import build

S = "preprocess"


def preprocess(
    data_root: Path | None = flag(S, "data_root", "ADEChallengeData2016 folder."),
    out: str | None = flag(S, "out", "Shard folder (local path or s3://, gs:// URI)."),
    splits: list[str] | None = flag(S, "splits", "Splits to process; repeat the flag.", "--splits"),
    num_superpixels: int | None = flag(S, "num_superpixels", "SLIC superpixels asked per image (fewer on tiny images)."),
    compactness: float | None = flag(S, "compactness", "SLIC compactness: higher = more regular superpixels."),
    max_side: int | None = flag(S, "max_side", "Shrink images so the longest side is at most this (labels nearest-neighbour); 0 keeps sizes."),
    images_per_shard: int | None = flag(S, "images_per_shard", "Rows per Parquet shard."),
    num_cpus: int | None = flag(S, "num_cpus", "CPUs of the local Ray instance.", empty="all"),
    address: str | None = flag(S, "address", "Join a Ray cluster: 'auto' or HOST:PORT.", empty="a local Ray"),
    overwrite: bool | None = flag(S, "overwrite", "Rebuild every shard instead of resuming.", "--overwrite/--no-overwrite"),
    strict: bool | None = flag(S, "strict", "Exit 1 when any input was skipped.", "--strict/--no-strict"),
    config: Path | None = config_flag(S),
) -> None:
    """Compute SLIC superpixels and per-superpixel statistics for every image into Parquet shards.

    Resumable: a re-run with the same parameters skips finished shards. Broken inputs are skipped and
    listed under `errors` in OUT/manifest.json; the exit code is 0 unless nothing succeeded or --strict.
    """
    s = resolve(
        S, config,
        dict(data_root=data_root, out=out, splits=splits or None, num_superpixels=num_superpixels,
             compactness=compactness, max_side=max_side, images_per_shard=images_per_shard,
             num_cpus=num_cpus, address=address, overwrite=overwrite, strict=strict),
    )
    if s["num_superpixels"] < 1 or s["images_per_shard"] < 1 or s["max_side"] < 0:
        fail("--num-superpixels and --images-per-shard must be >= 1, --max-side >= 0")
    from spix.pipeline.dataset import DatasetLayoutError
    from spix.pipeline.preprocess import PreprocessParams, run_preprocess
    from spix.pipeline.shards import ShardFormatError

    try:
        with progress("preprocess") as (on_start, on_progress):
            manifest = run_preprocess(
                Path(s["data_root"]), str(s["out"]), tuple(s["splits"]), build(PreprocessParams, s), s["images_per_shard"],
                num_cpus=s["num_cpus"], address=s["address"], overwrite=s["overwrite"],
                on_start=on_start, on_progress=on_progress,
            )
    except (DatasetLayoutError, ShardFormatError) as exc:
        fail(str(exc))
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
