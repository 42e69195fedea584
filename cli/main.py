"""The `spix` Typer app: one subcommand per stage of the data flow, and the entry point `run`."""

from __future__ import annotations

import os
import sys

import typer

from spix import __version__
from spix.cli import download, evaluate, export, infer, preprocess, search, toydata, train
from spix.cli.ui import Command
from spix.pipeline.quiet import VERBOSE_ENV

app = typer.Typer(
    help="spix: semantic per-pixel embeddings trained on SLIC superpixels (ADE20K, Ray, PyTorch).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's plain help: paragraphs reflow to the terminal, flags read --x / --no-x
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Show every line Ray prints (by default two known-harmless ones are hidden)."),
) -> None:
    """Stages: make-toy-data -> preprocess -> train -> eval / infer / export / search."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


app.command("make-toy-data", cls=Command)(toydata.make_toy_data)
app.command("preprocess", cls=Command)(preprocess.preprocess)
app.add_typer(download.app, name="download")
app.command("train", cls=Command)(train.train)
app.command("infer", cls=Command)(infer.infer)
app.command("eval", cls=Command)(evaluate.evaluate)
app.command("export", cls=Command)(export.export)
app.command("search", cls=Command)(search.search)


def run() -> None:
    """The `spix` command: the app, with Click's usage errors in the one-line style of every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # Click's usage errors: bad values, unknown options, no arguments
        context = getattr(exc, "ctx", None)
        if context is not None and exc.format_message() == context.get_help():  # a bare `spix` or `spix download`
            typer.echo(context.get_help())
            sys.exit(0)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        typer.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
