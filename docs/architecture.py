"""Draws docs/architecture.png: the network, the superpixel pooling and the loss, as spix builds them.

Run: python docs/architecture.py (needs matplotlib, installed by the test set-up). The widths shown are
the `paper` preset's; trainer/model.py is the source of truth.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {  # name: (x, y, width, height, text, colour)
    "image": (0.2, 4.0, 1.4, 1.0, "image\nH x W x 3", "#dddddd"),
    "stem": (2.0, 4.0, 1.4, 1.0, "1x1 conv\nBN ReLU\n64", "#f4d8a8"),
    "stage1": (3.8, 4.0, 1.6, 1.0, "stage 1\n2 residual units\n64 (H x W)", "#f4d8a8"),
    "stage2": (3.8, 2.4, 1.6, 1.0, "stage 2\n2 residual units\n128 (H/2)", "#f4d8a8"),
    "stage3": (3.8, 0.8, 1.6, 1.0, "stage 3\n2 residual units\n+ 1x1 conv, 256 (H/4)", "#f4d8a8"),
    "up2": (5.9, 2.4, 1.5, 1.0, "bilinear\nupsampling", "#cfe3f4"),
    "up3": (5.9, 0.8, 1.5, 1.0, "bilinear\nupsampling", "#cfe3f4"),
    "concat": (7.8, 2.4, 1.5, 1.0, "hypercolumn\n64+128+256", "#cfe3f4"),
    "head": (9.7, 2.4, 1.5, 1.0, "3x3 conv\nBN\n128-D", "#f4d8a8"),
    "slic": (9.7, 4.2, 1.5, 1.0, "SLIC\nsuperpixel ids\nH x W", "#dddddd"),
    "pool": (11.6, 2.4, 1.6, 1.0, "superpixel\nmeans\nS x 128", "#d5ecd0"),
    "loss": (13.6, 2.4, 1.9, 1.0, "modified N-pair\nloss over\nsuperpixel pairs", "#f6c9c9"),
}
ARROWS = [  # (from box, its side, to box, its side, label)
    ("image", "right", "stem", "left", ""), ("stem", "right", "stage1", "left", ""),
    ("stage1", "bottom", "stage2", "top", "1x1 conv to 128\nmax-pool 3x3/2"),
    ("stage2", "bottom", "stage3", "top", "1x1 conv to 256\nmax-pool 3x3/2"),
    ("stage2", "right", "up2", "left", ""), ("stage3", "right", "up3", "left", ""),
    ("stage1", "right", "concat", "top", ""), ("up2", "right", "concat", "left", ""), ("up3", "right", "concat", "bottom", ""),
    ("concat", "right", "head", "left", ""), ("head", "right", "pool", "left", ""),
    ("slic", "right", "pool", "top", "ids"), ("pool", "right", "loss", "left", ""),
]


def anchor(name: str, side: str) -> tuple[float, float]:
    x, y, w, h, _, _ = BOXES[name]
    return {"left": (x, y + h / 2), "right": (x + w, y + h / 2), "top": (x + w / 2, y + h), "bottom": (x + w / 2, y)}[side]


def draw(path: Path) -> None:
    figure, axis = plt.subplots(figsize=(13, 4.6))
    for x, y, w, h, text, colour in BOXES.values():
        axis.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#444444"))
        axis.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
    for start, start_side, end, end_side, label in ARROWS:
        (x0, y0), (x1, y1) = anchor(start, start_side), anchor(end, end_side)
        axis.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, color="#555555",
                                       shrinkA=4, shrinkB=4))
        if label:
            axis.text((x0 + x1) / 2 + 0.1, (y0 + y1) / 2, label, fontsize=7, color="#333333", ha="left", va="center")
    axis.text(9.7 + 0.75, 5.45, "from the image (spix preprocess)", fontsize=7, ha="center", color="#333333")
    axis.text(0.2, 0.2, "A residual unit: x + (3x3 conv BN ReLU -> 3x3 conv BN ReLU)(x).  "
              "Loss: superpixels of one image, d = min(|f_i - f_j|^2, 50); same label log((1+e^d)/2), "
              "other label log(1+e^-d/2).", fontsize=7.5, color="#333333")
    axis.set_xlim(0, 15.7)
    axis.set_ylim(0, 5.7)
    axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    draw(Path(__file__).with_name("architecture.png"))
