"""From tree-consistent probabilities to the answer a person reads: each level's top classes and the decided path.

    tree = LabelTree.from_config(config, levels)   # a ViTYogaConfig or config.json as a dict
    tree.describe(probabilities, top_k=5, decision="probability")
    # [{"levels": {"label_6": [{"label", "score"}, ...], ...},
    #   "path": [{"level", "label", "score"}, ...], "path_score": 0.87}, ...]   one dict per image

The one implementation of the answer, in numpy alone: the hierarchical pipeline (``pipeline_vit_yoga.py``, PyTorch)
and the ONNX Runtime runner (``vit_yoga/onnx_runtime.py``, no torch) both call it, so that an exported model answers
with the same dicts as its checkpoint. It ships with every checkpoint beside the pipeline file, and with every Space
``app.py --write_space`` writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DECISIONS = ("probability", "risk")


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """``config.name`` for a config object, ``config[name]`` for config.json read as a dict."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


@dataclass(frozen=True)
class LabelTree:
    """The levels a model's probabilities cover (coarsest first), each level's class names, for every level but
    the first each class's parent id in the level above, and the names a person reads (``display``; the class names
    stay the labels)."""

    levels: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    parents: tuple[tuple[int, ...], ...]
    display_names: Mapping[str, str] = field(default_factory=dict, compare=False)

    def display(self, label: str) -> str:
        """The name a person reads for class ``label`` (the label itself when the model has none)."""
        return self.display_names.get(label, label)

    @classmethod
    def from_config(cls, config: Any, levels: Sequence[str]) -> LabelTree:
        """The tree of ``levels`` (``predicted_levels(config)``: a one-head model's level and those above it, a joint
        model's every level; a model without a hierarchy its one label set) from a ViTYoga config or its JSON."""
        hierarchy = list(config_value(config, "hierarchy_levels") or [])
        if not hierarchy:
            id2label = config_value(config, "id2label") or {}
            names = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
            return cls(tuple(levels), (tuple(names),), (), dict(config_value(config, "display_names") or {}))
        depths = [hierarchy.index(level) for level in levels]
        if depths != list(range(len(levels))):
            raise ValueError(f"levels {list(levels)} are not the first levels of the hierarchy {hierarchy}.")
        class_names = config_value(config, "hierarchy_class_names")
        parents = config_value(config, "hierarchy_parents")
        return cls(tuple(levels), tuple(tuple(class_names[d]) for d in depths),
                   tuple(tuple(parents[d - 1]) for d in depths[1:]), dict(config_value(config, "display_names") or {}))

    def ancestors(self) -> np.ndarray:
        """(classes of the finest level, levels): each finest class's id at every level, coarsest first."""
        table = np.zeros((len(self.names[-1]), len(self.levels)), dtype=np.int64)
        table[:, -1] = np.arange(len(table))
        for depth in range(len(self.levels) - 1, 0, -1):
            table[:, depth - 1] = np.asarray(self.parents[depth - 1], dtype=np.int64)[table[:, depth]]
        return table

    def decide(self, probabilities: Sequence[np.ndarray], decision: str = "probability"
               ) -> tuple[np.ndarray, np.ndarray]:
        """The decided path of each image: ((batch, levels) class ids coarsest first, (batch,) the finest node's
        probability).

        "probability": the most probable finest class and its ancestors. "risk": conditional risk minimisation
        (Karthik et al., ICLR 2021): the finest class with the lowest expected tree distance to the truth. The tree
        distance of two finest classes is the number of levels minus the number of levels where their ancestors
        agree, so a class's expected distance is ``levels - the sum of its path's marginals``: the class that
        minimises it maximises that sum (fewer severe mistakes, at a small top-1 cost).
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision={decision!r} is unknown; choose one of {list(DECISIONS)}.")
        probabilities = [np.asarray(p) for p in probabilities]
        if len(probabilities) != len(self.levels):
            raise ValueError(f"Expected one probability array per level {list(self.levels)}, got "
                             f"{len(probabilities)}.")
        table = self.ancestors()
        finest = probabilities[-1]
        if decision == "probability":
            leaf = finest.argmax(axis=-1)
        else:
            leaf = sum(p[:, table[:, depth]] for depth, p in enumerate(probabilities)).argmax(axis=-1)
        return table[leaf], finest[np.arange(len(finest)), leaf]

    def describe(self, probabilities: Sequence[np.ndarray], top_k: int = 5, decision: str = "probability"
                 ) -> list[dict[str, Any]]:
        """One dict per image of a batch: each level's ``top_k`` classes (``{"levels": {level: [{"label", "score"},
        ...]}}``, most probable first), the decided ``path`` (coarsest first, each node's ``{"level", "label",
        "score"}`` with its marginal probability) and ``path_score`` (its finest node's probability)."""
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        path_ids, path_scores = self.decide(probabilities, decision)
        probabilities = [np.asarray(p) for p in probabilities]
        tops = [np.argsort(-p, axis=-1, kind="stable")[:, :top_k] for p in probabilities]
        answers = []
        for image in range(len(path_ids)):
            answers.append({
                "levels": {
                    level: [{"label": names[c], "score": float(p[image, c])} for c in top[image]]
                    for level, names, top, p in zip(self.levels, self.names, tops, probabilities, strict=True)
                },
                "path": [
                    {"level": level, "label": names[c], "score": float(p[image, c])}
                    for level, names, c, p in zip(self.levels, self.names, path_ids[image], probabilities,
                                                  strict=True)
                ],
                "path_score": float(path_scores[image]),
            })
        return answers


__all__ = ["DECISIONS", "LabelTree", "config_value"]
