"""Tree-consistent predictions: the hierarchy API of modeling_vit_yoga.py (tree_probabilities), the path decisions
of answers_vit_yoga.py (LabelTree.decide) and the hierarchical pipeline.

The numbers are the ones probability theory gives: a coarse class's probability is its children's sum, a path is as
probable as its finest node, and the decoded path of a hand-built output is the one worked out by hand below.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT

import yoga82
from answers_vit_yoga import LabelTree
from configuration_vit_yoga import DEFAULT_HIERARCHY_COMBINATION, HIERARCHY_COMBINATIONS, ViTYogaConfig
from modeling_vit_yoga import (
    ViTYogaForHierarchicalClassification,
    ViTYogaForImageClassification,
    predicted_levels,
    tree_probabilities,
)
from pipeline_vit_yoga import describe_tree_prediction

TINY = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64)
# A three-level toy tree: a0 -> {b0, b1}, a1 -> {b2}; b0 -> {c0}, b1 -> {c1}, b2 -> {c2, c3}.
TOY_TREE = dict(hierarchy_levels=["a", "b", "c"],
                hierarchy_class_names=[["a0", "a1"], ["b0", "b1", "b2"], ["c0", "c1", "c2", "c3"]],
                hierarchy_parents=[[0, 0, 1], [0, 1, 2, 2]])


def yoga_config(**overrides) -> ViTYogaConfig:
    return ViTYogaConfig(**{**TINY, **yoga82.hierarchy(), **overrides})


def random_heads(config: ViTYogaConfig, batch: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, generator=generator) * 3 for n in config.hierarchy_sizes)


def decide(config: ViTYogaConfig, probabilities, decision: str = "probability") -> tuple[np.ndarray, np.ndarray]:
    """The decided paths of ``tree_probabilities``' output, as the pipeline decides them (``LabelTree.decide``)."""
    tree = LabelTree.from_config(config, predicted_levels(config))
    return tree.decide([p.numpy() for p in probabilities], decision)


def children_sums(config: ViTYogaConfig, fine: torch.Tensor, depth: int) -> torch.Tensor:
    """Each class of level ``depth - 1``'s children's total, by a plain loop over the parent list."""
    sums = torch.zeros(fine.shape[0], config.hierarchy_sizes[depth - 1], dtype=fine.dtype)
    for child, parent in enumerate(config.hierarchy_parents[depth - 1]):
        sums[:, parent] += fine[:, child]
    return sums


# ---------------------------------------------------------------- levels


def test_predicted_levels_of_each_kind_of_checkpoint():
    assert predicted_levels(yoga_config()) == ["label_6", "label_20", "label_82"]  # joint
    assert predicted_levels(yoga_config(label_level="label_82")) == ["label_6", "label_20", "label_82"]
    assert predicted_levels(yoga_config(label_level="label_20")) == ["label_6", "label_20"]
    assert predicted_levels(yoga_config(label_level="label_6")) == ["label_6"]
    assert predicted_levels(ViTYogaConfig(**TINY, num_labels=10)) == ["label"]


# ---------------------------------------------------------------- tree probabilities


@pytest.mark.parametrize("rule", HIERARCHY_COMBINATIONS)
def test_joint_probabilities_sum_to_one_and_each_parent_is_its_childrens_sum(rule):
    config = yoga_config()
    probabilities = tree_probabilities(config, random_heads(config), rule=rule)
    assert [p.shape for p in probabilities] == [(5, 6), (5, 20), (5, 82)]
    for p in probabilities:
        torch.testing.assert_close(p.sum(-1), torch.ones(5))
        assert (p >= 0).all()
    for depth in (1, 2):
        torch.testing.assert_close(probabilities[depth - 1], children_sums(config, probabilities[depth], depth))


@pytest.mark.parametrize("level, sizes", [("label_82", [6, 20, 82]), ("label_20", [6, 20]), ("label_6", [6])])
def test_a_one_head_model_gives_its_level_and_those_above(level, sizes):
    config = yoga_config(label_level=level)
    logits = torch.randn(4, sizes[-1], generator=torch.Generator().manual_seed(1))
    probabilities = tree_probabilities(config, logits)
    assert [p.shape[-1] for p in probabilities] == sizes
    torch.testing.assert_close(probabilities[-1], logits.softmax(-1))  # its own level: the head's softmax
    for depth in range(1, len(sizes)):
        torch.testing.assert_close(probabilities[depth - 1], children_sums(config, probabilities[depth], depth))


