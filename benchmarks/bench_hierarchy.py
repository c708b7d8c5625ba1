"""Tree-consistent predictions measured: each level's top-1 from a checkpoint's heads, marginalised and combined, the
path consistency, and the mistake severity of the two decisions, on a data set's validation and test splits.

    python train.py --label_level all --output_dir runs/all          # a joint model (synthetic poses, ~6 min CPU)
    python benchmarks/bench_hierarchy.py --models runs/all --json runs/bench_hierarchy.json
    python benchmarks/bench_hierarchy.py --models runs/all runs/level3 --dataset_name data/real-photos

For each checkpoint (a folder train.py wrote) and split, one forward pass over the images (prepared as the
image-classification pipeline prepares them), then, from the same logits:

- ``heads_rows``: a joint model's heads, each level's argmax on its own; the path consistency is the share of images
  whose three answers form a path of the tree (a pose under its own variation under its own body position).
- ``combination_rows``: ``tree_probabilities`` with each rule of ``HIERARCHY_COMBINATIONS`` (a one-head model: its
  softmax marginalised up the tree): each level's top-1 of the marginals, the consistency of those argmaxes, the
  finest level's log-loss, and the top-1 at each level of the decided path (consistent by construction).
- ``decision_rows``: the most probable path against conditional risk minimisation (``decision="risk"``), both
  ``answers_vit_yoga.LabelTree.decide`` (what the pipeline answers): each level's top-1 of the decided path and the
  mistake severity (mean tree distance of the wrong answers: 1 = same variation, 2 = same body position, 3 =
  another; Bertinetto et al. 2020).

The training run's results JSON and model card keep only what a user reads (the heads, the decided path); this is
where the other readings (the finest head marginalised, each rule, the risk decision) are compared.

The rule with the best finest-level top-1 on validation (then the lowest log-loss) is the one to make the default
(``ViTYogaConfig.hierarchy_combination``). Each measurement is a function returning rows, so rows can be added (the
real photos, a level-3 model) without touching the others.

``same-budget`` trains the two models to compare, with the same flags, then measures both (``same_budget_rows``):

    python benchmarks/bench_hierarchy.py same-budget --dataset_name synthetic --work_dir runs/same-budget-synthetic
    python benchmarks/bench_hierarchy.py same-budget --dataset_name data/real-photos --work_dir runs/same-budget-real \
        -- --model_preset vit-pico --per_device_train_batch_size 32 --num_train_epochs 40

a joint model (``--label_level all``) and a level-3 model, each trained by train.py with the flags after ``--``
(none: the out-of-the-box run), then every measurement above on each, and the targets: the combined joint model's
level-3 top-1 at least its finest head's and at least the level-3 model's; its decided paths 100 % consistent.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "benchmarks"))

from common import finish, run_script  # noqa: E402

from answers_vit_yoga import LabelTree  # noqa: E402
from configuration_vit_yoga import HIERARCHY_COMBINATIONS, ViTYogaConfig  # noqa: E402
from modeling_vit_yoga import predicted_levels, tree_probabilities  # noqa: E402

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------------- predictions
def load_splits(dataset_name: str, splits: list[str]) -> dict[str, Any]:
    """The data set's splits exactly as train.py builds them (the same held-out validation where there is none)."""
    from vit_yoga.arguments import parse_arguments
    from vit_yoga.data import load_image_dataset

    with tempfile.TemporaryDirectory() as output_dir:
        run = parse_arguments(["--dataset_name", dataset_name, "--label_level", "all", "--output_dir", output_dir])
        dataset = load_image_dataset(run.data, run.training)
    return {split: dataset[split] for split in splits if split in dataset}


