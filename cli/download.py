"""`spix download ade20k`: fetch, verify and unpack ADE20K where `spix preprocess` looks for it."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import Command, fail

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
S = "download"


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


@app.command("ade20k", cls=Command)
def ade20k(
    dest: Path | None = flag(S, "dest", "Folder that receives ADEChallengeData2016/ (and release_test/)."),
    with_test: bool | None = flag(S, "with_test", "Also fetch release_test.zip (test images, no labels).", "--with-test/--without-test"),
    url: str | None = flag(
        S, "url", "Address of ADEChallengeData2016.zip instead of the official one; ending in '/' it names the folder "
        "holding it. release_test.zip is taken from next to it. Also SPIX_ADE20K_URL.", envvar="SPIX_ADE20K_URL",
        empty="the official address",
    ),
    sha256: str | None = flag(S, "sha256", "Expected sha256 of ADEChallengeData2016.zip.", callback=_check_sha256, empty="no check"),
    retries: int | None = flag(S, "retries", "Retries of a dropped connection, with exponential backoff.", min=0),
    timeout: float | None = flag(S, "timeout", "Seconds without data before a connection counts as dropped.", min=1.0),
    keep_archive: bool | None = flag(S, "keep_archive", "Keep the .zip after unpacking it.", "--keep-archive/--delete-archive"),
    config: Path | None = config_flag(S),
) -> None:
    """Download ADEChallengeData2016.zip, resume it if interrupted, verify it and unpack it into DEST.

    Run it again after an interruption to resume DEST/<name>.zip.part; with the data in place it does nothing.
    """
    s = resolve(
        S, config,
        dict(dest=dest, with_test=with_test, url=url, sha256=sha256, retries=retries, timeout=timeout,
             keep_archive=keep_archive),
    )
    from spix.pipeline.download import ADE20K, DownloadError, archive_urls, fetch_and_unpack

    console = Console(stderr=True)
    destination = Path(s["dest"])
    try:
        for archive, address in archive_urls(s["url"] or None, s["with_test"]):
            with _bytes_bar(console) as bar:
                task = bar.add_task(archive.file_name, total=None)
                fetched = fetch_and_unpack(
                    archive,
                    address,
                    destination,
                    sha256=s["sha256"] or None if archive is ADE20K else None,
                    retries=s["retries"],
                    timeout_s=s["timeout"],
                    keep_archive=s["keep_archive"],
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    note=typer.echo,
                )
            where = destination / archive.folder
            typer.echo(f"unpacked {archive.file_name} into {where}" if fetched else f"{where} is already there")
    except (DownloadError, OSError) as exc:  # OSError: DEST not writable, disk full, ...
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume the download", err=True)
        raise typer.Exit(130) from None
