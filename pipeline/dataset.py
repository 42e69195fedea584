"""Find the images and annotations of an ADEChallengeData2016-style data root."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("training", "validation")
ADE_NUM_CLASSES = 150


class DatasetLayoutError(ValueError):
    """The data root is missing or not laid out like ADEChallengeData2016."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split and its annotation (which may be missing: then it is skipped later)."""

    image_id: str
    split: str
    image_path: str  # relative to the data root, '/'-separated
    label_path: str  # relative; the expected annotation path even when it does not exist


def layout_problems(root: Path, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """What keeps `root` from being an ADE data root; an empty list when it is one."""
    if not root.is_dir():
        return [f"{root} is not a directory"]
    problems = []
    for split in splits:
        for kind in ("images", "annotations"):
            if not (root / kind / split).is_dir():
                problems.append(f"missing folder {kind}/{split}")
    return problems


def check_layout(root: Path, splits: tuple[str, ...] = SPLITS) -> None:
    """Raise one readable DatasetLayoutError for a missing or wrongly laid-out data root."""
    problems = layout_problems(root, splits)
    if problems:
        raise DatasetLayoutError(
            f"{root} is not an ADEChallengeData2016 folder ({'; '.join(problems)}); "
            "expected images/<split>/*.jpg and annotations/<split>/*.png"
        )


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_split(root: Path, split: str) -> list[ImageRecord]:
    """Every image file of a split in a stable (sorted) order, paired with its annotation path."""
    image_dir = root / "images" / split
    records = []
    for path in sorted(p for p in image_dir.rglob("*") if p.is_file() and is_image_name(p.name)):
        rel = path.relative_to(root)
        stem_rel = path.relative_to(image_dir).with_suffix(".png")
        records.append(
            ImageRecord(
                image_id=path.relative_to(image_dir).with_suffix("").as_posix(),
                split=split,
                image_path=rel.as_posix(),
                label_path=(Path("annotations") / split / stem_rel).as_posix(),
            )
        )
    return records


def read_class_names(root: Path) -> list[str]:
    """Class names 1..K from objectInfo150.csv (or ADE's tab-separated objectInfo150.txt); 150 anonymous names without either."""
    for name, delimiter in (("objectInfo150.csv", ","), ("objectInfo150.txt", "\t")):
        info = root / name
        if info.is_file():
            with info.open(newline="", encoding="utf-8") as handle:
                rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(handle, delimiter=delimiter)]
            rows.sort(key=lambda row: int(row["Idx"]))
            return [row["Name"] for row in rows]
    return [f"class{i}" for i in range(1, ADE_NUM_CLASSES + 1)]
