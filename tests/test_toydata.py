"""The synthetic ADE-layout dataset: exact layout, determinism, exact label maps, texture-not-colour."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spix.pipeline.toydata import CLASSES, MAX_REGIONS, MIN_REGIONS, TextureClass, draw_sample, make_toy_dataset, sample_rng, texture

K = 8
SMALL = dict(n_train=14, n_val=6, n_classes=K, seed=3, min_side=64, max_side=128)


def read_split(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb, labels) of every image of a split, paired by file stem."""
    pairs = []
    for image_path in sorted((root / "images" / split).glob("*.jpg")):
        label_path = root / "annotations" / split / f"{image_path.stem}.png"
        with Image.open(image_path) as image, Image.open(label_path) as label:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert label.format == "PNG" and label.mode == "L"
            pairs.append((np.asarray(image), np.asarray(label)))
    return pairs


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "ADEChallengeData2016"
    make_toy_dataset(root, **SMALL)
    return root


def test_layout_matches_ade(small: Path) -> None:
    for split, prefix, count in (("training", "train", 14), ("validation", "val", 6)):
        images = sorted(p.name for p in (small / "images" / split).iterdir())
        labels = sorted(p.name for p in (small / "annotations" / split).iterdir())
        assert images == [f"ADE_{prefix}_{i:08d}.jpg" for i in range(1, count + 1)]
        assert labels == [name.replace(".jpg", ".png") for name in images]
        for rgb, label in read_split(small, split):
            assert rgb.shape[:2] == label.shape
            assert all(64 <= side <= 128 for side in label.shape)
            assert label.max() <= K
    with (small / "objectInfo150.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Idx", "Ratio", "Train", "Val", "Name"]
    assert [int(r["Idx"]) for r in rows] == list(range(1, K + 1))
    assert len({r["Name"] for r in rows}) == K
    train = read_split(small, "training")
    present = [sum(bool((label == k).any()) for _, label in train) for k in range(1, K + 1)]
    assert [int(r["Train"]) for r in rows] == present
    assert sum(float(r["Ratio"]) for r in rows) == pytest.approx(1.0, abs=1e-4)


def test_same_seed_same_bytes_other_seed_differs(small: Path, tmp_path: Path) -> None:
    def file_bytes(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    make_toy_dataset(tmp_path / "again", **SMALL)
    make_toy_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert file_bytes(tmp_path / "again") == file_bytes(small)
    other = file_bytes(tmp_path / "other")
    assert other.keys() == file_bytes(small).keys()
    assert all(other[name] != data for name, data in file_bytes(small).items() if name.endswith((".jpg", ".png")))


def test_refuses_to_write_into_a_non_empty_folder(small: Path) -> None:
    with pytest.raises(FileExistsError):
        make_toy_dataset(small, **SMALL)


def brute_force_regions(seeds: np.ndarray, displacement: np.ndarray, points: np.ndarray) -> list[int]:
    """Nearest seed of each displaced pixel, one pixel at a time (independent of the vectorised code)."""
    nearest = []
    for y, x in points:
        py, px = y + displacement[0, y, x], x + displacement[1, y, x]
        dists = [(py - sy) ** 2 + (px - sx) ** 2 for sy, sx in seeds]
        nearest.append(int(np.argmin(dists)))
    return nearest


def block_means(rgb: np.ndarray, block: int = 4) -> np.ndarray:
    """Means over block x block tiles: what JPEG keeps almost exactly."""
    h, w = rgb.shape[0] // block * block, rgb.shape[1] // block * block
    return rgb[:h, :w].astype(float).reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))


