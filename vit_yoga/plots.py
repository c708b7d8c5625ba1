"""The figures of a run: loss and accuracy per epoch (the report's figures), and a confusion matrix per level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float, layout: str | None = "constrained"):
    # The object-oriented API with its own Agg canvas: no pyplot state, no change of the process's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def plot_history(log_history: list[dict[str, Any]], path: Path) -> bool:
    """Loss and accuracy per epoch, train and validation; False (nothing written) when nothing was logged."""
    panels = _per_epoch_panels(log_history, "eval_loss")
    if panels is None:
        return False
    train, evals, figure, ax_loss, ax_acc = panels
    ax_loss.plot([e["epoch"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation")
    with_accuracy = [e for e in train if "train_accuracy" in e]
    ax_acc.plot([e["epoch"] for e in with_accuracy], [e["train_accuracy"] for e in with_accuracy], "o-",
                label="train (augmented)")
    ax_acc.plot([e["epoch"] for e in evals], [e.get("eval_accuracy", np.nan) for e in evals], "o-",
                label="validation")
    _save_per_epoch(figure, {ax_loss: "loss", ax_acc: "accuracy"}, path)
    return True


def plot_pretraining_history(log_history: list[dict[str, Any]], path: Path) -> bool:
    """pretrain.py's curves: the self-supervised loss per epoch, and the k-NN top-1 and features' spread at each
    evaluation (epoch 0: at initialisation); False (nothing written) when nothing was logged."""
    panels = _per_epoch_panels(log_history, "eval_feature_spread")
    if panels is None:
        return False
    _, evals, figure, ax_loss, ax_knn = panels
    with_knn = [e for e in evals if "eval_knn_top1" in e]
    if with_knn:
        ax_knn.plot([e.get("epoch", 0) for e in with_knn], [e["eval_knn_top1"] for e in with_knn], "o-",
                    color="C2", label="k-NN top-1 (validation)")
    ax_knn.plot([e.get("epoch", 0) for e in evals], [e["eval_feature_spread"] for e in evals], "s--", color="C3",
                label="feature spread (1: even, 0: collapsed)")
    _save_per_epoch(figure, {ax_loss: "self-supervised loss", ax_knn: "k-NN top-1 / spread"}, path)
    return True


def _per_epoch_panels(log_history: list[dict[str, Any]], eval_key: str) -> tuple[list, list, Any, Any, Any] | None:
    """The training entries and the evaluations (the entries with ``eval_key``) of a Trainer log, and a figure of
    two panels with the training loss drawn on the first; None when nothing was logged."""
    train = [e for e in log_history if "loss" in e and "epoch" in e]
    evals = [e for e in log_history if eval_key in e]
    if not train and not evals:
        return None
    figure = _figure(11, 4)
    ax_loss, ax_other = figure.subplots(1, 2)
    ax_loss.plot([e["epoch"] for e in train], [e["loss"] for e in train], "o-", label="train")
    return train, evals, figure, ax_loss, ax_other


def _save_per_epoch(figure: Any, axes: dict[Any, str], path: Path) -> None:
    for ax, name in axes.items():
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.savefig(path, dpi=120)


def plot_confusion(logits: np.ndarray, labels: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true class per row) of the top-1 predictions."""
    n = len(names)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels, logits.argmax(-1)), 1)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(4 + 0.18 * n, 22)
    ticks = [name[:28] for name in names]
    font = 6 if n > 30 else 8
    # Fixed margins sized for the longest name: a layout engine would measure every tick label twice, which is
    # most of the time an 82-class figure takes.
    margin = (0.6 * font * max(map(len, ticks)) / 72 + 0.5) / size
    figure = _figure(size, size, layout=None)
    figure.subplots_adjust(left=margin, bottom=margin, right=0.98, top=1 - 0.4 / size)
    ax = figure.subplots()
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=font)
    ax.set_yticks(range(n), ticks, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    figure.savefig(path, dpi=110)
