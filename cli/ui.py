"""Shared terminal helpers: one-line errors and the progress bar of a long job."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NoReturn

import typer
import typer.core
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Command(typer.core.TyperCommand):
    """A command whose usage line names its arguments the usual way, `spix infer [OPTIONS] FOLDER`
    (Typer writes a required argument as {folder})."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [p[1:-1].upper() if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


def fail(message: str) -> NoReturn:
    """Print one readable error line and exit 1 (no traceback for expected problems)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def progress(label: str, unit: str = "images") -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A bar on stderr (stdout keeps the summary) for a job that learns its total when it starts.

    Yields (on_start(total), on_advance(count)); the bar appears at on_start, so a job that finds nothing
    to do draws none. Rich writes colours and redraws only on a terminal.
    """
    bar = Progress(
        TextColumn(f"[bold]{label}[/bold] {unit}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(unit, total=None)

    def start(total: int) -> None:
        if total:
            bar.update(task, total=total)
            bar.start()

    try:
        yield start, lambda count: bar.advance(task, count)
    finally:
        bar.stop()
