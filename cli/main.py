"""The `spix` Typer app: one subcommand per stage of the data flow."""

from __future__ import annotations

import typer

from spix import __version__
from spix.cli import download, evaluate, export, infer, preprocess, toydata, train

app = typer.Typer(
    help="spix: semantic per-pixel embeddings trained on SLIC superpixels (ADE20K, Ray, PyTorch).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Stages: make-toy-data -> preprocess -> train -> infer / eval."""


app.command("make-toy-data")(toydata.make_toy_data)
app.command("preprocess")(preprocess.preprocess)
app.add_typer(download.app, name="download")
app.command("train")(train.train)
app.command("infer")(infer.infer)
app.command("eval")(evaluate.evaluate)
app.command("export")(export.export)
