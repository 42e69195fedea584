"""The folders map under one `spix` namespace: editable and regular installs both import, and no bare `cli`;
the folders are layers (pipeline <- trainer <- inference <- cli): no module imports a layer above its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spix.cli
import spix.inference
import spix.pipeline
import spix.trainer

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib.util, spix.cli.main, spix.pipeline.shards, spix.trainer, spix.inference.run, spix.configs; "
    "from spix.configs import default_config; assert default_config()['preprocess']['num_superpixels'] == 500; "
    "assert importlib.util.find_spec('cli') is None and importlib.util.find_spec('pipeline') is None; "
    "print(spix.cli.main.__file__)"
)


def test_editable_install_maps_the_design_card_folders() -> None:
    assert Path(spix.cli.__file__).parent == REPO / "cli"
    assert Path(spix.pipeline.__file__).parent == REPO / "pipeline"
    assert Path(spix.trainer.__file__).parent == REPO / "trainer"
    assert Path(spix.inference.__file__).parent == REPO / "inference"


LAYERS = ("pipeline", "trainer", "inference", "cli")


def spix_imports(path: Path) -> set[str]:
    """The spix layers a source file imports (at any depth of the file: lazy imports count too)."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        layers.update(name.split(".")[1] for name in names if name.startswith("spix.") and name.count(".") >= 1)
    return layers


def test_no_layer_imports_a_layer_above_its_own() -> None:
    for rank, layer in enumerate(LAYERS):
        above = set(LAYERS[rank + 1 :])
        for path in sorted((REPO / layer).glob("*.py")):
            assert not spix_imports(path) & above, f"{path.relative_to(REPO)} imports {sorted(spix_imports(path) & above)}"


@pytest.mark.slow
def test_regular_install_imports_from_site_packages(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", "bin"))) == ["spix"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(target / "spix" / "cli"))