def test_a_model_without_hierarchy_gives_its_softmax():
    config = ViTYogaConfig(**TINY, num_labels=7)
    logits = torch.randn(3, 7)
    (probabilities,) = tree_probabilities(config, logits)
    torch.testing.assert_close(probabilities, logits.softmax(-1))
    path, score = decide(config, (probabilities,))
    assert path.shape == (3, 1) and path[:, 0].tolist() == logits.argmax(-1).tolist()


def test_wrong_shapes_are_refused_with_the_expected_shape():
    config = yoga_config()
    with pytest.raises(ValueError, match=r"\(batch, 82\)"):
        tree_probabilities(config, torch.randn(2, 20))
    with pytest.raises(ValueError, match="one per level"):
        tree_probabilities(config, random_heads(config)[:2])
    with pytest.raises(ValueError, match="Unknown hierarchy combination"):
        tree_probabilities(config, random_heads(config), rule="mean")


@pytest.mark.parametrize("decision", ["probability", "risk"])
def test_a_paths_probability_is_at_most_each_of_its_nodes_marginals(decision):
    config = yoga_config()
    probabilities = [p.numpy() for p in tree_probabilities(config, random_heads(config, batch=64, seed=3))]
    path, score = decide(config, [torch.from_numpy(p) for p in probabilities], decision)
    assert path.shape == (64, 3) and score.shape == (64,)
    for depth in (1, 2):  # each node's parent is the one the tree gives
        parents = np.asarray(config.hierarchy_parents[depth - 1])
        assert (parents[path[:, depth]] == path[:, depth - 1]).all()
    rows = np.arange(64)
    for depth, p in enumerate(probabilities):
        assert (score <= p[rows, path[:, depth]] + 1e-6).all()
    np.testing.assert_allclose(score, probabilities[-1][rows, path[:, -1]])
    if decision == "probability":  # the most probable finest class
        assert (path[:, -1] == probabilities[-1].argmax(-1)).all()


# ---------------------------------------------------------------- the combination rules, by hand


def toy_heads() -> tuple[torch.Tensor, ...]:
    """Three heads that disagree: level a says a1 (0.6), level b says b0 (0.5, under a0), level c says c1 (0.45,
    under b1)."""
    return tuple(torch.tensor([p]).log() for p in ([0.4, 0.6], [0.5, 0.3, 0.2], [0.1, 0.45, 0.25, 0.2]))


# Worked by hand. product: c0 0.4*0.5*0.1 = 0.02, c1 0.4*0.3*0.45 = 0.054, c2 0.6*0.2*0.25 = 0.03,
# c3 0.6*0.2*0.2 = 0.024; total 0.128. chain (each head renormalised among its siblings): c0 0.4*(0.5/0.8)*1 = 0.25,
# c1 0.4*(0.3/0.8)*1 = 0.15, c2 0.6*1*(0.25/0.45) = 1/3, c3 0.6*1*(0.2/0.45) = 4/15. finest: the c head alone.
@pytest.mark.parametrize("rule, leaves, path", [
    ("product", [0.02 / 0.128, 0.054 / 0.128, 0.03 / 0.128, 0.024 / 0.128], [0, 1, 1]),
    ("chain", [0.25, 0.15, 1 / 3, 4 / 15], [1, 2, 2]),
    ("finest", [0.1, 0.45, 0.25, 0.2], [0, 1, 1]),
])
def test_disagreeing_heads_decode_to_the_path_the_rule_says(rule, leaves, path):
    config = ViTYogaConfig(**TINY, **TOY_TREE)
    a, b, c = tree_probabilities(config, toy_heads(), rule=rule)
    torch.testing.assert_close(c, torch.tensor([leaves]))
    decided, score = decide(config, (a, b, c))
    assert decided.tolist() == [path]
    assert score.item() == pytest.approx(max(leaves), abs=1e-6)
    # The product outvotes the coarsest head: a0 carries 0.074 / 0.128 of the mass although the a head says a1.
    if rule == "product":
        assert a.tolist()[0] == pytest.approx([0.074 / 0.128, 0.054 / 0.128], abs=1e-6)
    if rule == "chain":  # the chain rule keeps the coarsest head's probabilities exactly
        assert a.tolist()[0] == pytest.approx([0.4, 0.6], abs=1e-6)


