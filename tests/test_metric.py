"""The hierarchical_accuracy `evaluate` module: loads offline from its folder and computes hand-checkable results."""

import json
from pathlib import Path

import evaluate
import numpy as np
import pytest

METRIC_PATH = Path(__file__).parent.parent / "vit_yoga" / "hierarchical_accuracy"

# 3 coarse classes <- 4 middle classes <- 6 fine classes.
PARENT_OF_MIDDLE = [0, 0, 1, 2]
PARENT_OF_FINE = [0, 1, 1, 2, 3, 3]


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return evaluate.load(str(METRIC_PATH), cache_dir=str(tmp_path_factory.mktemp("metric_cache")))


@pytest.fixture(scope="module")
def in_memory_metric():
    # evaluate leaves its cache-file lock held when _compute raises, so the next compute on a file-backed instance
    # waits a second for it; the error cases use an in-memory instance instead.
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True)


def one_hot_scores(ranked_rows: list[list[int]], num_classes: int) -> np.ndarray:
    """Scores whose descending order over classes is each row's list (unlisted classes score lowest)."""
    scores = np.zeros((len(ranked_rows), num_classes), dtype=np.float32)
    for row, ranked in enumerate(ranked_rows):
        for position, class_id in enumerate(ranked):
            scores[row, class_id] = num_classes - position
    return scores


def test_top1_topk_and_per_class(metric):
    # Six classes; the reference sits at rank 0, 1, 4, 5 and 2 of its row.
    scores = one_hot_scores([[0, 1], [2, 1], [5, 4, 3, 2, 1, 0], [1, 2, 3, 4, 5, 0], [4, 5, 3]], 6)
    references = [0, 1, 1, 0, 3]
    results = metric.compute(predictions=scores, references=references, top_k=[1, 2, 5, 6])

    assert results["accuracy"] == pytest.approx(1 / 5)
    assert results["top2_accuracy"] == pytest.approx(2 / 5)
    assert results["top5_accuracy"] == pytest.approx(4 / 5)
    assert results["top6_accuracy"] == 1.0  # k >= C always holds the reference
    assert "top1_accuracy" not in results
    # Class 0: rows 0 (right) and 3 (wrong); class 1: rows 1 and 2 (both wrong); class 3: row 4 (wrong).
    assert results["per_class_accuracy"] == {"0": 0.5, "1": 0.0, "3": 0.0}
    assert results["per_class_count"] == {"0": 2, "1": 2, "3": 1}
    assert results["num_examples"] == 5
    json.dumps(results)  # plain Python types, ready for a results file or a model card


def test_default_top_k_and_class_names(metric):
    scores = one_hot_scores([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], 7)
    names = ["a", "b", "c", "d", "e", "f", "g"]
    results = metric.compute(predictions=scores.tolist(), references=[0, 1], class_names=names)

    assert set(results) == {"accuracy", "top5_accuracy", "per_class_accuracy", "per_class_count", "num_examples"}
    assert results["accuracy"] == 0.5
    assert results["top5_accuracy"] == 0.5  # in row 1 the reference is 6th
    assert results["per_class_accuracy"] == {"a": 1.0, "b": 0.0}
    assert results["per_class_count"] == {"a": 1, "b": 1}


def test_ties_resolve_like_argmax(metric):
    # All scores equal: argmax predicts class 0, and top-k counts the first k class ids.
    scores = np.zeros((3, 4), dtype=np.float32)
    results = metric.compute(predictions=scores, references=[0, 1, 3], top_k=[1, 2])
    assert results["accuracy"] == pytest.approx(1 / 3)
    assert results["top2_accuracy"] == pytest.approx(2 / 3)


