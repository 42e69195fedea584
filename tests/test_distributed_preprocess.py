"""Preprocessing across a 2-node Ray cluster, and surviving a SLIC crash inside a worker."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import run_spix
from spix.pipeline.shards import iter_samples, read_manifest


@pytest.mark.slow
def test_preprocess_runs_on_both_nodes(two_node_cluster, toy_root: Path, toy_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = run_spix("preprocess", "--data-root", str(toy_root), "--out", str(out), "--num-superpixels", "150",
                      "--images-per-shard", "2", "--address", two_node_cluster.address)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert len(manifest["nodes"]) == 2, f"shards ran on {manifest['nodes']}"
    # Complete and identical to the single-machine run: SLIC is deterministic per image.
    for split in ("training", "validation"):
        cluster_run = {s.image_id: s for s in iter_samples(str(out), split)}
        local_run = {s.image_id: s for s in iter_samples(str(toy_shards), split)}
        assert cluster_run.keys() == local_run.keys()
        for image_id, sample in cluster_run.items():
            np.testing.assert_array_equal(sample.superpixels, local_run[image_id].superpixels)
            np.testing.assert_array_equal(sample.sp_label, local_run[image_id].sp_label)


FAKE_FAST_SLIC = '''
"""A stand-in for fast-slic that segfaults on 97-pixel-wide images, like fast-slic on some systems."""
import ctypes, numpy as np

class Slic:
    def __init__(self, num_components=400, compactness=10, num_threads=-1, **kwargs):
        self.num_components = num_components

    def iterate(self, image):
        if image.shape[1] == 97:
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        height, width = image.shape[:2]
        rows = np.arange(height)[:, None] * 4 // height
        return (rows * 4 + np.arange(width)[None, :] * 4 // width).astype(np.int16)
'''


@pytest.mark.slow
def test_a_slic_crash_costs_one_image_not_the_run(tmp_path: Path) -> None:
    from PIL import Image

    fake = tmp_path / "fake" / "fast_slic"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(FAKE_FAST_SLIC))
    (fake / "avx2.py").write_text("from fast_slic import Slic as SlicAvx2\n")
    root = tmp_path / "ADE"
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True)
    for index, width in enumerate([60, 97, 70, 80]):
        rgb = rng.integers(0, 255, (50, width, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / "training" / f"im{index}.png")
        Image.fromarray(np.ones((50, width), np.uint8)).save(root / "annotations" / "training" / f"im{index}.png")
    out = tmp_path / "shards"
    result = run_spix("preprocess", "--data-root", str(root), "--out", str(out), "--images-per-shard", "4",
                      "--num-cpus", "2", env={"PYTHONPATH": str(tmp_path / "fake")})
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert [e["path"] for e in manifest["errors"]] == ["images/training/im1.png"]
    assert "crashed" in manifest["errors"][0]["reason"]
    assert sorted(s.image_id for s in iter_samples(str(out), "training")) == ["im0", "im2", "im3"]