def predict(model_dir: str | Path, dataset, batch_size: int = 128) -> tuple[ViTYogaConfig, tuple[torch.Tensor, ...],
                                                                           torch.Tensor]:
    """The checkpoint's raw logits on every image (a joint model: one tensor per head; else one) and the labels
    (N, levels of the data set, coarsest first), images prepared as the pipeline prepares them."""
    import datasets
    from transformers import AutoImageProcessor

    import modeling_vit_yoga
    from vit_yoga.data import find_image_column
    from vit_yoga.transforms import BatchTransform, EvaluationTransform, collate

    # This repository's model code, not the folder's copy: the numbers are those of the code being measured.
    config = ViTYogaConfig.from_pretrained(model_dir)
    model_class = getattr(modeling_vit_yoga, (config.architectures or ["ViTYogaForImageClassification"])[0])
    model = model_class.from_pretrained(model_dir, config=config).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    levels = config.hierarchy_levels
    for level, names in zip(levels, config.hierarchy_class_names, strict=True):
        if list(dataset.features[level].names) != list(names):
            raise SystemExit(f"error: the data set's {level} classes differ from {model_dir}'s; evaluate a "
                             "checkpoint on the data set it was trained for.")
    image_column = find_image_column(dataset.features, None)
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset.set_transform(BatchTransform(EvaluationTransform(processor), image_column, levels))
    outputs: list[tuple[torch.Tensor, ...]] = []
    labels = []
    with torch.inference_mode():
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate),
                          desc=f"{Path(model_dir).name}", leave=False):
            out = model(pixel_values=batch["pixel_values"])
            level_logits = getattr(out, "level_logits", None)
            outputs.append(tuple(level_logits) if level_logits is not None else (out.logits,))
            labels.append(batch["labels"])
    logits = tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))
    return config, logits, torch.cat(labels)


