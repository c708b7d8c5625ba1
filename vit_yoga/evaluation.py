"""Metrics of a run, through the project's `evaluate` module (hierarchical_accuracy/, loaded from its folder):
top-1 and top-5 per predicted level, per-class accuracy, and the coarser levels' accuracy implied by fine
predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate
import numpy as np

METRIC_PATH = Path(__file__).resolve().parent / "hierarchical_accuracy"


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
        id per example and level."""
        logits = logits if isinstance(logits, (tuple, list)) else (logits,)
        labels = np.asarray(labels).reshape(len(labels), -1)
        results = {}
        for i, column in enumerate(self.label_columns):
            result = self.metric.compute(
                predictions=np.asarray(logits[i], dtype=np.float32), references=labels[:, i], top_k=(1, 5),
                class_names=self.class_names[i], **self._hierarchy_kwargs(column),
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
    trainer.save_metrics(prefix, dict(scalars, **{f"{prefix}_per_level": per_level}), combined=True)
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
