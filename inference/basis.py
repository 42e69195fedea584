"""The principal-component basis of the feature picture: one per run, so a colour means the same in every image.

Where it comes from, in order: the model's own (`model.json["feature_basis"]`, fitted by `spix train` on
validation superpixel embeddings), the basis an earlier run into the same output folder recorded in
`infer.json` (so images added later match the earlier ones), or one fitted on the first images of the folder
(`run.fit_basis`: models trained before the basis was stored, or without Ray). `--pca image` skips all this
and fits each image's own basis in the inference step, with the same rule (`EmbeddingMoments.principal_basis`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from spix.inference.settings import InferInputError
from spix.trainer.embedding import EmbeddingMoments

AXES = 3  # the picture's three colour channels


@dataclass(frozen=True)
class FeatureBasis:
    """Leading principal axes of area-weighted superpixel embeddings, and the spread along each."""

    mean: list[float]  # (D,)
    components: list[list[float]]  # (3, D), unit rows
    std: list[float]  # (3,)
    images: int  # how many images it was fitted on
    source: str  # where it comes from, for infer.json

    @classmethod
    def from_record(cls, record: dict[str, Any], dim: int, where: str) -> FeatureBasis:
        """A basis from its JSON form, checked against the model's embedding size `dim`."""
        try:
            basis = cls(
                mean=[float(v) for v in record["mean"]],
                components=[[float(v) for v in row] for row in record["components"]],
                std=[float(v) for v in record["std"]],
                images=int(record.get("images", 0)),
                source=str(record.get("source", where)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InferInputError(f"{where}: malformed feature_basis ({type(exc).__name__}: {exc})") from None
        shapes = (len(basis.mean), np.shape(basis.components), len(basis.std))
        if shapes != (dim, (AXES, dim), AXES):
            raise InferInputError(f"{where}: feature_basis has shapes {shapes}, expected ({dim}, ({AXES}, {dim}), {AXES})")
        return basis

    @classmethod
    def from_moments(cls, moments: EmbeddingMoments, images: int, source: str) -> FeatureBasis:
        fitted = moments.principal_basis(AXES)
        return cls(mean=fitted["mean"], components=fitted["components"], std=fitted["std"], images=images, source=source)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean (D,), components (3, D), std (3,)) float32 on `device`."""
        return tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in (self.mean, self.components, self.std))


def image_basis(embeddings: np.ndarray, areas: np.ndarray) -> FeatureBasis:
    """One image's own basis (`--pca image`), by the same rule as the run-wide one."""
    moments = EmbeddingMoments(embeddings.shape[1])
    moments.add(embeddings, areas)
    return FeatureBasis.from_moments(moments, 1, "this image's superpixel embeddings, area-weighted")