def test_label_maps_are_the_drawn_partition(small: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for index, (rgb, label) in enumerate(read_split(small, split)):
            sample = draw_sample(sample_rng(SMALL["seed"], split, index), K, 64, 128)
            # the PNG holds exactly the drawn labels, and the JPEG is the drawn picture: its 4x4 block
            # means stay within ~1 level (measured max 1.1), a flipped or other image is 40+ away
            np.testing.assert_array_equal(label, sample.labels)
            assert np.abs(block_means(rgb) - block_means(sample.rgb)).mean() < 3.0
            # the labels are the region labels of a warped Voronoi partition into 3-8 regions
            n_regions = len(sample.seeds)
            assert MIN_REGIONS <= n_regions <= MAX_REGIONS
            np.testing.assert_array_equal(sample.labels, sample.region_labels[sample.regions])
            points = rng.integers(0, label.shape, size=(200, 2))
            assert brute_force_regions(sample.seeds, sample.displacement, points) == list(
                sample.regions[points[:, 0], points[:, 1]]
            )
            # every region is one blob holding its seed's neighbourhood, not scattered pixels
            for r in range(n_regions):
                blobs, _ = ndimage.label(sample.regions == r)
                largest = np.bincount(blobs.ravel())[1:].max()
                assert largest >= 0.99 * (sample.regions == r).sum()


def interior(label: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels at least `margin` away from any label boundary (so features see one texture)."""
    size = 2 * margin + 1
    return ndimage.maximum_filter(label, size) == ndimage.minimum_filter(label, size)


def region_features(rgb: np.ndarray, label: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per labelled region of one image: class, mean RGB, and contrast-free texture statistics.

    Texture: gradient orientation moments (doubled and quadrupled angle) and the share of the
    region's variance in three difference-of-Gaussian frequency bands, all divided by the region's
    own energy so that colour and contrast drop out.
    """
    gray = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    gy, gx = np.gradient(gray)
    g2 = gx * gx + gy * gy + 1e-6
    blurred = [gray] + [ndimage.gaussian_filter(gray, sigma) for sigma in (1.0, 2.0, 4.0)]
    per_pixel = np.stack(
        [
            g2,
            gx * gx - gy * gy,
            2 * gx * gy,
            ((gx * gx - gy * gy) ** 2 - 4 * gx * gx * gy * gy) / g2,
            4 * gx * gy * (gx * gx - gy * gy) / g2,
            *((fine - coarse) ** 2 for fine, coarse in zip(blurred, blurred[1:])),
        ],
        axis=-1,
    )
    keep = interior(label) & (label > 0)
    classes, colours, textures = [], [], []
    for k in np.unique(label[keep]):
        mask = keep & (label == k)
        if mask.sum() < 50:
            continue
        stats = per_pixel[mask].mean(axis=0)
        orientation = stats[1:5] / stats[0]
        bands = np.log(stats[5:] / gray[mask].var())
        textures.append([*orientation, *bands])
        colours.append(rgb[mask].mean(axis=0))
        classes.append(int(k))
    return classes, np.array(colours).reshape(-1, 3), np.array(textures).reshape(-1, 7)


def nearest_centroid_accuracy(features: np.ndarray, classes: np.ndarray, groups: np.ndarray) -> float:
    """Mean accuracy of a nearest-centroid classifier, 5-fold, folds split by image."""
    model = make_pipeline(StandardScaler(), NearestCentroid())
    return float(cross_val_score(model, features, classes, groups=groups, cv=GroupKFold(5)).mean())


def test_classes_differ_by_texture_not_by_colour(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    make_toy_dataset(root, n_train=60, n_val=0, n_classes=K, seed=11, min_side=96, max_side=128)
    classes, colours, textures, groups = [], [], [], []
    for image_index, (rgb, label) in enumerate(read_split(root, "training")):
        c, col, tex = region_features(rgb, label)
        classes += c
        colours.append(col)
        textures.append(tex)
        groups += [image_index] * len(c)
    classes, groups = np.array(classes), np.array(groups)
    colour_acc = nearest_centroid_accuracy(np.concatenate(colours), classes, groups)
    texture_acc = nearest_centroid_accuracy(np.concatenate(textures), classes, groups)
    print(f"regions={len(classes)} colour accuracy={colour_acc:.3f} texture accuracy={texture_acc:.3f}")
    # Measured over seeds 1, 2, 3, 11: colour 0.11-0.16 (chance 1/K = 0.125; one standard error at
    # ~230 regions is 0.022, so 2/K is 5 errors above chance); texture 0.69-0.76.
    assert colour_acc < 2.0 / K
    assert texture_acc > 0.5


# Rotation by which each oriented family maps onto itself: stripes, waves, zigzags and bricks after a
# half turn, checkers and grids after a quarter turn, a sawtooth only after a full turn (its ramp has a
# direction). A horizontal mirror maps orientation a to 180 - a.
SYMMETRY_DEG = {"stripes": 180, "waves": 180, "zigzag": 180, "bricks": 180, "checker": 90, "grid": 90, "sawtooth": 360, "dots": 90}


def orientations(texture_class: TextureClass) -> set[float]:
    period = SYMMETRY_DEG.get(texture_class.family)
    return {0.0} if period is None else {a % period for a in texture_class.angles}


def test_every_class_survives_the_training_mirror() -> None:
    """Training flips crops horizontally: a mirrored region must still be a region of its class. (Families
    without an orientation are mirror-symmetric by construction: random blocks and blobs, gradients in a
    random direction, rings, squares, hexagonal dots and crosses.)"""
    for texture_class in (c for c in CLASSES if c.family in SYMMETRY_DEG):
        period = SYMMETRY_DEG[texture_class.family]
        mirrored = {(180 - a) % period for a in texture_class.angles}
        assert mirrored == orientations(texture_class), texture_class.name


def test_classes_of_one_family_differ_by_more_than_the_training_rescale() -> None:
    """Crops are rescaled by 0.5-1.5 (3x) and periods jitter by 10%: two classes of one family at an
    orientation they share must differ in period by more than 3 x 1.1 / 0.9 = 3.7x."""
    for i, first in enumerate(CLASSES):
        for second in CLASSES[i + 1 :]:
            if first.family == second.family and orientations(first) & orientations(second):
                ratio = max(first.period, second.period) / min(first.period, second.period)
                assert ratio >= 3.7, (first.name, second.name)
    assert len({c.name for c in CLASSES}) == len(CLASSES)


@pytest.mark.parametrize("index", range(len(CLASSES)))
def test_every_texture_paints_about_half_of_a_region_in_each_colour(index: int) -> None:
    """The two colours of a region must cover it about equally, or mean colour would leak the class."""
    y, x = np.mgrid[0:160, 0:160].astype(np.float32)
    shares = [texture(CLASSES[index], y, x, np.random.default_rng(seed)).mean() for seed in range(6)]
    assert 0.4 <= np.mean(shares) <= 0.6, (CLASSES[index].name, shares)
