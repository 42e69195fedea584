"""Shared terminal helpers: one-line errors and progress bars."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def fail(message: str) -> NoReturn:
    """Print one readable error line and exit 1 (no traceback for expected problems)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def progress_bar(label: str) -> Progress:
    """A progress bar on stderr, so stdout keeps only the summary."""
    return Progress(
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