def test_implied_accuracy_two_levels(metric):
    # Four fine classes under two coarse ones: {0, 1} -> 0, {2, 3} -> 1.
    scores = one_hot_scores([[1], [0], [3], [0]], 4)  # top-1: 1, 0, 3, 0
    results = metric.compute(
        predictions=scores,
        references=[0, 1, 2, 3],
        hierarchy_parents=[[0, 0, 1, 1]],
        hierarchy_levels=["body_position", "pose"],
    )
    assert results["accuracy"] == 0.0
    # Rows 0-2 predict a wrong pose in the right body position; row 3 is wrong at both levels.
    assert results["implied_body_position_accuracy"] == 0.75
    assert "implied_pose_accuracy" not in results


def test_implied_accuracy_three_levels(metric):
    scores = one_hot_scores([[2], [3], [5], [1], [4]], 6)  # top-1: 2, 3, 5, 1, 4
    references = [1, 4, 5, 0, 5]
    results = metric.compute(
        predictions=scores,
        references=references,
        hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE],
        hierarchy_levels=["label_3", "label_4", "label_6"],
    )
    # middle: pred [1, 2, 3, 1, 3] vs ref [1, 3, 3, 0, 3]; coarse: pred [0, 1, 2, 0, 2] vs ref [0, 2, 2, 0, 2].
    # Rows 0 and 4 are wrong poses with the right parent; row 3 is wrong at the middle level but right at the top.
    assert results["accuracy"] == pytest.approx(1 / 5)
    assert results["implied_label_4_accuracy"] == pytest.approx(3 / 5)
    assert results["implied_label_3_accuracy"] == pytest.approx(4 / 5)
    assert list(results)[-2:] == ["implied_label_4_accuracy", "implied_label_3_accuracy"]

    default_names = metric.compute(
        predictions=scores, references=references, hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE]
    )
    assert default_names["implied_level_1_accuracy"] == pytest.approx(3 / 5)
    assert default_names["implied_level_0_accuracy"] == pytest.approx(4 / 5)


def test_class_id_predictions(metric):
    results = metric.compute(
        predictions=[2, 3, 5, 1, 4],
        references=[1, 4, 5, 0, 5],
        hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE],
        class_names=["f0", "f1", "f2", "f3", "f4", "f5"],
    )
    assert results["accuracy"] == pytest.approx(1 / 5)
    assert not any(key.startswith("top") for key in results)  # top-k needs scores
    assert results["per_class_accuracy"] == {"f0": 0.0, "f1": 0.0, "f4": 0.0, "f5": 0.5}
    assert results["per_class_count"] == {"f0": 1, "f1": 1, "f4": 1, "f5": 2}
    assert results["implied_level_1_accuracy"] == pytest.approx(3 / 5)
    assert results["implied_level_0_accuracy"] == pytest.approx(4 / 5)


def test_add_batch_twice_equals_one_shot(metric):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((40, 9)).astype(np.float32)
    references = rng.integers(0, 9, size=40)
    kwargs = {"top_k": (1, 3), "hierarchy_parents": [[0, 0, 0, 1, 1, 1, 2, 2, 2]]}

    one_shot = metric.compute(predictions=scores, references=references, **kwargs)
    metric.add_batch(predictions=scores[:25], references=references[:25])
    metric.add_batch(predictions=scores[25:], references=references[25:])
    assert metric.compute(**kwargs) == one_shot
    assert one_shot["num_examples"] == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predictions": [[0.1, 0.9], [0.5, 0.5]], "references": [0, 2]}, "references holds class id 2"),
        ({"predictions": [[0.1, 0.9]], "references": [0], "class_names": ["a", "b", "c"]}, "class_names has 3"),
        (
            {"predictions": [[0.1, 0.9, 0.0]], "references": [0], "hierarchy_parents": [[0, 1]]},
            "hierarchy_parents\\[-1\\] gives parents for 2 classes",
        ),
        (
            {"predictions": [[0.1, 0.9, 0.0]], "references": [0], "hierarchy_parents": [[0, 1], [0, 2, 1]]},
            "hierarchy_parents\\[1\\] holds parent id 2",
        ),
        (
            {
                "predictions": [[0.1, 0.9]],
                "references": [0],
                "hierarchy_parents": [[0, 0]],
                "hierarchy_levels": ["fine"],
            },
            "hierarchy_levels names 1 levels",
        ),
        ({"predictions": [[0.1, 0.9]], "references": [0], "top_k": [0]}, "top_k must be a positive int"),
        ({"predictions": [4], "references": [0], "class_names": ["a", "b"]}, "predictions holds class id 4"),
    ],
)
def test_clear_errors(in_memory_metric, kwargs, message):
    with pytest.raises(ValueError, match=message):
        in_memory_metric.compute(**kwargs)
    # The instance stays usable after the error, with none of the failed call's data.
    assert in_memory_metric.compute(predictions=[[0.2, 0.8]], references=[1])["num_examples"] == 1


