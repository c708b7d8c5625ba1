"""The hierarchical image-classification pipeline: every level of the label tree, and a path through it.

    from transformers import pipeline
    classify = pipeline("hierarchical-image-classification", model="runs/all", trust_remote_code=True)
    classify("photo.jpg")  # {"levels": {"label_6": [...], ...}, "path": [...], "path_score": 0.87}

This file ships with every checkpoint (config.json's ``custom_pipelines`` names it, as transformers' pipeline registry
writes it), so a Hub user gets it with no install; it imports only torch and transformers. It takes what
``pipeline("image-classification")`` takes (paths, URLs, PIL images, lists, ``batch_size``); the probabilities come
from the model code's ``tree_probabilities``, so every level agrees with the tree, and become answers through
``answers_vit_yoga.LabelTree`` (numpy), the same code the ONNX Runtime runner uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import ImageClassificationPipeline

try:  # as a package (a Hub checkpoint loaded with trust_remote_code)
    from .answers_vit_yoga import DECISIONS, LabelTree
    from .modeling_vit_yoga import predicted_levels, tree_probabilities
except ImportError:  # as a plain module (this repository)
    from answers_vit_yoga import DECISIONS, LabelTree
    from modeling_vit_yoga import predicted_levels, tree_probabilities

PIPELINE_TASK = "hierarchical-image-classification"
# config.json's entry for this pipeline, as `PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK,
# HierarchicalImageClassificationPipeline, AutoModelForImageClassification, type="image")` followed by the pipeline's
# save_pretrained writes it (tests/test_hierarchy.py compares the two).
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_vit_yoga.HierarchicalImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}


def label_tree(config) -> LabelTree:
    """The label tree of the levels ``tree_probabilities`` covers (``predicted_levels(config)``)."""
    return LabelTree.from_config(config, predicted_levels(config))


def describe_tree_prediction(
    config, probabilities: Sequence[torch.Tensor], top_k: int = 5, decision: str = "probability"
) -> list[dict[str, Any]]:
    """One dict per image of a batch, from ``tree_probabilities``' output: each level's ``top_k`` classes
    (``{"levels": {level: [{"label", "score"}, ...]}}``), the decided ``path`` (coarsest first, each node's
    ``{"level", "label", "score"}`` with its marginal probability) and ``path_score`` (its finest node's probability).

    ``decision``: "probability" (the most probable finest class and its ancestors) or "risk" (the finest class with
    the lowest expected tree distance, Karthik et al. 2021: fewer severe mistakes, at a small top-1 cost). Built by
    ``LabelTree.describe`` (answers_vit_yoga.py).
    """
    arrays = [p.detach().float().cpu().numpy() for p in probabilities]
    return label_tree(config).describe(arrays, top_k=top_k, decision=decision)


class HierarchicalImageClassificationPipeline(ImageClassificationPipeline):
    """``pipeline("hierarchical-image-classification", model=..., trust_remote_code=True)``: per image, every level's
    top-k classes with tree-consistent probabilities and the decided path (see ``describe_tree_prediction``).

    Call kwargs: ``top_k`` (default 5), ``decision`` ("probability", the default, or "risk"), ``timeout`` (for URLs).
    Works for a one-head checkpoint (its level and those above) and a joint one (every level); a checkpoint without a
    hierarchy gets its one level.
    """

    def _sanitize_parameters(self, top_k: int | None = None, decision: str | None = None, timeout: float | None = None,
                             **kwargs: Any):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        postprocess_params: dict[str, Any] = {}
        if top_k is not None:
            postprocess_params["top_k"] = top_k
        if decision is not None:
            if decision not in DECISIONS:  # checked here, before any image is read
                raise ValueError(f"decision={decision!r} is unknown; choose one of {list(DECISIONS)}.")
            postprocess_params["decision"] = decision
        return preprocess_params, {}, postprocess_params

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.model(**model_inputs)
        level_logits = outputs.get("level_logits")
        probabilities = tree_probabilities(self.model.config, outputs.logits if level_logits is None else level_logits)
        # One tensor, so that the pipeline's batching splits it per image (it does not split tuples of tensors).
        return {"tree_probabilities": torch.cat(probabilities, dim=-1)}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int = 5,
                    decision: str = "probability") -> dict[str, Any]:
        sizes = [len(names) for names in label_tree(self.model.config).names]
        probabilities = model_outputs["tree_probabilities"].split(sizes, dim=-1)
        return describe_tree_prediction(self.model.config, probabilities, top_k=top_k, decision=decision)[0]


__all__ = [
    "CUSTOM_PIPELINES",
    "DECISIONS",
    "PIPELINE_TASK",
    "HierarchicalImageClassificationPipeline",
    "describe_tree_prediction",
    "label_tree",
]
