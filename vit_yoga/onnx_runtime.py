"""An exported folder (``python -m vit_yoga.export``) run by ONNX Runtime, answering as the hierarchical pipeline does.

    classify = OnnxHierarchicalClassifier("runs/level3-onnx")        # or int8=True for model_int8.onnx
    classify("pose.jpg", top_k=3)   # {"levels": {...}, "path": [...], "path_score": ...}, as
                                    # pipeline("hierarchical-image-classification") answers

Images are loaded as the pipelines load them (``load_image``: paths, URLs, PIL images; EXIF orientation, RGB) and
prepared by the folder's own ``preprocessor_config.json``; the tree-consistent probabilities come out of the graph
(``probabilities_<level>``) and become dicts through ``describe_tree_prediction``, the function every front end
(pipeline, predict, demo) uses, so each answers identically. Only the model runs in ONNX Runtime: ViT inference is
where the time goes, and keeping the decoding in one shared function keeps the answers equal by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configuration_vit_yoga import ViTYogaConfig
from yoga_common.errors import UsageError

from .export import INPUT_NAME, INT8_FILE, MODEL_FILE, require_onnx


class OnnxHierarchicalClassifier:
    """Classify images with an exported folder; ``__call__`` takes what the hierarchical pipeline takes."""

    def __init__(self, folder: str | Path, *, int8: bool = False, threads: int | None = None) -> None:
        require_onnx()
        from transformers import AutoImageProcessor

        from .export import ort_session

        self.folder = Path(folder)
        model_file = self.folder / (INT8_FILE if int8 else MODEL_FILE)
        if not model_file.is_file():
            hint = " (export with --quantize dynamic)" if int8 else ""
            raise UsageError(f"--onnx {self.folder}: no {model_file.name}{hint}; give a folder that "
                             "python -m vit_yoga.export wrote.")
        try:
            self.config = ViTYogaConfig.from_pretrained(self.folder)
            self.processor = AutoImageProcessor.from_pretrained(self.folder)
        except (OSError, ValueError) as error:
            raise UsageError(f"--onnx {self.folder}: {error}") from None
        self.session = ort_session(model_file, threads)
        self.device = torch.device("cpu")  # where run_model's inputs are expected (predict pins memory for a GPU)
        outputs = [output.name for output in self.session.get_outputs()]
        self.probability_outputs = [name for name in outputs if name.startswith("probabilities_")]
        if not self.probability_outputs:
            raise UsageError(
                f"--onnx {self.folder} has no probabilities_<level> outputs (exported before the hierarchy decoding "
                "existed); export the checkpoint again with python -m vit_yoga.export."
            )

    @property
    def levels(self) -> list[str]:
        """The levels the probabilities cover, coarsest first (``predicted_levels`` of the checkpoint)."""
        return [name.removeprefix("probabilities_") for name in self.probability_outputs]

    @staticmethod
    def describe(config: Any, probabilities: Sequence[torch.Tensor], top_k: int = 5,
                 decision: str = "probability") -> list[dict[str, Any]]:
        """``describe_tree_prediction``: the one function every front end builds its answers with."""
        from pipeline_vit_yoga import describe_tree_prediction

        return describe_tree_prediction(config, probabilities, top_k=top_k, decision=decision)

    def run_model(self, pixel_values: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
        """Each level's tree-consistent probabilities for a batch, coarsest first, computed by the graph (the same
        contract as predict's and the demo's PyTorch ``run_model``)."""
        pixels = pixel_values.numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
        outputs = self.session.run(self.probability_outputs, {INPUT_NAME: np.ascontiguousarray(pixels, np.float32)})
        return tuple(torch.from_numpy(output) for output in outputs)

    def __call__(
        self, images: Any, top_k: int = 5, decision: str = "probability", batch_size: int = 32
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """What ``pipeline("hierarchical-image-classification")`` answers: a dict for one image, a list for a list."""
        from transformers.image_utils import load_image

        single = not isinstance(images, Sequence) or isinstance(images, str)
        batch = [images] if single else list(images)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(batch), batch_size):
            photos = [load_image(image) for image in batch[start:start + batch_size]]
            pixels = self.processor(images=photos, return_tensors="np")["pixel_values"]
            answers += self.describe(self.config, self.run_model(pixels), top_k=top_k, decision=decision)
        return answers[0] if single else answers