# The tree of PARENT_OF_MIDDLE / PARENT_OF_FINE, by hand:
#   coarse 0: middle 0 {fine 0}, middle 1 {fine 1, 2};  coarse 1: middle 2 {fine 3};  coarse 2: middle 3 {fine 4, 5}
# Tree distances (height of the lowest common ancestor, a root above the coarse level): d(1, 2) = 1 (siblings),
# d(0, 1) = 2 (same coarse class), d(0, 3) = d(3, 4) = d(5, 0) = 3 (different coarse classes), d(c, c) = 0.
def test_mistake_severity_and_top_k_distance_of_a_hand_made_set(metric):
    scores = one_hot_scores([[2, 1], [1, 0], [3, 5], [4, 5], [2, 1]], 6)  # top-1: 2, 1, 3, 4, 2
    references = [1, 0, 0, 4, 2]
    results = metric.compute(
        predictions=scores, references=references, top_k=[1, 2],
        hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE], hierarchy_levels=["coarse", "middle", "fine"],
    )
    # Three mistakes: 2 for 1 (distance 1), 1 for 0 (2), 3 for 0 (3); two right answers do not count.
    assert results["num_mistakes"] == 3
    assert results["mistake_severity"] == pytest.approx((1 + 2 + 3) / 3)
    # Top-2 per row: (2, 1) vs 1 -> 1, 0; (1, 0) vs 0 -> 2, 0; (3, 5) vs 0 -> 3, 3; (4, 5) vs 4 -> 0, 1;
    # (2, 1) vs 2 -> 0, 1.
    assert results["top2_average_distance"] == pytest.approx((1 + 0 + 2 + 0 + 3 + 3 + 0 + 1 + 0 + 1) / 10)
    assert "path_consistency" not in results  # needs the coarser levels' own predictions
    json.dumps(results)

    # The same set as class ids gives the same severity; every answer right leaves severity out (no mistakes).
    ids = metric.compute(predictions=[2, 1, 3, 4, 2], references=references,
                         hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE])
    assert ids["mistake_severity"] == pytest.approx(2.0)
    perfect = metric.compute(predictions=references, references=references,
                             hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE])
    assert perfect["num_mistakes"] == 0 and "mistake_severity" not in perfect


def test_severity_over_two_levels_counts_a_root_above_the_coarse_level(metric):
    # Fine {0, 1} -> 0, {2, 3} -> 1: a sibling is 1 away, a class of the other parent 2.
    results = metric.compute(predictions=[1, 2, 3, 0], references=[0, 0, 3, 3], hierarchy_parents=[[0, 0, 1, 1]])
    assert results["mistake_severity"] == pytest.approx((1 + 2 + 2) / 3)