def tree_distance(config: ViTYogaConfig, x: int, y: int) -> int:
    """Levels below the lowest common ancestor of two finest classes (Bertinetto et al. 2020's LCA height)."""
    chains = config.ancestors(config.hierarchy_levels[-1])
    agree = 0
    while agree < len(chains[x]) and chains[x][agree] == chains[y][agree]:
        agree += 1
    return len(chains[x]) - agree


def test_conditional_risk_minimisation_picks_the_class_of_least_expected_tree_distance():
    """Leaves c0 0.4, c1 0, c2 0.32, c3 0.28: c0 is the most probable, but a1's subtree holds 0.6. Expected distances
    (d = 3 across a0/a1, 2 between c0 and c1, 1 between c2 and c3): c0 0.32*3 + 0.28*3 = 1.8, c1 0.4*2 + 0.6*3 = 2.6,
    c2 0.4*3 + 0.28*1 = 1.48, c3 0.4*3 + 0.32*1 = 1.52: CRM answers c2 (Karthik et al. 2021)."""
    config = ViTYogaConfig(**TINY, **TOY_TREE)
    leaves = torch.tensor([[0.4, 0.0, 0.32, 0.28]])
    probabilities = tree_probabilities(config, leaves.clamp_min(1e-12).log())
    risks = [sum(leaves[0, j].item() * tree_distance(config, c, j) for j in range(4)) for c in range(4)]
    assert risks == pytest.approx([1.8, 2.6, 1.48, 1.52])
    path, score = decide(config, probabilities, "risk")
    assert path.tolist() == [[1, 2, 2]] and score.item() == pytest.approx(0.32, abs=1e-6)
    path, score = decide(config, probabilities, "probability")
    assert path.tolist() == [[0, 0, 0]] and score.item() == pytest.approx(0.4, abs=1e-6)


# ---------------------------------------------------------------- the models


def test_joint_models_logits_are_the_combined_finest_log_probabilities():
    torch.manual_seed(0)
    config = yoga_config()
    model = ViTYogaForHierarchicalClassification(config).eval()
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        output = model(pixels)
    combined = tree_probabilities(config, output.level_logits)
    torch.testing.assert_close(output.logits.softmax(-1), combined[-1])
    torch.testing.assert_close(output.logits.exp().sum(-1), torch.ones(3))  # log-probabilities, not raw scores
    for got, expected in zip(tree_probabilities(config, output.logits), combined, strict=True):
        torch.testing.assert_close(got, expected)  # the plain `logits` give the same tree as the heads
    for got, expected in zip(model.tree_probabilities(pixels), combined, strict=True):
        torch.testing.assert_close(got, expected)
    finest = ViTYogaForHierarchicalClassification(yoga_config(hierarchy_combination="finest")).eval()
    finest.load_state_dict(model.state_dict())
    with torch.no_grad():
        raw = finest(pixels)
    torch.testing.assert_close(raw.logits, raw.level_logits[-1])  # "finest": the head's own raw logits


def test_one_head_model_tree_probabilities():
    config = yoga_config(label_level="label_20")
    model = ViTYogaForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    coarse, fine = model.tree_probabilities(pixels)
    with torch.no_grad():
        torch.testing.assert_close(fine, model(pixels).logits.softmax(-1))
    torch.testing.assert_close(coarse, children_sums(config, fine, 1))


def test_a_config_json_naming_a_rule_that_does_not_exist_is_refused_naming_those_that_do(tmp_path):
    assert HIERARCHY_COMBINATIONS == ("finest", "product", "chain")  # "geometric" was dropped: it never measured best
    yoga_config(hierarchy_combination="finest").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hierarchy_combination"] == "finest"
    assert ViTYogaConfig.from_pretrained(tmp_path).hierarchy_combination == "finest"
    (tmp_path / "config.json").write_text(json.dumps(dict(saved, hierarchy_combination="geometric")))
    message = (r"hierarchy_combination 'geometric' is unknown; choose one of \['finest', 'product', 'chain'\] "
               rf"\(the default: '{DEFAULT_HIERARCHY_COMBINATION}'\)")
    with pytest.raises(ValueError, match=message):
        ViTYogaConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Unknown hierarchy combination 'geometric'"):
        tree_probabilities(yoga_config(), random_heads(yoga_config()), rule="geometric")


# ---------------------------------------------------------------- what the pipeline answers


