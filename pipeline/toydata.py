"""A synthetic dataset in the ADEChallengeData2016 layout whose classes differ by texture, not colour.

Every test and the demo run on it, so it must be fast, deterministic and honest: the label map is
exactly the partition that was painted, and a region's mean colour says nothing about its class
(both texture colours come from one palette shared by all classes and every texture covers about
half of its region with each colour).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_PREFIXES = {"training": "train", "validation": "val"}
MIN_REGIONS, MAX_REGIONS = 3, 8
UNLABELLED_FRACTION = 0.1
JPEG_QUALITY = (85, 92)
NOISE_SIGMA = 6.0  # pixel noise, in 0..255 units
BRIGHTNESS = (0.7, 1.2)  # per-region multiplicative jitter
ANGLE_JITTER_DEG = 4.0
PERIOD_JITTER = 0.1  # relative
WARP_KNOTS = 4  # the smooth warp field is bilinear between WARP_KNOTS x WARP_KNOTS random knots
WARP_AMPLITUDE = 0.15  # in units of the knot spacing: keeps the warp one-to-one, so cells stay blobs

# One palette for every class: a region picks two different entries (texture foreground/background).
PALETTE = np.array(
    [
        (200, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 50),
        (150, 60, 180), (40, 180, 190), (240, 130, 40), (120, 80, 40),
        (235, 235, 235), (30, 30, 30), (130, 130, 130), (230, 120, 170),
    ],
    dtype=np.float32,
)  # fmt: skip


@dataclass(frozen=True)
class TextureClass:
    """One class: a texture family, the angles (degrees) a region of it may take, and its period (pixels).

    A class is a set of angles closed under the horizontal mirror (theta -> 180 - theta): training flips
    images, and a mirrored region must stay in its class, as on a real dataset. A region picks one angle.
    """

    family: str
    angles: tuple[float, ...] = (0.0,)
    period: float = 10.0

    @property
    def name(self) -> str:
        if self.family in UNORIENTED:
            return f"{self.family}_p{self.period:g}"
        return f"{self.family}_{'+'.join(f'{a:g}' for a in self.angles)}deg_p{self.period:g}"


UNORIENTED = ("noise", "gradient", "rings", "hexdots", "squares", "blobs", "crosses")  # named without an angle
# Class k (label k+1) is CLASSES[k]. The first eight are eight different families. The rest differ from
# every class of their family by at least 15 degrees of orientation or by a factor 4 in period: training
# may rescale crops by as much as 0.5-1.5 (the widest scale range measured; `spix train`'s default is
# milder), so periods closer than 3x (with the 10% jitter, 3.7x) could be one class seen at two scales. Every class is mirror-symmetric (checked in tests/test_toydata.py).
CLASSES: tuple[TextureClass, ...] = (
    TextureClass("stripes", (0,), 10),
    TextureClass("checker", (0,), 12),
    TextureClass("dots", (0,), 12),
    TextureClass("noise", (0,), 2),
    TextureClass("gradient", (0,), 128),
    TextureClass("rings", (0,), 10),
    TextureClass("grid", (0,), 12),
    TextureClass("waves", (0,), 10),
    TextureClass("stripes", (90,), 10),
    TextureClass("stripes", (45, 135), 8),
    TextureClass("checker", (45,), 10),
    TextureClass("hexdots", (0,), 12),
    TextureClass("bricks", (0,), 14),
    TextureClass("stripes", (30, 150), 14),
    TextureClass("stripes", (60, 120), 14),
    TextureClass("squares", (0,), 12),
    TextureClass("zigzag", (90,), 12),
    TextureClass("blobs", (0,), 12),
    TextureClass("noise", (0,), 8),
    TextureClass("grid", (45,), 8),
    TextureClass("waves", (90,), 14),
    TextureClass("sawtooth", (90,), 12),
    TextureClass("crosses", (0,), 14),
    TextureClass("rings", (0,), 40),
)
MAX_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class ToySample:
    """One drawn image with everything that was drawn for it (tests recompute from these)."""

    rgb: np.ndarray  # H x W x 3 uint8, before JPEG compression
    labels: np.ndarray  # H x W uint8, 0 = unlabelled, 1..K
    regions: np.ndarray  # H x W int, region index 0..R-1
    region_labels: np.ndarray  # R, the label of each region (0 for unlabelled regions)
    region_textures: np.ndarray  # R, the class index 0..K-1 whose texture paints the region
    seeds: np.ndarray  # R x 2 (y, x) Voronoi seeds in warped coordinates
    displacement: np.ndarray  # 2 x H x W (dy, dx): pixel (y, x) belongs to the seed nearest (y+dy, x+dx)
    jpeg_quality: int


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of how many images the other split has."""
    return np.random.default_rng([seed, list(SPLIT_PREFIXES).index(split), index])


