"""Metrics of a run, through the project's `evaluate` module (hierarchical_accuracy/, loaded from its folder):
top-1 and top-5 per predicted level, per-class accuracy, the coarser levels' accuracy implied by fine predictions,
mistake severity; and, for a model with a label hierarchy, every level as its heads answer and as the decided path
answers (``tree_results``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate
import numpy as np

METRIC_PATH = Path(__file__).resolve().parent / "hierarchical_accuracy"

# The readings of a hierarchical model's levels (tree_results), as the results JSON and the model card name them. The
# other readings (the finest head marginalised, each combination rule, decision="risk") are compared by
# benchmarks/bench_hierarchy.py.
DECODINGS = {
    "heads": "each level's own head, deciding alone (a one-head model: its level only)",
    "path": "the decided path: the most probable finest class of the tree-consistent probabilities, and its "
            "ancestors",
}


class HierarchicalMetrics:
    """Trainer's ``compute_metrics`` (scalars for the logs and model selection), and the detailed per-level results
    of the final evaluations (``per_level``)."""

    def __init__(self, label_columns: list[str], class_names: list[list[str]], hierarchy: dict[str, Any]) -> None:
        self.metric = evaluate.load(str(METRIC_PATH))
        self.label_columns, self.class_names = label_columns, class_names
        self.levels = hierarchy.get("hierarchy_levels", [])
        self.parents = hierarchy.get("hierarchy_parents", [])

    def _hierarchy_kwargs(self, column: str) -> dict[str, Any]:
        """The levels above ``column`` and their parents, for the implied coarse accuracies."""
        depth = self.levels.index(column) if column in self.levels else 0
        if depth == 0:
            return {}
        return {"hierarchy_parents": self.parents[:depth], "hierarchy_levels": self.levels[: depth + 1]}

    def per_level(self, logits, labels, per_class: bool = True) -> dict[str, dict[str, Any]]:
        """Results per predicted level: ``logits`` is one array (one head) or one per level; ``labels`` has one class
        id per example and level. A joint model's levels below the first also get the path consistency of its heads."""
        logits = logits if isinstance(logits, (tuple, list)) else (logits,)
        labels = np.asarray(labels).reshape(len(labels), -1)
        joint = len(self.label_columns) > 1 and self.label_columns == self.levels
        results = {}
        for i, column in enumerate(self.label_columns):
            extra = self._hierarchy_kwargs(column)
            if joint and i > 0:
                extra["coarser_predictions"] = [np.asarray(level).argmax(-1) for level in logits[:i]]
            result = self.metric.compute(
                predictions=np.asarray(logits[i], dtype=np.float32), references=labels[:, i], top_k=(1, 5),
                class_names=self.class_names[i], **extra,
            )
            if not per_class:
                result = {k: v for k, v in result.items() if not k.startswith("per_class")}
            results[column] = result
        return results

    def __call__(self, eval_prediction) -> dict[str, float]:
        results = self.per_level(eval_prediction.predictions, eval_prediction.label_ids, per_class=False)
        return flatten(results)


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One level's scalars as they are (``accuracy``, ``top5_accuracy``...); several levels' prefixed with their column,
    and ``accuracy`` is the finest level's (it drives model selection and early stopping)."""
    flat: dict[str, float] = {}
    for column, result in results.items():
        prefix = "" if len(results) == 1 else f"{column}_"
        flat.update({f"{prefix}{k}": v for k, v in result.items()
                     if k != "num_examples" and not k.startswith("per_class")})
    if len(results) > 1:
        flat["accuracy"] = results[list(results)[-1]]["accuracy"]
    return flat


