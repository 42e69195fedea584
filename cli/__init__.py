"""The `spix` command line (Typer); each subcommand lives in its own module."""
