"""Draws docs/demo.jpg, the README's first picture, from what `make demo` leaves behind.

For the first validation images of the demo: the input, the dominant-features picture, the soft
segmentation, the label map of the linear probe and the ground truth, side by side, each column titled.

Run after `make demo`: python docs/demo_pictures.py [--infer demo/infer] [--data demo/ADEChallengeData2016] [--rows 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spix.inference.pictures import label_palette

COLUMNS = (("inputs", ".jpg", "input"), ("features", ".png", "dominant features"),
           ("soft", ".png", "soft segmentation"), ("labels", ".png", "labels (linear probe)"))
SIDE = 200  # pixels per tile
TITLE = 22  # pixels of the title band


def ground_truth(data: Path, stem: str) -> Image.Image:
    """The annotation of a validation image, coloured with the palette the label maps use."""
    labels = np.asarray(Image.open(data / "annotations" / "validation" / f"{stem}.png"))
    return Image.fromarray(label_palette()[labels])


def tile(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((SIDE, SIDE))
    canvas = Image.new("RGB", (SIDE, SIDE), "white")
    canvas.paste(image, ((SIDE - image.width) // 2, (SIDE - image.height) // 2))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infer", type=Path, default=Path("demo/infer"))
    parser.add_argument("--data", type=Path, default=Path("demo/ADEChallengeData2016"))
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.jpg"))
    args = parser.parse_args()
    names = sorted(p.name.removesuffix(".jpg") for p in (args.infer / "inputs").glob("*.jpg"))[: args.rows]
    titles = [title for _, _, title in COLUMNS] + ["ground truth"]
    sheet = Image.new("RGB", (SIDE * len(titles), TITLE + SIDE * len(names)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(titles):
        draw.text((column * SIDE + 6, 5), title, fill="black")
    for row, name in enumerate(names):
        tiles = [Image.open(args.infer / folder / f"{name}{suffix}") for folder, suffix, _ in COLUMNS]
        tiles.append(ground_truth(args.data, Path(name).stem))
        for column, picture in enumerate(tiles):
            sheet.paste(tile(picture), (column * SIDE, TITLE + row * SIDE))
    sheet.save(args.out, quality=85)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