def _square(phase: np.ndarray) -> np.ndarray:
    """Square wave with duty cycle 1/2 (period 1)."""
    return (phase % 1.0 < 0.5).astype(np.float32)


def _block_noise(bu: np.ndarray, bv: np.ndarray, key: int) -> np.ndarray:
    """Random 0/1 per integer block (bu, bv), from a hash so any coordinate range works."""
    h = bu.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ bv.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= np.uint64(key)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return (h & np.uint64(1)).astype(np.float32)


def _stripes(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _square(u / p)


def _checker(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)


def _dots(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    du, dv = u / p % 1.0 - 0.5, v / p % 1.0 - 0.5
    return (du * du + dv * dv < 0.16).astype(np.float32)  # radius 0.4 p: pi * 0.16 ~ half the area


def _noise(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _block_noise(np.floor(u / p), np.floor(v / p), int(rng.integers(2**62)))


def _gradient(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - np.abs(2.0 * (u / p % 1.0) - 1.0)  # slow triangle ramp, locally flat


def _rings(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    cu, cv = rng.normal(u.mean(), 30.0), rng.normal(v.mean(), 30.0)
    return _square(np.hypot(u - cu, v - cv) / p)


def _grid(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    width = 1.0 - np.sqrt(0.5)  # lines cover 1 - (1 - width)^2 = half the area
    return ((u / p % 1.0 < width) | (v / p % 1.0 < width)).astype(np.float32)


def _waves(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _square((u + 0.5 * p * np.sin(2.0 * np.pi * v / (4.0 * p))) / p)


def _hexdots(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Dots on a hexagonal lattice: two rectangular lattices (p x p*sqrt3), one shifted by half a cell."""
    row = p * np.sqrt(3.0)
    nearest = np.minimum(
        np.hypot(u - p * np.round(u / p), v - row * np.round(v / row)),
        np.hypot(u - p * (np.floor(u / p) + 0.5), v - row * (np.floor(v / row) + 0.5)),
    )
    return (nearest < p * np.sqrt(np.sqrt(3.0) / (4.0 * np.pi))).astype(np.float32)  # half the area


def _bricks(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Mortar lines of bricks p long and p/2 high, every other row shifted by half a brick."""
    height, share = p / 2.0, 1.0 - np.sqrt(0.5)  # (1 - share)^2 = 1/2: mortar covers half the area
    shift = (np.floor(v / height) % 2) * p / 2.0
    return (((u + shift) % p < share * p) | (v % height < share * height)).astype(np.float32)


def _squares(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Concentric squares (rings in the Chebyshev distance) around a random centre."""
    cu, cv = rng.normal(u.mean(), 30.0), rng.normal(v.mean(), 30.0)
    return _square(np.maximum(np.abs(u - cu), np.abs(v - cv)) / p)


def _zigzag(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Stripes bent into a symmetric zigzag (chevrons) along their length."""
    triangle = 1.0 - np.abs(2.0 * (v / (2.0 * p) % 1.0) - 1.0)
    return _square((u + p * triangle) / p)


def _blobs(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Irregular blobs: random 0/1 values on a lattice of spacing p, interpolated bilinearly, cut at 1/2."""
    key = int(rng.integers(2**62))
    bu, bv = np.floor(u / p), np.floor(v / p)
    fu, fv = u / p - bu, v / p - bv
    corners = [_block_noise(bu + du, bv + dv, key) for du in (0, 1) for dv in (0, 1)]
    smooth = (corners[0] * (1 - fv) + corners[1] * fv) * (1 - fu) + (corners[2] * (1 - fv) + corners[3] * fv) * fu
    return (smooth > 0.5).astype(np.float32)


def _sawtooth(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """A ramp that rises across each band and drops at its edge."""
    return (u / p % 1.0).astype(np.float32)


def _crosses(u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """A plus sign in every p x p cell (arms 0.8 p long, 0.43 p wide: half the area)."""
    du, dv = np.abs(u / p % 1.0 - 0.5), np.abs(v / p % 1.0 - 0.5)
    return (((du < 0.213) & (dv < 0.4)) | ((dv < 0.213) & (du < 0.4))).astype(np.float32)


FAMILIES: dict[str, Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "stripes": _stripes,
    "checker": _checker,
    "dots": _dots,
    "noise": _noise,
    "gradient": _gradient,
    "rings": _rings,
    "grid": _grid,
    "waves": _waves,
    "hexdots": _hexdots,
    "bricks": _bricks,
    "squares": _squares,
    "zigzag": _zigzag,
    "blobs": _blobs,
    "sawtooth": _sawtooth,
    "crosses": _crosses,
}


def texture(tex: TextureClass, y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture value in [0, 1] at pixels (y, x), with a random phase and a small angle/period jitter."""
    if tex.family == "gradient":
        angle = rng.uniform(0.0, 360.0)  # the ramp direction is not part of the class
    elif tex.family in ("noise", "rings"):
        angle = 0.0
    else:
        # A single-angle class draws nothing here, so the first eight classes paint as they always did.
        base = tex.angles[0] if len(tex.angles) == 1 else float(rng.choice(tex.angles))
        angle = base + rng.uniform(-ANGLE_JITTER_DEG, ANGLE_JITTER_DEG)
    period = tex.period * rng.uniform(1.0 - PERIOD_JITTER, 1.0 + PERIOD_JITTER)
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    u = x * c + y * s + rng.uniform(0.0, 1000.0)
    v = -x * s + y * c + rng.uniform(0.0, 1000.0)
    return FAMILIES[tex.family](u, v, period, rng)


def _interpolation_matrix(n_out: int, n_knots: int) -> np.ndarray:
    """n_out x n_knots weights that linearly interpolate knots spread evenly over n_out samples."""
    pos = np.linspace(0.0, n_knots - 1.0, n_out)
    lo = np.minimum(pos.astype(int), n_knots - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n_out, n_knots), dtype=np.float32)
    rows = np.arange(n_out)
    weights[rows, lo] = 1.0 - frac
    weights[rows, lo + 1] = frac
    return weights


def smooth_displacement(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """2 x H x W bilinear random field, gentle enough (slope <= 0.3) that the warp is one-to-one."""
    wy, wx = _interpolation_matrix(height, WARP_KNOTS), _interpolation_matrix(width, WARP_KNOTS)
    spacing = min(height, width) / (WARP_KNOTS - 1)
    knots = rng.uniform(-1.0, 1.0, size=(2, WARP_KNOTS, WARP_KNOTS)).astype(np.float32)
    return WARP_AMPLITUDE * spacing * (wy @ knots @ wx.T)


def spread_seeds(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """n seed points (y, x), farthest-point picked among 3n random candidates so no cell is a sliver."""
    candidates = rng.uniform(0.0, 1.0, size=(3 * n, 2)) * np.array([height, width])
    chosen = [0]
    nearest = np.linalg.norm(candidates - candidates[0], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[chosen[-1]], axis=1))
    return candidates[chosen].astype(np.float32)


def voronoi_regions(seeds: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Index of the seed nearest to every displaced pixel position (a warped Voronoi partition)."""
    _, height, width = displacement.shape
    y = np.arange(height, dtype=np.float32)[:, None] + displacement[0]
    x = np.arange(width, dtype=np.float32)[None, :] + displacement[1]
    dist = (y[None] - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2
    return np.argmin(dist, axis=0)


def paint(rng: np.random.Generator, regions: np.ndarray, region_textures: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: each region textured in two palette colours, brightness jitter, pixel noise."""
    height, width = regions.shape
    flat = regions.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(len(region_textures) + 1))
    values = np.empty(flat.size, dtype=np.float32)  # texture value in [0, 1] per pixel
    for r, class_index in enumerate(region_textures):
        pixels = order[starts[r] : starts[r + 1]]
        y, x = np.divmod(pixels, width)
        values[pixels] = texture(CLASSES[class_index], y.astype(np.float32), x.astype(np.float32), rng)
    pairs = np.array([rng.choice(len(PALETTE), size=2, replace=False) for _ in region_textures])
    brightness = rng.uniform(*BRIGHTNESS, size=(len(region_textures), 1)).astype(np.float32)
    low, high = brightness * PALETTE[pairs[:, 0]], brightness * PALETTE[pairs[:, 1]]
    image = low[regions] + values.reshape(height, width, 1) * (high - low)[regions]
    image += NOISE_SIGMA * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def draw_sample(rng: np.random.Generator, n_classes: int, min_side: int, max_side: int) -> ToySample:
    """Draw one image: size, a warped Voronoi partition into 3-8 regions, their labels and pixels."""
    height, width = (int(s) for s in rng.integers(min_side, max_side + 1, size=2))
    n_regions = int(rng.integers(MIN_REGIONS, MAX_REGIONS + 1))
    seeds = spread_seeds(rng, n_regions, height, width)
    displacement = smooth_displacement(rng, height, width)
    regions = voronoi_regions(seeds, displacement)
    region_textures = rng.integers(0, n_classes, size=n_regions)
    unlabelled = rng.random(n_regions) < UNLABELLED_FRACTION
    region_labels = np.where(unlabelled, 0, region_textures + 1).astype(np.uint8)
    return ToySample(
        rgb=paint(rng, regions, region_textures),
        labels=region_labels[regions],
        regions=regions,
        region_labels=region_labels,
        region_textures=region_textures,
        seeds=seeds,
        displacement=displacement,
        jpeg_quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
    )


def _check_arguments(out: Path, n_train: int, n_val: int, n_classes: int, min_side: int, max_side: int) -> None:
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{MAX_CLASSES}, got {n_classes}")
    if n_train < 0 or n_val < 0:
        raise ValueError("image counts must not be negative")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")


def _write_class_table(path: Path, pixels: np.ndarray, images: dict[str, np.ndarray]) -> None:
    """objectInfo150.csv: pixel ratio and number of images per split that contain each class."""
    total = max(int(pixels.sum()), 1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Idx", "Ratio", "Train", "Val", "Name"])
        for k in range(len(pixels)):
            row = [k + 1, f"{pixels[k] / total:.6f}", int(images["training"][k]), int(images["validation"][k])]
            writer.writerow([*row, CLASSES[k].name])


def make_toy_dataset(
    out: Path,
    n_train: int,
    n_val: int,
    n_classes: int,
    seed: int,
    min_side: int,
    max_side: int,
) -> None:
    """Write OUT/images/<split>/ADE_<train|val>_%08d.jpg, matching annotations/*.png and objectInfo150.csv.

    Refuses an existing non-empty OUT, so it never overwrites a real dataset.
    """
    out = Path(out)
    _check_arguments(out, n_train, n_val, n_classes, min_side, max_side)
    pixels = np.zeros(n_classes, dtype=np.int64)
    images = {split: np.zeros(n_classes, dtype=np.int64) for split in SPLIT_PREFIXES}
    for split, count in (("training", n_train), ("validation", n_val)):
        image_dir, label_dir = out / "images" / split, out / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            sample = draw_sample(sample_rng(seed, split, index), n_classes, min_side, max_side)
            stem = f"ADE_{SPLIT_PREFIXES[split]}_{index + 1:08d}"
            # 4:4:4 chroma: 2 px textures told apart only by hue would be wiped out by 4:2:0
            Image.fromarray(sample.rgb).save(image_dir / f"{stem}.jpg", quality=sample.jpeg_quality, subsampling=0)
            Image.fromarray(sample.labels).save(label_dir / f"{stem}.png")
            counts = np.bincount(sample.labels.ravel(), minlength=n_classes + 1)[1:]
            pixels += counts
            images[split] += counts > 0
    _write_class_table(out / "objectInfo150.csv", pixels, images)
