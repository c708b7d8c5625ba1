"""The model card (README.md) of an output folder: model-index results per level and split, usage, data,
hyper-parameters, lineage and limits, through huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from yoga_common.files import atomic_write

from .arguments import DataArguments, YogaTrainingArguments
from .transforms import CROP_RATIO


def write_model_card(
    output_dir: Path, model: torch.nn.Module, data_args: DataArguments, training_args: YogaTrainingArguments,
    results: dict[str, dict[str, dict[str, Any]]], label_columns: list[str], sizes: dict[str, int], plots: list[str],
    repo_name: str,
) -> None:
    """README.md with model-index results per level and split, usage, data, hyper-parameters, lineage, limits."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = model.config
    dataset_name = "synthetic Yoga-82 poses" if data_args.dataset_name == "synthetic" else data_args.dataset_name
    eval_results = [
        EvalResult(
            task_type="image-classification", dataset_type=data_args.dataset_name, dataset_name=dataset_name,
            dataset_split=split, dataset_config=column, metric_type="accuracy", metric_name=f"{column} {name}",
            metric_value=round(result[key], 4),
        )
        for split, levels in results.items()
        for column, result in levels.items()
        for key, name in (("accuracy", "top-1 accuracy"), ("top5_accuracy", "top-5 accuracy"))
        if key in result
    ]
    card_data = ModelCardData(
        model_name=repo_name, library_name="transformers", pipeline_tag="image-classification", license="apache-2.0",
        tags=["vision", "image-classification", "vit", "yoga-82", "custom_code"], metrics=["accuracy"],
        datasets=[data_args.dataset_name] if data_args.dataset_name != "synthetic" else None,
        eval_results=eval_results or None,
        # The Hub validates base_model as a repo id: name it only when we started from one, not from a local folder.
        base_model=next((step["checkpoint"] for step in reversed(config.init_lineage)
                         if not Path(step["checkpoint"]).exists()), None),
    )
    table = ["| split | level | top-1 | top-5 | implied coarser levels |", "|---|---|---|---|---|"]
    for split, levels in results.items():
        for column, r in levels.items():
            implied = ", ".join(f"{k[8:-9]} {v:.3f}" for k, v in r.items() if k.startswith("implied_"))
            table.append(f"| {split} | {column} | {r['accuracy']:.4f} | {r.get('top5_accuracy', float('nan')):.4f} "
                         f"| {implied or '-'} |")
    lineage = "\n".join(
        f"{i + 1}. `{step['checkpoint']}` (level {step['label_level']}, {step['num_labels']} classes; head "
        f"{step['head']})" for i, step in enumerate(config.init_lineage)
    ) or "Trained from scratch (random initialisation)."
    hyper = {k: getattr(training_args, k) for k in (
        "learning_rate", "per_device_train_batch_size", "num_train_epochs", "weight_decay", "adam_beta1", "adam_beta2",
        "max_grad_norm", "lr_scheduler_type", "warmup_steps", "seed")}
    hyper.update(world_size=training_args.world_size, image_size=config.image_size,
                 hidden_dropout_prob=config.hidden_dropout_prob, drop_path_rate=config.drop_path_rate,
                 label_smoothing_factor=training_args.label_smoothing_factor)
    params = sum(p.numel() for p in model.parameters())
    plots_md = "\n".join(f"![{p}]({p})" for p in plots)
    optimizer = getattr(training_args.optim, "value", training_args.optim)  # the flag's value, not the enum's name
    patience = training_args.early_stopping_patience
    stopping = f", early stopping patience {patience}" if patience and training_args.load_best_model_at_end else ""
    content = f"""---
{card_data.to_yaml()}
---

# {repo_name}

A from-scratch Vision Transformer (ViTYoga: {config.num_hidden_layers} layers, width {config.hidden_size},
{config.num_attention_heads} heads, patch {config.patch_size}, {config.image_size} px; {params:,} parameters)
classifying yoga poses at level(s) {', '.join(label_columns)} of the Yoga-82 hierarchy
(6 body positions → 20 variations → 82 poses). Trained with the vit-yoga project's `train.py`.

## Results

{chr(10).join(table)}

Implied coarser levels: the accuracy at a coarser level of the class implied by the fine prediction.
Per-class accuracy is in `eval_results.json` / `test_results.json`; confusion matrices are in this repo.
{hierarchy_section(output_dir, results)}
## Usage

```python
from transformers import AutoModelForImageClassification, AutoImageProcessor, pipeline

model = AutoModelForImageClassification.from_pretrained("{repo_name}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{repo_name}")
classify = pipeline("image-classification", model="{repo_name}", trust_remote_code=True)
classify("pose.jpg", top_k=5)
```

## Data

{dataset_name}: {', '.join(f'{k} {v:,} images' for k, v in sizes.items())}.

## Training

Hyper-parameters: `{json.dumps(hyper, default=str)}`. Optimiser {optimizer}; augmentation:
{augmentation_summary(data_args, config.image_size)}; best checkpoint by validation
{training_args.metric_for_best_model}{stopping}.

## Lineage

{lineage}

{plots_md}

## Limitations

Yoga-82 is scraped from the web: images are unevenly distributed over classes, about a quarter of the links are
dead, and some poses differ only by details that a low-resolution model may not see. A model trained on the synthetic
stick-figure poses is for testing the pipeline only and says nothing about photographs.
"""
    atomic_write(output_dir / "README.md", str(ModelCard(content)))