def test_describe_tree_prediction_gives_the_contracts_format():
    config = ViTYogaConfig(**TINY, **TOY_TREE)
    probabilities = tree_probabilities(config, toy_heads(), rule="product")
    (answer,) = describe_tree_prediction(config, probabilities, top_k=2)
    assert list(answer) == ["levels", "path", "path_score"]
    assert list(answer["levels"]) == ["a", "b", "c"]
    assert [d["label"] for d in answer["levels"]["c"]] == ["c1", "c2"]  # top 2, best first
    assert len(answer["levels"]["a"]) == 2  # top_k capped at the level's 2 classes
    assert [(n["level"], n["label"]) for n in answer["path"]] == [("a", "a0"), ("b", "b1"), ("c", "c1")]
    assert [n["score"] for n in answer["path"]] == pytest.approx([0.074 / 0.128, 0.054 / 0.128, 0.054 / 0.128])
    assert answer["path_score"] == pytest.approx(0.054 / 0.128)
    assert all(isinstance(n["score"], float) for n in answer["path"])
    (risk,) = describe_tree_prediction(config, probabilities, decision="risk")
    assert [n["label"] for n in risk["path"]] == ["a0", "b1", "c1"]  # the same here: a0 holds most of the mass
    with pytest.raises(ValueError, match="decision='cheapest' is unknown"):
        describe_tree_prediction(config, probabilities, decision="cheapest")


def test_tree_probabilities_traces_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    config = yoga_config()

    class Decoder(torch.nn.Module):
        def forward(self, a, b, c):
            return tree_probabilities(config, (a, b, c))

    heads = random_heads(config, batch=2)
    path = tmp_path / "tree.onnx"
    torch.onnx.export(Decoder(), heads, str(path), input_names=["a", "b", "c"], dynamo=False,
                      dynamic_axes={name: {0: "batch"} for name in "abc"})
    onnx.checker.check_model(onnx.load(str(path)))
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = random_heads(config, batch=3, seed=7)  # another batch size: nothing was frozen at tracing
    got = session.run(None, {name: h.numpy() for name, h in zip("abc", other, strict=True)})
    for g, expected in zip(got, tree_probabilities(config, other), strict=True):
        torch.testing.assert_close(torch.from_numpy(g), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the pipeline, from a saved folder


def save_checkpoint(folder, kind: str, spread: float | None = 2.0) -> ViTYogaConfig:
    """A tiny random checkpoint saved as train.py saves one: weights, config (id2label: its finest level's names),
    image processor, the hierarchical pipeline. ``spread``: the heads' weight std (large: clear-cut rankings)."""
    from modeling_vit_yoga import vit_yoga_image_processor
    from vit_yoga.models import save_hierarchical_pipeline

    level = {"fine": "label_82", "coarse": "label_20", "joint": None}[kind]
    names = yoga82.hierarchy()["hierarchy_class_names"][1 if kind == "coarse" else 2]
    config = yoga_config(label_level=level, id2label=dict(enumerate(names)))
    model_class = ViTYogaForHierarchicalClassification if kind == "joint" else ViTYogaForImageClassification
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        for head in ([model.classifier] if kind != "joint" else model.classifiers):
            head.weight.normal_(0, spread or config.initializer_range)
    model.save_pretrained(folder)
    vit_yoga_image_processor(config).save_pretrained(folder)
    save_hierarchical_pipeline(folder)
    return config


def test_the_custom_pipelines_entry_is_what_transformers_pipeline_registry_writes(tmp_path):
    from transformers import AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    import pipeline_vit_yoga
    from modeling_vit_yoga import vit_yoga_image_processor

    ours = tmp_path / "ours"
    config = save_checkpoint(ours, "joint")
    model = ViTYogaForHierarchicalClassification.from_pretrained(ours)
    PIPELINE_REGISTRY.register_pipeline(pipeline_vit_yoga.PIPELINE_TASK,
                                        pipeline_vit_yoga.HierarchicalImageClassificationPipeline,
                                        pt_model=AutoModelForImageClassification, type="image")
    try:
        pipe = pipeline_vit_yoga.HierarchicalImageClassificationPipeline(
            model=model, image_processor=vit_yoga_image_processor(config))
        pipe.save_pretrained(tmp_path / "theirs")
    finally:
        PIPELINE_REGISTRY.supported_tasks.pop(pipeline_vit_yoga.PIPELINE_TASK, None)
        del pipeline_vit_yoga.HierarchicalImageClassificationPipeline._registered_impl
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())["custom_pipelines"]
    assert json.loads((ours / "config.json").read_text())["custom_pipelines"] == theirs
    assert (ours / "pipeline_vit_yoga.py").read_bytes() == (tmp_path / "theirs" / "pipeline_vit_yoga.py").read_bytes()


