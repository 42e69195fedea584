"""Shared fixtures: small synthetic datasets and one preprocessed shard folder per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_spix



@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training + 6 validation toy images (sides 96-160), 6 classes."""
    from spix.pipeline.toydata import make_toy_dataset

    root = tmp_path_factory.mktemp("toy") / "ADEChallengeData2016"
    make_toy_dataset(root, n_train=12, n_val=6, n_classes=6, seed=3, min_side=96, max_side=160)
    return root


@pytest.fixture(scope="session")
def toy_shards(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy dataset preprocessed once by the real CLI (150 superpixels, shards of 5)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    result = run_spix(
        "preprocess", "--data-root", str(toy_root), "--out", str(out),
        "--num-superpixels", "150", "--images-per-shard", "5", "--num-cpus", "2",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture()
def two_node_cluster():
    """A head and a worker node on this machine, one CPU each (ray.cluster_utils), shut down afterwards."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
