"""What a `spix infer` run is asked to do: the parameters that decide the outputs' content, and how to run.

Both are built from the [infer] section of configs/default.toml (merged with --config and flags) by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_KINDS = ("embeddings", "features", "soft", "inputs")  # what --outputs chooses from, in its default order
PCA_MODES = ("run", "image")


class InferInputError(ValueError):
    """A problem with the command's inputs (folder, checkpoint, classifier, output folder): one line to the user."""


def parse_outputs(text: str) -> tuple[str, ...]:
    """'embeddings,soft' -> ('embeddings', 'soft'), in OUTPUT_KINDS order; unknown or no names are an input error."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(OUTPUT_KINDS))
    if unknown or not names:
        raise InferInputError(f"--outputs takes a comma list of {', '.join(OUTPUT_KINDS)}; got {text!r}")
    return tuple(kind for kind in OUTPUT_KINDS if kind in names)


@dataclass(frozen=True)
class InferParams:
    """Everything that changes what the outputs hold; recorded in OUT/infer.json and checked on re-runs."""

    model_sha1: str
    num_superpixels: int
    compactness: float
    max_side: int
    soft_layers: int
    smooth_radius: int  # guided-filter radius in pixels; 0 = about 1/64 of the longer side
    feature_eps: float
    layer_eps: float
    seed: int
    pca: str  # principal components of the feature picture: "run" (one basis for the run) or "image"


@dataclass(frozen=True)
class InferOptions:
    """How to run and which files to write; does not change the content of a file that is written."""

    checkpoint: str  # the model.pt every actor loads
    outputs: tuple[str, ...]
    dense: bool  # also OUT/dense/<name>.npy, (H, W, D) float16
    classifier: str  # the linear probe (.npz) used for OUT/labels/<name>.png, for the record; "" = no labels
    batch_size: int
    gpu: bool | None  # None: GPU actors when Ray sees a GPU
    address: str
    num_cpus: int
    overwrite: bool
    basis_images: int  # images of the folder a run-wide basis is fitted on when the model brings none

    @property
    def file_kinds(self) -> tuple[str, ...]:
        """Every kind of file written per image: the chosen outputs plus --dense and --labels."""
        return self.outputs + (("dense",) if self.dense else ()) + (("labels",) if self.classifier else ())