FRESH_PIPELINE = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

image_path, folders = sys.argv[1], sys.argv[2:]
image = Image.open(image_path)
answers = {}
for folder in folders:
    classify = pipeline("hierarchical-image-classification", model=folder, trust_remote_code=True)
    plain = pipeline("image-classification", model=folder, trust_remote_code=True)
    answers[folder] = {
        "class": type(classify).__module__ + "." + type(classify).__name__,
        "path": classify(image_path),
        "pil": classify(image, top_k=3),
        "risk": classify(image, decision="risk"),
        "batch": classify([image_path, image, image_path], batch_size=2, top_k=3),
        "plain": plain(image_path, top_k=1)[0]["label"],
    }
print("ANSWERS" + json.dumps(answers))
"""


@pytest.mark.slow
def test_the_pipeline_loads_in_a_fresh_process_for_fine_coarse_and_joint_checkpoints(tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    folders, configs = {}, {}
    for kind in ("fine", "coarse", "joint"):
        folders[kind] = tmp_path / kind
        configs[kind] = save_checkpoint(folders[kind], kind)
    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image_path)
    # Run outside the repository, so that only the folders' own code can be imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", FRESH_PIPELINE, str(image_path), *map(str, folders.values())],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.split("ANSWERS", 1)[1])

    for kind, folder in folders.items():
        answer, config = answers[str(folder)], configs[kind]
        assert answer["class"].startswith("transformers_modules.") and answer["class"].endswith(
            "pipeline_vit_yoga.HierarchicalImageClassificationPipeline")  # the folder's code, not this repo's
        levels = predicted_levels(config)
        # What the API computes here on the same image, prepared by the same processor.
        model_class = ViTYogaForHierarchicalClassification if kind == "joint" else ViTYogaForImageClassification
        model = model_class.from_pretrained(folder).eval()
        pixels = AutoImageProcessor.from_pretrained(folder)(Image.open(image_path), return_tensors="pt")
        expected = model.tree_probabilities(pixels["pixel_values"])
        ids, score = decide(config, expected)
        names = [config.hierarchy_class_names[d] for d in range(len(levels))]

        single = answer["path"]
        assert list(single["levels"]) == levels
        assert [len(v) for v in single["levels"].values()] == [min(5, len(n)) for n in names]  # top_k=5 default
        assert [n["level"] for n in single["path"]] == levels
        assert [n["label"] for n in single["path"]] == [names[d][i] for d, i in enumerate(ids[0].tolist())]
        assert single["path_score"] == pytest.approx(score.item(), abs=1e-5)
        assert single["path"][-1]["score"] == pytest.approx(single["path_score"])
        for depth, level in enumerate(levels):
            top = single["levels"][level]
            assert top[0]["score"] == pytest.approx(expected[depth].max().item(), abs=1e-5)
            assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        assert [len(v) for v in answer["pil"]["levels"].values()] == [min(3, len(n)) for n in names]
        # A PIL image and its file are the same image.
        assert [n["label"] for n in answer["pil"]["path"]] == [n["label"] for n in single["path"]]
        assert answer["pil"]["path_score"] == pytest.approx(single["path_score"], abs=1e-5)
        assert len(answer["batch"]) == 3
        assert answer["batch"][0]["path_score"] == pytest.approx(answer["batch"][1]["path_score"], abs=1e-4)
        assert [n["label"] for n in answer["batch"][2]["path"]] == [n["label"] for n in single["path"]]
        risk_ids, _ = decide(config, expected, "risk")
        assert [n["label"] for n in answer["risk"]["path"]] == [names[d][i] for d, i in enumerate(risk_ids[0].tolist())]
        # The plain image-classification pipeline still names the finest level: the decided path's finest class.
        assert answer["plain"] == single["path"][-1]["label"]


def test_bench_hierarchy_compares_the_heads_the_rules_and_both_decisions_by_hand():
    """The comparison the results JSON leaves to benchmarks/bench_hierarchy.py, on the hand-worked toys above."""
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import bench_hierarchy

    truth = torch.tensor([[1, 2, 2]])  # c2, under b2, under a1
    joint = ViTYogaConfig(**TINY, **TOY_TREE)  # the default rule, chain
    rows = {row["method"]: row for measure in bench_hierarchy.MEASUREMENTS
            for row in measure(joint, toy_heads(), truth)}
    assert list(rows) == ["heads (independent)", *HIERARCHY_COMBINATIONS, "decision=probability (chain)",
                          "decision=risk (chain)"]
    heads = rows["heads (independent)"]  # a1, b0, c1: b0 is not under a1
    assert (heads["a top-1"], heads["b top-1"], heads["c top-1"], heads["consistency"]) == (1.0, 0.0, 0.0, 0.0)
    # The decided paths worked out by hand above: c1 for finest and product, c2 (the truth) for chain.
    for rule, right in (("finest", 0.0), ("product", 0.0), ("chain", 1.0)):
        assert [rows[rule][f"path {level} top-1"] for level in "abc"] == [right] * 3
        assert rows[rule]["path consistency"] == 1.0
    assert rows["chain"]["c log-loss"] == pytest.approx(-math.log(1 / 3), abs=1e-5)
    assert bench_hierarchy.best_rule(list(rows.values()), "c") == "chain"
    # The conditional-risk toy, as a one-head model of level c: the most probable pose c0 is in the other body
    # position (distance 3); risk answers c2, the truth.
    one_head = ViTYogaConfig(**TINY, **TOY_TREE, label_level="c")
    logits = (torch.tensor([[0.4, 0.0, 0.32, 0.28]]).clamp_min(1e-12).log(),)
    rows = {row["method"]: row for row in bench_hierarchy.decision_rows(one_head, logits, truth)}
    assert rows["decision=probability (marginalised)"] == {"method": "decision=probability (marginalised)",
                                                           "a top-1": 0.0, "b top-1": 0.0, "c top-1": 0.0,
                                                           "severity": 3.0, "mean distance": 3.0}
    assert rows["decision=risk (marginalised)"] == {"method": "decision=risk (marginalised)", "a top-1": 1.0,
                                                    "b top-1": 1.0, "c top-1": 1.0, "severity": 0.0,
                                                    "mean distance": 0.0}


def test_a_checkpoint_without_hierarchy_answers_its_one_level():
    config = ViTYogaConfig(**TINY, id2label={0: "cat", 1: "dog", 2: "fox"})
    probabilities = tree_probabilities(config, torch.tensor([[0.0, 2.0, 1.0]]))
    (answer,) = describe_tree_prediction(config, probabilities, top_k=2)
    assert [d["label"] for d in answer["levels"]["label"]] == ["dog", "fox"]
    expected = torch.tensor([0.0, 2.0, 1.0]).softmax(-1)[1].item()
    assert answer["path"] == [{"level": "label", "label": "dog", "score": pytest.approx(expected)}]
    assert answer["path_score"] == pytest.approx(expected)


@pytest.mark.slow
def test_checkpoints_of_both_classifiers_with_one_folder_name_load_as_their_own_class(tmp_path):
    """transformers maps a remote config class to one model class; both classifiers share ViTYogaConfig, so without
    ViTYogaPreTrainedModel.register_for_auto_class the first checkpoint loaded decided the class of the next one with
    the same code and folder name (a joint model built from a one-head config: a ValueError; the reverse: KeyError in
    the pipeline). A fresh process, so that no earlier load in this one decides."""
    from conftest import save_tiny_checkpoint

    for kind, level in (("joint", None), ("fine", "label_82"), ("coarse", "label_6")):
        save_tiny_checkpoint(tmp_path / kind / "model", label_level=level)
    code = (
        "import sys\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        "from PIL import Image\n"
        "photo = Image.new('RGB', (40, 30), (120, 60, 30))\n"
        "for kind, expected in (('joint', 'ViTYogaForHierarchicalClassification'),\n"
        "                       ('fine', 'ViTYogaForImageClassification'),\n"
        "                       ('joint', 'ViTYogaForHierarchicalClassification'),\n"
        "                       ('coarse', 'ViTYogaForImageClassification')):\n"
        "    folder = f'{sys.argv[1]}/{kind}/model'\n"
        "    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)\n"
        "    assert type(model).__name__ == expected, (kind, type(model).__name__)\n"
        "    top = pipeline('image-classification', model=folder, trust_remote_code=True)(photo, top_k=1)[0]\n"
        "    assert top['label'] in model.config.id2label.values(), top\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