def test_path_consistency_of_a_hand_made_set(metric):
    fine = [2, 1, 3, 4, 2]  # ancestors: middle 1, 1, 2, 3, 1; coarse 0, 0, 1, 2, 0
    middle = [1, 1, 2, 3, 0]  # row 4 disagrees with its fine prediction's parent
    coarse = [0, 0, 0, 2, 0]  # row 2 disagrees with its fine prediction's grandparent
    results = metric.compute(predictions=fine, references=[0] * 5, hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE],
                             coarser_predictions=[coarse, middle])
    assert results["path_consistency"] == pytest.approx(3 / 5)
    consistent = metric.compute(predictions=fine, references=[0] * 5,
                                hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE],
                                coarser_predictions=[[0, 0, 1, 2, 0], [1, 1, 2, 3, 1]])
    assert consistent["path_consistency"] == 1.0


def test_path_consistency_needs_one_list_per_coarser_level(in_memory_metric):
    with pytest.raises(ValueError, match="coarser_predictions has 1 levels"):
        in_memory_metric.compute(predictions=[0], references=[0], hierarchy_parents=[PARENT_OF_MIDDLE, PARENT_OF_FINE],
                                 coarser_predictions=[[0]])
    with pytest.raises(ValueError, match="coarser_predictions needs hierarchy_parents"):
        in_memory_metric.compute(predictions=[0], references=[0], coarser_predictions=[[0]])


# Two coarse classes A {a1, a2} and B {b1}.
TWO_LEVEL_TREE = {"hierarchy_levels": ["coarse", "fine"], "hierarchy_class_names": [["A", "B"], ["a1", "a2", "b1"]],
                  "hierarchy_parents": [[0, 0, 1]]}


def test_tree_results_of_hand_made_joint_heads(in_memory_metric):
    """Three images whose heads disagree in two of them: the heads' own answers and the decided path."""
    from configuration_vit_yoga import ViTYogaConfig
    from vit_yoga.evaluation import DECODINGS, tree_results

    joint = ViTYogaConfig(**TWO_LEVEL_TREE, hierarchy_combination="product")
    coarse = np.array([[5, 0], [0, 5], [5, 0]], dtype=np.float32)  # A, B, A
    fine = np.array([[0, 3, 0], [3, 0, 0], [0, 0, 3]], dtype=np.float32)  # a2, a1 (under A), b1 (under B)
    references = np.array([[0, 1], [1, 2], [1, 2]])  # a2, b1, b1
    results = tree_results(joint, (coarse, fine), references, in_memory_metric)
    assert results["levels"] == ["coarse", "fine"]
    # What a user reads: each head's own answer and the decided path; the other readings are the benchmark's.
    assert list(results["decodings"]) == list(DECODINGS) == ["heads", "path"]
    heads = results["decodings"]["heads"]
    assert heads["levels"]["coarse"] == {"accuracy": pytest.approx(2 / 3), "top5_accuracy": 1.0}
    assert heads["levels"]["fine"] == {"accuracy": pytest.approx(2 / 3), "top5_accuracy": 1.0}
    assert heads["path_consistency"] == pytest.approx(1 / 3)  # rows 1 and 2: a pose under another body position
    assert heads["mistake_severity"] == 2.0 and heads["num_mistakes"] == 1  # a1 for b1: another coarse class
    # Top 5 of 3 classes: all of them, at distances (1 + 0 + 2) / 3 from a2 and (2 + 2 + 0) / 3 from b1 (twice).
    assert heads["top5_average_distance"] == pytest.approx((1 + 4 / 3 + 4 / 3) / 3)
    # The product of the heads: row 1 gives b1 (B's 5 outweighs a1's 3), row 2 gives a1 (A's 5 outweighs b1's 3;
    # a1 and a2 tie, the lower id wins): one mistake, at distance 2, and a path every time.
    path = results["decodings"]["path"]
    assert path["levels"] == {"coarse": {"accuracy": pytest.approx(2 / 3)}, "fine": {"accuracy": pytest.approx(2 / 3)}}
    assert path["path_consistency"] == 1.0
    assert path["mistake_severity"] == 2.0 and path["num_mistakes"] == 1
    json.dumps(results)

    # An image whose coarse head is sure of B while its fine head is sure of a1 (the truth): the heads answer a1; the
    # product rule's path follows B (p(A) p(a1) = 0.0061 < p(B) p(b1) = 0.045).
    sure_b, sure_a1 = np.array([[0, 5]], dtype=np.float32), np.array([[3, 0, 0]], dtype=np.float32)
    split = tree_results(joint, (sure_b, sure_a1), np.array([[0, 0]]), in_memory_metric)["decodings"]
    assert split["heads"]["levels"]["fine"]["accuracy"] == 1.0
    assert split["path"]["levels"]["fine"]["accuracy"] == 0.0