# ------------------------------------------------------------------------------------------------ measurements
def is_path(config: ViTYogaConfig, ids: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each row of class ids (one per predicted level, coarsest first) is a path of the tree."""
    ok = torch.ones(len(ids), dtype=torch.bool)
    for depth in range(1, ids.shape[1]):
        parents = torch.tensor(config.hierarchy_parents[depth - 1])
        ok &= parents[ids[:, depth]] == ids[:, depth - 1]
    return ok


def tree_distance(config: ViTYogaConfig, predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N,) the number of levels below the lowest common ancestor of two finest classes (0 = the same class)."""
    table = torch.tensor(config.ancestors(predicted_levels(config)[-1]))
    agree = (table[predicted] == table[truth]).int().cumprod(dim=1).sum(dim=1)
    return table.shape[1] - agree


def decide(config: ViTYogaConfig, probabilities: tuple[torch.Tensor, ...], decision: str = "probability"
           ) -> torch.Tensor:
    """(N, levels) the decided path's class ids, coarsest first: ``LabelTree.decide``, the pipeline's own decision."""
    tree = LabelTree.from_config(config, predicted_levels(config))
    path, _ = tree.decide([p.double().numpy() for p in probabilities], decision)
    return torch.from_numpy(path)


def level_labels(config: ViTYogaConfig, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the levels the checkpoint predicts (the data set's columns are every hierarchy level)."""
    return labels[:, : len(predicted_levels(config))]


def heads_rows(config: ViTYogaConfig, logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> list[Row]:
    """A joint model's heads, each deciding alone: each level's top-1, and how often the answers form a path."""
    if len(logits) == 1:
        return []
    ids = torch.stack([head.argmax(-1) for head in logits], dim=1)
    row: Row = {"method": "heads (independent)"}
    for depth, level in enumerate(predicted_levels(config)):
        row[f"{level} top-1"] = (ids[:, depth] == labels[:, depth]).float().mean().item()
    row["consistency"] = is_path(config, ids).float().mean().item()
    row[f"{predicted_levels(config)[-1]} log-loss"] = F.cross_entropy(logits[-1].float(), labels[:, -1]).item()
    return [row]


def combination_rows(config: ViTYogaConfig, logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> list[Row]:
    """``tree_probabilities`` under each rule (a one-head model has one: its softmax marginalised up)."""
    labels = level_labels(config, labels)
    levels = predicted_levels(config)
    rules = HIERARCHY_COMBINATIONS if len(logits) > 1 else ("marginalised",)
    rows = []
    for rule in rules:
        probabilities = tree_probabilities(config, logits if len(logits) > 1 else logits[0],
                                           rule=None if rule == "marginalised" else rule)
        marginal_ids = torch.stack([p.argmax(-1) for p in probabilities], dim=1)
        path = decide(config, probabilities)
        row: Row = {"method": rule}
        for depth, level in enumerate(levels):
            row[f"{level} top-1"] = (marginal_ids[:, depth] == labels[:, depth]).float().mean().item()
        row["consistency"] = is_path(config, marginal_ids).float().mean().item()
        finest = probabilities[-1].gather(1, labels[:, -1:]).squeeze(1)
        row[f"{levels[-1]} log-loss"] = -finest.clamp_min(1e-12).log().mean().item()
        for depth, level in enumerate(levels):
            row[f"path {level} top-1"] = (path[:, depth] == labels[:, depth]).float().mean().item()
        row["path consistency"] = is_path(config, path).float().mean().item()
        rows.append(row)
    return rows


def decision_rows(config: ViTYogaConfig, logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> list[Row]:
    """The most probable path against conditional risk minimisation, with the config's rule: each level's top-1 of
    the decided path, the mistake severity (mean tree distance of the wrong answers) and the mean distance."""
    labels = level_labels(config, labels)
    probabilities = tree_probabilities(config, logits if len(logits) > 1 else logits[0])
    rows = []
    for decision in ("probability", "risk"):
        path = decide(config, probabilities, decision)
        distance = tree_distance(config, path[:, -1], labels[:, -1])
        wrong = distance > 0
        rows.append({
            "method": f"decision={decision} ({config.hierarchy_combination if len(logits) > 1 else 'marginalised'})",
            **{f"{level} top-1": (path[:, d] == labels[:, d]).float().mean().item()
               for d, level in enumerate(predicted_levels(config))},
            "severity": distance[wrong].float().mean().item() if wrong.any() else 0.0,
            "mean distance": distance.float().mean().item(),
        })
    return rows


MEASUREMENTS = (heads_rows, combination_rows, decision_rows)


def best_rule(rows: list[Row], finest: str) -> str | None:
    """The combination rule with the best finest-level top-1 (ties: the lowest log-loss)."""
    candidates = [r for r in rows if r["method"] in HIERARCHY_COMBINATIONS]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (round(r[f"{finest} top-1"], 6), -r[f"{finest} log-loss"]))["method"]


# ------------------------------------------------------------------------------------------------------ report
def print_table(title: str, rows: list[Row]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="output folders of train.py")
    parser.add_argument("--dataset_name", default="synthetic", help="as train.py's (default: the synthetic poses)")
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rule", choices=HIERARCHY_COMBINATIONS, default=None,
                        help="the combination rule of the decision rows (default: each checkpoint's config)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset_name, args.splits)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                    "threads": torch.get_num_threads()},
        "dataset": args.dataset_name, "results": {},
    }
    for model_dir in args.models:
        for split, dataset in splits.items():
            config, logits, labels = predict(model_dir, dataset, args.batch_size)
            config.hierarchy_combination = args.rule or config.hierarchy_combination
            rows = [row for measure in MEASUREMENTS for row in measure(config, logits, labels)]
            title = f"{model_dir}, {split} ({len(labels)} images)"
            print_table(title, rows)
            entry = {"rows": rows, "images": len(labels)}
            rule = best_rule(rows, predicted_levels(config)[-1])
            if rule:
                entry["best_rule"] = rule
                print(f"\nbest combination on {split}: {rule}")
            report["results"].setdefault(str(model_dir), {})[split] = entry
    return finish(report, args.json)


# ------------------------------------------------------------------------------------------ same budget (issue 15)
def train_run(flags: list[str], output_dir: Path) -> dict[str, Any]:
    """train.py in a subprocess, as a user runs it; its train results (train_runtime...)."""
    out = run_script(PROJECT / "train.py", flags, output_dir)
    return dict(out["train_results"], wall_s=out["wall_s"])


def same_budget_rows(joint: tuple[ViTYogaConfig, tuple[torch.Tensor, ...], torch.Tensor],
                     level3: tuple[ViTYogaConfig, tuple[torch.Tensor, ...], torch.Tensor]) -> list[Row]:
    """The targets, from the two models' predictions on the same images: the finest level's top-1 of the joint
    model's finest head, of its heads combined (its config's rule; the decided path's finest node is the combined
    argmax), and of the level-3 model; the combined paths' consistency and the mistake severity of each."""
    rows = []
    for name, (config, logits, labels) in (("joint", joint), ("level 3", level3)):
        finest = predicted_levels(config)[-1]
        labels = level_labels(config, labels)
        candidates = [("finest head", logits[-1])]
        if len(logits) > 1:
            candidates.append((f"combined ({config.hierarchy_combination})", logits))
        for how, scores in candidates:
            probabilities = tree_probabilities(config, scores)  # one tensor: that head's softmax, marginalised
            path = decide(config, probabilities)
            distance = tree_distance(config, path[:, -1], labels[:, -1])
            wrong = distance > 0
            rows.append({
                "model": name, "read": how,
                f"{finest} top-1": (~wrong).float().mean().item(),
                **{f"path {level} top-1": (path[:, d] == labels[:, d]).float().mean().item()
                   for d, level in enumerate(predicted_levels(config))},
                "path consistency": is_path(config, path).float().mean().item(),
                "severity": distance[wrong].float().mean().item() if wrong.any() else 0.0,
            })
    return rows


def same_budget_targets(rows: list[Row], finest: str = "label_82") -> dict[str, bool]:
    """Whether the combined joint model meets the issue's targets."""
    combined = next(r for r in rows if r["model"] == "joint" and r["read"].startswith("combined"))
    head = next(r for r in rows if r["model"] == "joint" and r["read"] == "finest head")
    level3 = next(r for r in rows if r["model"] == "level 3")
    return {
        "combined paths 100% consistent": combined["path consistency"] == 1.0,
        "combined >= its finest head": combined[f"{finest} top-1"] >= head[f"{finest} top-1"],
        "combined >= a level-3 model of the same budget": combined[f"{finest} top-1"] >= level3[f"{finest} top-1"],
    }


def same_budget_main(argv: list[str]) -> int:
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description="Train a joint and a level-3 model with the same flags; compare.")
    parser.add_argument("--dataset_name", default="synthetic")
    parser.add_argument("--work_dir", type=Path, required=True, help="the two runs go here")
    parser.add_argument("--split", default="test")
    parser.add_argument("--skip_training", action="store_true", help="measure the runs already in --work_dir")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    data = [] if args.dataset_name == "synthetic" else ["--dataset_name", args.dataset_name]
    runs = {"joint": args.work_dir / "joint", "level 3": args.work_dir / "level3"}
    trained = {}
    for (name, folder), level in zip(runs.items(), ("all", "3"), strict=True):
        if not args.skip_training:
            trained[name] = train_run([*data, "--label_level", level, *flags], folder)
            print(f"{name}: trained in {trained[name]['train_runtime']:.0f} s", file=sys.stderr, flush=True)
    dataset = load_splits(args.dataset_name, [args.split])[args.split]
    predictions = {name: predict(folder, dataset) for name, folder in runs.items()}
    report: dict[str, Any] = {"dataset": args.dataset_name, "split": args.split, "flags": flags,
                              "images": len(predictions["joint"][2]), "trained": trained, "results": {}}
    for name, (config, logits, labels) in predictions.items():
        rows = [row for measure in MEASUREMENTS for row in measure(config, logits, labels)]
        print_table(f"{name}: {runs[name]}, {args.split} ({len(labels)} images)", rows)
        report["results"][name] = rows
    rows = same_budget_rows(predictions["joint"], predictions["level 3"])
    print_table(f"same budget ({' '.join(flags) or 'out of the box'}), {args.split}", rows)
    report["same_budget"], report["targets"] = rows, same_budget_targets(rows)
    print("\n" + "\n".join(f"- {k}: {'yes' if v else 'NO'}" for k, v in report["targets"].items()))
    return finish(report, args.json)


if __name__ == "__main__":
    if sys.argv[1:2] == ["same-budget"]:
        sys.exit(same_budget_main(sys.argv[2:]))
    sys.exit(main())
