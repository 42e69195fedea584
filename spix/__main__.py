from spix.cli.main import run

run()
