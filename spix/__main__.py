from spix.cli.main import app

app()