def test_tree_results_of_a_one_head_model_decide_the_most_probable_path(in_memory_metric):
    """A one-head model: its head answers its own level only; the path is its softmax's argmax and the ancestors."""
    from configuration_vit_yoga import ViTYogaConfig
    from vit_yoga.evaluation import tree_results

    one_head = ViTYogaConfig(**TWO_LEVEL_TREE, label_level="fine")
    # Row 0: a2. Row 1: a1 0.3, a2 0.3, b1 0.4: the most probable pose is b1 (the truth), though A's subtree holds
    # 0.6 (decision="risk" would answer a1 there: 0.3 + 0.6 > 0.4 + 0.4). Row 2: a1, for b1.
    fine = np.log(np.array([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.7, 0.2, 0.1]], dtype=np.float32))
    results = tree_results(one_head, fine, np.array([1, 2, 2]), in_memory_metric)
    heads, path = results["decodings"]["heads"], results["decodings"]["path"]
    assert list(heads["levels"]) == ["fine"] and "path_consistency" not in heads
    assert heads["levels"]["fine"]["accuracy"] == pytest.approx(2 / 3)
    assert path["levels"]["coarse"]["accuracy"] == pytest.approx(2 / 3)  # A, B, A against A, B, B
    assert path["levels"]["fine"]["accuracy"] == pytest.approx(2 / 3)
    assert path["path_consistency"] == 1.0 and path["mistake_severity"] == 2.0
    assert tree_results(ViTYogaConfig(num_labels=3), fine, np.array([1, 2, 2]), in_memory_metric) == {}


def test_the_model_card_shows_the_heads_and_the_decided_path(in_memory_metric, tmp_path):
    from configuration_vit_yoga import ViTYogaConfig
    from vit_yoga.card import hierarchy_section
    from vit_yoga.evaluation import tree_results

    joint = ViTYogaConfig(**TWO_LEVEL_TREE, hierarchy_combination="product")
    coarse = np.array([[5, 0], [0, 5], [5, 0]], dtype=np.float32)
    fine = np.array([[0, 3, 0], [3, 0, 0], [0, 0, 3]], dtype=np.float32)
    tree = tree_results(joint, (coarse, fine), np.array([1, 2, 2]), in_memory_metric)
    # The results JSON as Trainer.save_metrics writes it (sorted keys), read back by the card.
    (tmp_path / "test_results.json").write_text(json.dumps({"test_hierarchy": tree}, sort_keys=True))
    section = hierarchy_section(tmp_path, {"test": {}})
    assert "### Along the label tree" in section and "**test**" in section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows == [
        "| answer | coarse top-1 | fine top-1 | path consistency | mistake severity | top-5 mean distance |",
        "| heads | 0.667 | 0.667 | 0.333 | 2.000 | 1.222 |",
        "| path | 0.667 | 0.667 | 1.000 | 2.000 | - |",
    ]
    for dropped in ("marginalised", "combined", "risk", "most_probable_path", "minimum_risk_path"):
        assert f"**{dropped}**" not in section and f"`{dropped}`" not in section
    assert "bench_hierarchy.py" in section  # where the other readings are compared
    assert hierarchy_section(tmp_path, {"validation": {}}) == ""  # no eval_results.json: no section
