"""Hierarchical accuracy: top-k, per-class and implied coarse-level accuracy of a classifier over one level of a
label hierarchy (e.g. Yoga-82: 6 body positions -> 20 variations -> 82 poses), and how bad its mistakes are: mistake
severity and the average tree distance of the top-k (Bertinetto et al., CVPR 2020), and the share of examples whose
per-level predictions form a path of the tree."""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy of a classifier over one level of a label hierarchy. From class scores (logits or probabilities) it reports
top-1 and top-k accuracy, accuracy and support per class, and, given the parent of each class in the level above,
the accuracy at every coarser level implied by the top-1 prediction: the predicted class and the reference are both
mapped up the hierarchy and compared there, so a wrong pose in the right body position still counts at the
body-position level. Predictions may also be given as class ids, in which case top-k for k > 1 is left out.

Given the hierarchy it also weighs the mistakes by the tree distance between the predicted and the reference class:
the height of their lowest common ancestor, counting a root above the coarsest level (for Yoga-82's poses: 1 = a
sibling pose of the same variation, 2 = another variation of the same body position, 3 = another body position).
Mistake severity is the mean distance of the wrong top-1 predictions; the average top-k distance is the mean distance
of the k highest-scoring classes (Bertinetto et al., "Making Better Mistakes", CVPR 2020). Given the coarser levels'
own predictions (e.g. a joint model's other heads), path consistency is the share of examples whose predictions at
every level form a path of the tree.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape (N, C), or `list` of `int`, shape (N,)): class scores (logits or
        probabilities) of each example over the C classes of the evaluated level, or the predicted class ids.
    references (`list` of `int`, shape (N,)): reference class ids in 0..C-1.
    top_k (`int` or `list` of `int`, defaults to (1, 5)): the k of each top-k accuracy; k=1 is `accuracy`. A k >= C
        is 1.0. Ignored for k > 1 when predictions are class ids.
    class_names (`list` of `str`, optional): the C class names, used as keys of the per-class results; defaults to
        the class ids as strings.
    hierarchy_parents (`list` of `list` of `int`, optional): coarsest first, one list per level below the coarsest,
        ending at the evaluated level: hierarchy_parents[i][c] is the id, in level i, of the parent of class c of
        level i+1. For Yoga-82's 82 poses: [parent_of_20 (20 ids in 0..5), parent_of_82 (82 ids in 0..19)], i.e.
        `ViTYogaConfig.hierarchy_parents[:depth]`.
    hierarchy_levels (`list` of `str`, optional): the name of every level, coarsest first, including the evaluated
        one (one more than `hierarchy_parents`), e.g. ["label_6", "label_20", "label_82"]; defaults to
        "level_0", "level_1", ...
    coarser_predictions (`list` of `list` of `int`, optional, needs `hierarchy_parents`): coarsest first, one list per
        level above the evaluated one: the class ids predicted at that level for the same N examples (e.g. a joint
        model's coarser heads). Gives `path_consistency`.

Returns:
    accuracy (`float`): top-1 accuracy.
    top{k}_accuracy (`float`): for each k > 1 in `top_k` (score predictions only).
    per_class_accuracy (`dict` of `str` to `float`): accuracy over the examples of each class present in the
        references (classes absent from the references are left out, so there is no NaN).
    per_class_count (`dict` of `str` to `int`): number of references of each class, same keys.
    num_examples (`int`): N.
    implied_{level}_accuracy (`float`): for each level coarser than the evaluated one (only with
        `hierarchy_parents`): accuracy of the coarse class implied by the top-1 prediction.
    mistake_severity (`float`): with `hierarchy_parents` and at least one wrong top-1 prediction: the mean tree
        distance (1 .. number of levels) between the wrong predictions and their references.
    num_mistakes (`int`): with `hierarchy_parents`: the number of wrong top-1 predictions.
    top{k}_average_distance (`float`): with `hierarchy_parents` and scores, for each k > 1 in `top_k`: the mean tree
        distance between the reference and each of the k highest-scoring classes (0 for the reference itself).
    path_consistency (`float`): with `coarser_predictions`: the share of examples whose predictions at the coarser
        levels are the ancestors of the top-1 prediction.

Examples:
    >>> metric = evaluate.load("vit_yoga/hierarchical_accuracy")
    >>> results = metric.compute(
    ...     predictions=[[0.1, 0.7, 0.2, 0.0], [0.6, 0.1, 0.2, 0.1], [0.3, 0.1, 0.2, 0.4]],
    ...     references=[1, 1, 2],
    ...     top_k=[1, 2],
    ...     hierarchy_parents=[[0, 0, 1, 1]],
    ...     hierarchy_levels=["coarse", "fine"],
    ... )
    >>> print(results)
    {'accuracy': 0.3333333333333333, 'top2_accuracy': 0.3333333333333333, 'per_class_accuracy': {'1': 0.5, '2': 0.0}, \
'per_class_count': {'1': 2, '2': 1}, 'num_examples': 3, 'num_mistakes': 2, 'mistake_severity': 1.0, \
'top2_average_distance': 1.3333333333333333, 'implied_coarse_accuracy': 1.0}
"""

_CITATION = """
@inproceedings{verma2020yoga,
  title={Yoga-82: A New Dataset for Fine-grained Classification of Human Poses},
  author={Verma, Manisha and Kumawat, Sudhakar and Nakashima, Yuta and Raman, Shanmuganathan},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year={2020}
}
"""


def _true_class_rank(scores: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Position of the reference class in each row sorted by descending score, ties broken by lower class id.

    Top-k is correct iff rank < k, so one O(N*C) pass serves every k, and ties resolve as `np.argmax` does (first
    maximum wins) -- argpartition would break ties arbitrarily and could disagree with the top-1 prediction.
    """
    true_scores = scores[np.arange(len(references)), references][:, None]
    class_ids = np.arange(scores.shape[1])[None, :]
    ahead = (scores > true_scores) | ((scores == true_scores) & (class_ids < references[:, None]))
    return ahead.sum(axis=1)


def _as_id_array(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat list of class ids, got an array of shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{what} must hold integer class ids, got {array.dtype} values.")
    return array.astype(np.int64)


def _check_range(ids: np.ndarray, num_classes: int, what: str, fix: str) -> None:
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{what} holds class id {int(bad[0])}, outside 0..{num_classes - 1} ({num_classes} classes); {fix}"
        )


def tree_distance(predicted: np.ndarray, references: np.ndarray, parents: Sequence[np.ndarray]) -> np.ndarray:
    """Per example, the height of the lowest common ancestor of two classes of the finest level of ``parents``,
    with a root above the coarsest level: 0 for the same class, one more for each level at which they differ
    (a class and its ancestors differ at a level only if they differ at every finer one)."""
    distance = (predicted != references).astype(np.int64)
    for level_parents in reversed(parents):
        predicted, references = level_parents[predicted], level_parents[references]
        distance += predicted != references
    return distance


class HierarchicalAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # evaluate tries these in order on the first example: class scores, else class ids.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("int64"),
                        "references": datasets.Value("int64"),
                    }
                ),
            ],
            reference_urls=["https://sites.google.com/view/yoga-82/home"],
        )

    def _compute(
        self,
        predictions,
        references,
        top_k: int | Sequence[int] = (1, 5),
        class_names: Sequence[str] | None = None,
        hierarchy_parents: Sequence[Sequence[int]] | None = None,
        hierarchy_levels: Sequence[str] | None = None,
        coarser_predictions: Sequence[Sequence[int]] | None = None,
    ) -> dict:
        references = _as_id_array(references, "references")
        num_examples = len(references)
        if num_examples == 0:
            raise ValueError("No examples to evaluate: pass at least one prediction and reference.")
        top_ks = self._check_top_k(top_k)
        parents = [_as_id_array(p, f"hierarchy_parents[{i}]") for i, p in enumerate(hierarchy_parents or [])]

        scores = None
        if len(predictions) and isinstance(predictions[0], (list, tuple, np.ndarray)):
            try:
                scores = np.asarray(predictions, dtype=np.float32)
            except ValueError:  # numpy refuses ragged rows
                scores = None
            if scores is None or scores.ndim != 2:
                raise ValueError(
                    "predictions must be class scores of one length per example (shape (N, C)); got rows of "
                    "different lengths. Pass every example's scores over the same C classes."
                )
            if np.isnan(scores).any():
                raise ValueError("predictions hold NaN scores; check the model's outputs (e.g. a diverged run).")
            num_classes = scores.shape[1]
            predicted = scores.argmax(axis=1)
        else:
            predicted = _as_id_array(predictions, "predictions")
            # With class ids there is no score width: take C from whatever describes the classes.
            if class_names is not None:
                num_classes = len(class_names)
            elif parents:
                num_classes = len(parents[-1])
            else:
                num_classes = int(max(predicted.max(), references.max())) + 1
            _check_range(predicted, num_classes, "predictions", "pass ids of the evaluated level's classes.")

        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but predictions cover {num_classes} classes; "
                "pass one name per class of the evaluated level, in class-id order."
            )
        _check_range(
            references,
            num_classes,
            "references",
            "pass labels of the level the predictions are over (e.g. the 82-pose column for an 82-class head).",
        )
        names = [str(name) for name in class_names] if class_names is not None else [str(c) for c in range(num_classes)]

        correct = predicted == references
        results: dict = {"accuracy": float(correct.mean())}
        if scores is not None and any(k > 1 for k in top_ks):
            rank = _true_class_rank(scores, references)
            for k in top_ks:
                if k > 1:
                    results[f"top{k}_accuracy"] = float((rank < k).mean())

        counts = np.bincount(references, minlength=num_classes)
        hits = np.bincount(references, weights=correct, minlength=num_classes)
        present = np.flatnonzero(counts)
        results["per_class_accuracy"] = {names[c]: float(hits[c] / counts[c]) for c in present}
        results["per_class_count"] = {names[c]: int(counts[c]) for c in present}
        results["num_examples"] = int(num_examples)

        if parents:
            levels = self._check_hierarchy(parents, hierarchy_levels, num_classes)
            distance = tree_distance(predicted, references, parents)
            results["num_mistakes"] = int((~correct).sum())
            if results["num_mistakes"]:
                results["mistake_severity"] = float(distance[~correct].mean())
            if scores is not None:
                # Ranked as top-k accuracy ranks them: descending score, ties to the lower class id.
                ranking = np.argsort(-scores, axis=1, kind="stable")
                for k in top_ks:
                    if k > 1:
                        top = ranking[:, : min(k, num_classes)]
                        reference_columns = np.broadcast_to(references[:, None], top.shape)
                        distances = tree_distance(top.ravel(), reference_columns.ravel(), parents)
                        results[f"top{k}_average_distance"] = float(distances.mean())
            if coarser_predictions is not None:
                results["path_consistency"] = self._path_consistency(predicted, coarser_predictions, parents)
            coarse_predicted, coarse_references = predicted, references
            # Walk up from the evaluated level: parents[i] maps level i+1 to level i.
            for depth in range(len(parents) - 1, -1, -1):
                coarse_predicted = parents[depth][coarse_predicted]
                coarse_references = parents[depth][coarse_references]
                results[f"implied_{levels[depth]}_accuracy"] = float((coarse_predicted == coarse_references).mean())
        elif coarser_predictions is not None:
            raise ValueError("coarser_predictions needs hierarchy_parents: the tree the paths must follow.")
        return results

    @staticmethod
    def _path_consistency(predicted: np.ndarray, coarser: Sequence[Sequence[int]], parents: list[np.ndarray]) -> float:
        if len(coarser) != len(parents):
            raise ValueError(
                f"coarser_predictions has {len(coarser)} levels but hierarchy_parents describes {len(parents)} levels "
                "above the evaluated one; pass one list of predicted ids per coarser level, coarsest first."
            )
        consistent = np.ones(len(predicted), dtype=bool)
        ancestor = predicted
        for depth in range(len(parents) - 1, -1, -1):
            ancestor = parents[depth][ancestor]
            level_predicted = _as_id_array(coarser[depth], f"coarser_predictions[{depth}]")
            if len(level_predicted) != len(predicted):
                raise ValueError(f"coarser_predictions[{depth}] has {len(level_predicted)} ids for {len(predicted)} "
                                 "examples; pass one predicted id per example.")
            consistent &= level_predicted == ancestor
        return float(consistent.mean())

    @staticmethod
    def _check_top_k(top_k) -> list[int]:
        ks = [top_k] if isinstance(top_k, (int, np.integer)) else list(top_k)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise ValueError(f"top_k must be a positive int or a list of them (e.g. [1, 5]), got {top_k!r}.")
        return sorted({int(k) for k in ks})

    @staticmethod
    def _check_hierarchy(parents: list[np.ndarray], levels: Sequence[str] | None, num_classes: int) -> list[str]:
        if len(parents[-1]) != num_classes:
            raise ValueError(
                f"hierarchy_parents[-1] gives parents for {len(parents[-1])} classes but predictions cover "
                f"{num_classes}; the last list must be the parents of the evaluated level's classes (for the "
                "82-class level: [parent_of_20, parent_of_82], i.e. ViTYogaConfig.hierarchy_parents[:2])."
            )
        for depth, level_parents in enumerate(parents):
            if level_parents.size and level_parents.min() < 0:
                raise ValueError(f"hierarchy_parents[{depth}] holds a negative parent id; parent ids start at 0.")
            # The coarsest level has no list of its own, so any non-negative id is a valid class there.
            if depth > 0 and level_parents.size and level_parents.max() >= len(parents[depth - 1]):
                raise ValueError(
                    f"hierarchy_parents[{depth}] holds parent id {int(level_parents.max())} but the level above has "
                    f"{len(parents[depth - 1])} classes (len(hierarchy_parents[{depth - 1}])); the lists must chain "
                    "up, coarsest first, each giving ids into the level before it."
                )
        if levels is None:
            return [f"level_{i}" for i in range(len(parents) + 1)]
        levels = [str(level) for level in levels]
        if len(levels) != len(parents) + 1:
            raise ValueError(
                f"hierarchy_levels names {len(levels)} levels but hierarchy_parents describes {len(parents) + 1}; "
                "name every level, coarsest first, including the evaluated one."
            )
        return levels