def hierarchy_table(tree: dict[str, Any]) -> list[str]:
    """Markdown rows of one split's ``tree_results``: per reading (the heads, the decided path), each level's top-1,
    then the path consistency, the mistake severity and the average top-5 distance at the finest level."""
    from .evaluation import DECODINGS

    levels = tree["levels"]
    rows = ["| answer | " + " | ".join(f"{level} top-1" for level in levels)
            + " | path consistency | mistake severity | top-5 mean distance |",
            "|---|" + "---:|" * (len(levels) + 3)]
    # The results JSON's keys come back sorted; the table keeps DECODINGS' order (the heads, then the path).
    for name in (name for name in DECODINGS if name in tree["decodings"]):
        decoded = tree["decodings"][name]
        cells = [f"{decoded['levels'][level]['accuracy']:.3f}" if level in decoded["levels"] else "-"
                 for level in levels]
        cells += [f"{decoded[key]:.3f}" if key in decoded else "-"
                  for key in ("path_consistency", "mistake_severity", "top5_average_distance")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def hierarchy_section(output_dir: Path, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The tree-aware results (``evaluation.tree_results``) of each evaluated split, read back from its results JSON;
    empty for a model without a label hierarchy."""
    from .evaluation import DECODINGS

    tables = []
    for split in results:
        prefix = "eval" if split == "validation" else split
        path = output_dir / f"{prefix}_results.json"
        tree = json.loads(path.read_text()).get(f"{prefix}_hierarchy") if path.is_file() else None
        if tree:
            tables.append(f"**{split}**\n\n" + "\n".join(hierarchy_table(tree)))
    if not tables:
        return ""
    decodings = "\n".join(f"- **{name}**: {text}." for name, text in DECODINGS.items())
    return f"""
### Along the label tree

Every level of the hierarchy, as this checkpoint answers it:

{decodings}

The `path` row is what `pipeline("hierarchical-image-classification")` answers (its default
`decision="probability"`). The vit-yoga project's `benchmarks/bench_hierarchy.py` compares the other readings (the
finest head summed up the tree, each rule of combining the heads, `decision="risk"`).

Path consistency: the share of images whose per-level answers form a path of the tree (a pose under its own
variation under its own body position). Mistake severity: the mean tree distance of the wrong finest-level answers
(1 = a sibling, 2 = same parent's parent, ...; Bertinetto et al., CVPR 2020); top-5 mean distance: the mean tree
distance of the 5 highest-scoring classes to the truth.

{(chr(10) * 2).join(tables)}
"""


def augmentation_summary(data_args: DataArguments, image_size: int) -> str:
    """The training augmentation in words."""
    steps = []
    if data_args.train_crop == "random":
        steps.append(f"random crops of {image_size} from {round(image_size * CROP_RATIO)} px")
    elif data_args.train_crop == "random_resized":
        steps.append(f"random resized crops (scale {data_args.crop_min_scale}-1)")
    if data_args.hflip > 0:
        steps.append(f"horizontal flips (p={data_args.hflip})")
    if data_args.rand_augment_ops > 0:
        steps.append(f"RandAugment ({data_args.rand_augment_ops} ops, magnitude {data_args.rand_augment_magnitude})")
    if data_args.reprob > 0:
        steps.append(f"random erasing (p={data_args.reprob})")
    steps += [f"{name} (alpha {alpha})" for name, alpha in (("MixUp", data_args.mixup), ("CutMix", data_args.cutmix))
              if alpha > 0]
    return ", ".join(steps) or "none"
