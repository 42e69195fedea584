"""`spix download ade20k`: fetch, verify and unpack ADE20K where `spix preprocess` looks for it."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from spix.cli.ui import fail
from spix.pipeline.download import ADE20K, DownloadError, archive_urls, fetch_and_unpack

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def download() -> None:
    """Download a data set and unpack it where `spix preprocess` looks for it."""


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise typer.BadParameter("expected 64 hexadecimal digits")
    return value


def _bytes_bar(console: Console) -> Progress:
    """A byte-counting bar on stderr that vanishes when done; logs and pipes get the notes only."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@app.command("ade20k")
def ade20k(
    dest: Path = typer.Option(
        Path("data"), "--dest", help="Folder that receives ADEChallengeData2016/ (and release_test/)."
    ),
    with_test: bool = typer.Option(False, "--with-test", help="Also fetch release_test.zip (test images, no labels)."),
    url: str | None = typer.Option(
        None,
        "--url",
        envvar="SPIX_ADE20K_URL",
        help="Address of ADEChallengeData2016.zip instead of the official one; ending in '/' it names the folder "
        "holding it. release_test.zip is taken from next to it.",
    ),
    sha256: str | None = typer.Option(
        None, "--sha256", callback=_check_sha256, help="Expected sha256 of ADEChallengeData2016.zip (checked if given)."
    ),
    retries: int = typer.Option(
        5, "--retries", min=0, help="Retries of a dropped connection, with exponential backoff."
    ),
    timeout: float = typer.Option(
        60.0, "--timeout", min=1.0, help="Seconds without data before a connection counts as dropped."
    ),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the .zip after unpacking it."),
) -> None:
    """Download ADEChallengeData2016.zip, resume it if interrupted, verify it and unpack it into DEST.

    Run it again after an interruption to resume DEST/<name>.zip.part; with the data in place it does nothing.
    """
    console = Console(stderr=True)
    try:
        for archive, address in archive_urls(url, with_test):
            with _bytes_bar(console) as bar:
                task = bar.add_task(archive.file_name, total=None)
                fetched = fetch_and_unpack(
                    archive,
                    address,
                    dest,
                    sha256=sha256 if archive is ADE20K else None,
                    retries=retries,
                    timeout_s=timeout,
                    keep_archive=keep_archive,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    note=typer.echo,
                )
            where = dest / archive.folder
            typer.echo(f"unpacked {archive.file_name} into {where}" if fetched else f"{where} is already there")
    except (DownloadError, OSError) as exc:  # OSError: DEST not writable, disk full, ...
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume the download", err=True)
        raise typer.Exit(130) from None
