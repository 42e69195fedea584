"""spix: fast semantic feature extraction with superpixels.

The code lives in the design card's folders, mapped into this namespace by pyproject.toml:
`spix.pipeline` (pipeline/), `spix.trainer` (trainer/), `spix.cli` (cli/), `spix.configs` (configs/).
"""

__version__ = "0.1.0"