def tree_results(config, logits, references: np.ndarray,
                 metric: evaluate.EvaluationModule | None = None) -> dict[str, Any]:
    """Every predicted level of a hierarchical model under each reading of ``DECODINGS``: top-1 (and top-5 where
    the reading ranks classes), path consistency, mistake severity and the average top-5 tree distance (finest
    level), through the hierarchical_accuracy metric.

    ``logits``: a one-head model's (N, C) logits or a joint model's per-level logits (coarsest first), as
    ``Trainer.predict`` returns them; ``references``: (N,) finest-level ids (or (N, n_columns), finest last), the
    coarser levels' being their ancestors. The path is decided by the code the pipeline answers with
    (``tree_probabilities``, then ``answers_vit_yoga.LabelTree.decide``), so its numbers are the pipeline's.
    ``{}`` for a model without a label hierarchy.
    """
    import torch

    from answers_vit_yoga import LabelTree
    from modeling_vit_yoga import predicted_levels, tree_probabilities

    if not config.hierarchy_levels:
        return {}
    metric = metric or evaluate.load(str(METRIC_PATH), keep_in_memory=True)
    levels = predicted_levels(config)
    depth = len(levels) - 1
    parents = [np.asarray(p) for p in config.hierarchy_parents[:depth]]
    heads = [np.asarray(level, dtype=np.float32)
             for level in (logits if isinstance(logits, (tuple, list)) else [logits])]
    finest_references = np.asarray(references).reshape(len(references), -1)[:, -1].astype(np.int64)
    level_references = [finest_references]
    for level_parents in reversed(parents):
        level_references.insert(0, level_parents[level_references[0]])

    model_logits = [torch.from_numpy(h) for h in heads] if len(heads) > 1 else torch.from_numpy(heads[0])
    with torch.no_grad():
        probabilities = [p.double().numpy() for p in tree_probabilities(config, model_logits)]
    path, _ = LabelTree.from_config(config, levels).decide(probabilities, "probability")
    # One-head model: its only head is the finest level; the coarser ones have no head of their own.
    head_scores: list[np.ndarray | None] = [None] * (len(levels) - 1) + [heads[-1]] if len(heads) == 1 else heads
    decodings: dict[str, list[np.ndarray | None]] = {
        "heads": head_scores,
        "path": [path[:, i] for i in range(len(levels))],
    }
    results: dict[str, Any] = {"levels": levels, "decodings": {}}
    for name, per_level in decodings.items():
        decoded: dict[str, Any] = {"levels": {}}
        for i, (level, predictions) in enumerate(zip(levels, per_level, strict=True)):
            if predictions is None:
                continue
            kwargs: dict[str, Any] = {}
            if i > 0:
                kwargs = {"hierarchy_parents": parents[:i], "hierarchy_levels": levels[: i + 1]}
                if all(p is not None for p in per_level[:i]):
                    kwargs["coarser_predictions"] = [p.argmax(-1) if p.ndim == 2 else p for p in per_level[:i]]
            result = metric.compute(predictions=predictions, references=level_references[i], top_k=(1, 5), **kwargs)
            decoded["levels"][level] = {k: v for k, v in result.items() if k in ("accuracy", "top5_accuracy")}
            if i == depth:  # the finest level's mistakes, and whether the levels' answers form paths
                decoded.update({k: v for k, v in result.items() if k in (
                    "mistake_severity", "num_mistakes", "top5_average_distance", "path_consistency")})
        results["decodings"][name] = decoded
    return results


def evaluate_split(trainer, dataset, split: str, prefix: str, metrics: HierarchicalMetrics, output_dir: Path,
                   ignore_keys: list[str] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Evaluate ``split`` with the trained model: ``<prefix>_results.json`` (scalars, and per level the detailed
    results with per-class accuracy) and a confusion matrix per level. Returns the per-level results and the plots'
    file names."""
    from .plots import plot_confusion

    prediction = trainer.predict(dataset, metric_key_prefix=prefix, ignore_keys=ignore_keys)
    per_level = metrics.per_level(prediction.predictions, prediction.label_ids)
    scalars = dict(prediction.metrics, **{f"{prefix}_samples": len(dataset)})
    trainer.log_metrics(prefix, scalars)
    detailed = {f"{prefix}_per_level": per_level}
    tree = tree_results(trainer.model.config, prediction.predictions, prediction.label_ids, metrics.metric)
    if tree:  # read back by the model card (vit_yoga/card.py)
        detailed[f"{prefix}_hierarchy"] = tree
    trainer.save_metrics(prefix, dict(scalars, **detailed), combined=True)
    plots = []
    if trainer.is_world_process_zero():
        logits = prediction.predictions if isinstance(prediction.predictions, tuple) else (prediction.predictions,)
        labels = np.asarray(prediction.label_ids).reshape(len(prediction.label_ids), -1)
        for i, column in enumerate(metrics.label_columns):
            name = f"confusion_{split}_{column}.png"
            plot_confusion(np.asarray(logits[i]), labels[:, i], metrics.class_names[i], output_dir / name,
                           f"{column}, {split}: top-1 {per_level[column]['accuracy']:.3f}")
            plots.append(name)
    return per_level, plots
