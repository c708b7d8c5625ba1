"""Train ViTYoga on Yoga-82 (or any image data set) with transformers' Trainer on Accelerate.

    accelerate launch train.py --label_level 3                       # synthetic poses, a CPU-sized model
    accelerate launch train.py --label_level 1 --dataset_name data/yoga82 --output_dir runs/level1
    accelerate launch train.py --label_level 3 --dataset_name data/yoga82 --init_from runs/level1
    accelerate launch train.py --label_level all --dataset_name data/yoga82 --push_to_hub --hub_model_id me/vit-yoga

Every ``TrainingArguments`` flag works too. The output folder is a complete Hub model repo: safetensors weights,
config with auto_map, the model code, the image processor, results JSON, plots and a model card.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import transformers
from PIL import Image
from torchvision.transforms import v2
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from configuration_vit_yoga import VIT_YOGA_PRESETS, ViTYogaConfig
from modeling_vit_yoga import (
    ViTYogaForHierarchicalClassification,
    ViTYogaForImageClassification,
    ViTYogaModel,
    vit_yoga_image_processor,
)

logger = logging.getLogger("train")

PROJECT_DIR = Path(__file__).resolve().parent
METRIC_PATH = PROJECT_DIR / "metrics" / "hierarchical_accuracy"
LEVEL_COLUMNS = {"1": ["label_6"], "2": ["label_20"], "3": ["label_82"], "all": ["label_6", "label_20", "label_82"]}
SYNTHETIC_CACHE = Path(os.environ.get("VIT_YOGA_CACHE", Path.home() / ".cache" / "vit-yoga"))
# The report's recipe scales its 256 px images to 224 by random crops: train images are cut from 8/7 of the size.
CROP_RATIO = 256 / 224


@dataclass
class ModelArguments:
    model_preset: str | None = field(
        default=None,
        metadata={"help": f"Model size: one of {sorted(VIT_YOGA_PRESETS)}. Default: vit-ti16, or vit-pico on the "
                          "built-in synthetic poses."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to override, 'k=v,k=v' (e.g. 'num_hidden_layers=6,drop_path_rate=0.1')."},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "A ViTYoga checkpoint folder or Hub id to start from (e.g. a model trained on another "
                          "label level, or convert_vit_checkpoint.py's output). A head whose classes differ is "
                          "re-initialised."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2, ..."})
    hidden_dropout_prob: float | None = field(
        default=None,
        metadata={"help": "Dropout on the embeddings and after attention and MLP. Default: the report's 0.1 for a new "
                          "model (0 on the synthetic poses), the checkpoint's value with --init_from."},
    )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (generated once into a cache folder), a folder written by `python -m yoga82 "
                          "prepare`, or a Hub data set id."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub data set's config."})
    train_dir: str | None = field(default=None, metadata={"help": "An image folder (one subfolder per class)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An image folder for validation."})
    test_dir: str | None = field(default=None, metadata={"help": "An image folder for the final test."})
    label_level: str = field(
        default="3",
        metadata={"help": "1, 2, 3 or all: Yoga-82's label_6, label_20, label_82, or all three heads at once.",
                  "choices": ["1", "2", "3", "all"]},
    )
    label_column: str | None = field(
        default=None, metadata={"help": "The label column of a data set that is not Yoga-82 (overrides label_level)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Default: the data set's Image column."})
    image_size: int | None = field(default=None, metadata={"help": "Default: the model's (224 for vit-ti16)."})
    rand_augment_ops: int = field(default=2, metadata={"help": "RandAugment operations per image (0: off)."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of train held out when the data set has no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation and test."})
    early_stopping_patience: int = field(
        default=12, metadata={"help": "Stop after this many evaluations without a better validation accuracy (0: off)."}
    )
    synthetic_images_per_class: int = field(default=40, metadata={"help": "Size of the synthetic data set."})
    synthetic_image_size: int = field(default=64, metadata={"help": "Side of the synthetic images."})


@dataclass
class YogaTrainingArguments(TrainingArguments):
    """TrainingArguments with the report's Yoga-82 recipe as defaults (every one can be overridden by its flag)."""

    output_dir: str | None = field(default=None, metadata={"help": "Default: runs/level<N> (runs/all for all)."})
    learning_rate: float = 2e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.05
    per_device_train_batch_size: int = 256
    per_device_eval_batch_size: int = 256
    num_train_epochs: float = 100.0
    max_grad_norm: float = 5.0
    lr_scheduler_type: str = "linear"
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_strategy: str = "epoch"
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "accuracy"
    greater_is_better: bool | None = True
    remove_unused_columns: bool = False
    # Decoding and augmenting 256 px JPEGs costs a few ms per image: feed the model from several processes.
    dataloader_num_workers: int = min(8, os.cpu_count() or 1)


def given_flags(argv: list[str]) -> set[str]:
    """The options the user set, on the command line or in a JSON file, so that a default never overrides them."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        return set(json.loads(Path(argv[0]).read_text()))
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


# ---------------------------------------------------------------------------------------------------- input pipeline


def decode_image(image: Image.Image | dict[str, Any], min_size: int) -> Image.Image:
    """An RGB PIL image from a decoded image or a datasets ``Image(decode=False)`` dict.

    JPEGs are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below ``min_size``,
    which makes full-size web photos several times cheaper to decode than decoding them whole and resizing.
    """
    if isinstance(image, dict):
        source = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"]
        image = Image.open(source)
        if image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageTransform:
    """Decode, augment (training) and normalise one image into a float tensor (3, image_size, image_size).

    Training: squash to ``CROP_RATIO * image_size``, random crop, horizontal flip (a mirrored pose is the same pose),
    RandAugment, all on uint8 tensors. Evaluation: squash to ``image_size``, exactly as the saved image processor
    (ViTImageProcessor) does for the pipeline, so that test accuracy is what users get.
    """

    def __init__(self, image_size: int, train: bool, image_mean, image_std, rand_augment_ops: int = 2) -> None:
        self.train = train
        self.load_size = round(image_size * CROP_RATIO) if train else image_size
        steps: list[Any] = [v2.PILToTensor(), v2.Resize((self.load_size, self.load_size), antialias=True)]
        if train:
            steps += [v2.RandomCrop(image_size), v2.RandomHorizontalFlip()]
            if rand_augment_ops > 0:
                # PIL's kernels for RandAugment's affine ops, Sharpness and AutoContrast are 3-20x faster than
                # torchvision's tensor ones at 224 px (benchmarks/bench_data.py); the round trip costs ~0.07 ms.
                steps += [v2.ToPILImage(), v2.RandAugment(num_ops=rand_augment_ops), v2.PILToTensor()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image | dict[str, Any]) -> torch.Tensor:
        return self.pipeline(decode_image(image, self.load_size))


def build_image_transform(
    image_size: int, train: bool, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), rand_augment_ops: int = 2
) -> ImageTransform:
    return ImageTransform(image_size, train, image_mean, image_std, rand_augment_ops)


class BatchTransform:
    """``Dataset.set_transform`` hook: images to ``pixel_values``; label columns to ``labels``."""

    def __init__(self, transform: ImageTransform, image_column: str, label_columns: list[str]) -> None:
        self.transform, self.image_column, self.label_columns = transform, image_column, label_columns

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        out: dict[str, Any] = {"pixel_values": [self.transform(image) for image in batch[self.image_column]]}
        if len(self.label_columns) == 1:
            out["labels"] = batch[self.label_columns[0]]
        else:
            out["labels"] = [list(levels) for levels in zip(*(batch[c] for c in self.label_columns), strict=True)]
        return out


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }


# ---------------------------------------------------------------------------------------------------- data


def load_image_dataset(data_args: DataArguments, training_args: TrainingArguments) -> datasets.DatasetDict:
    """The data set as a DatasetDict with train, validation and (if there is one) test splits."""
    if data_args.train_dir:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        for split, folder in (("validation", data_args.validation_dir), ("test", data_args.test_dir)):
            if folder:
                data_files[split] = os.path.join(folder, "**")
        for split, pattern in data_files.items():
            if not Path(pattern).parent.is_dir():
                raise SystemExit(f"error: --{split}_dir {Path(pattern).parent} is not a folder.")
        dataset = datasets.load_dataset("imagefolder", data_files=data_files)
    elif data_args.dataset_name == "synthetic":
        from yoga82 import generate_synthetic

        folder = SYNTHETIC_CACHE / (
            f"synthetic-{data_args.synthetic_images_per_class}x{data_args.synthetic_image_size}px-seed0"
        )
        with training_args.main_process_first(desc="generating the synthetic poses"):
            if not folder.exists():
                logger.info(f"Generating the synthetic poses once into {folder}")
            generate_synthetic(folder, data_args.synthetic_images_per_class, data_args.synthetic_image_size, seed=0)
        dataset = datasets.load_dataset(str(folder))
    else:
        dataset = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    if "train" not in dataset:
        raise SystemExit(f"error: {data_args.dataset_name} has no 'train' split (it has {sorted(dataset)}).")
    if "validation" not in dataset:
        logger.info(f"No validation split: holding out {data_args.validation_fraction:.0%} of train.")
        split = dataset["train"].train_test_split(test_size=data_args.validation_fraction, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    if data_args.max_train_samples:
        dataset["train"] = dataset["train"].select(range(min(data_args.max_train_samples, len(dataset["train"]))))
    if data_args.max_eval_samples:
        for split in ("validation", "test"):
            if split in dataset:
                dataset[split] = dataset[split].select(range(min(data_args.max_eval_samples, len(dataset[split]))))
    return dataset


def find_image_column(features: datasets.Features, requested: str | None) -> str:
    if requested:
        if requested not in features:
            raise SystemExit(f"error: --image_column {requested!r} is not in the data set (columns: {list(features)}).")
        return requested
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise SystemExit(
            f"error: the data set has no image column (columns: {list(features)}); pass --image_column or use a data "
            "set with an Image feature (e.g. one written by `python -m yoga82 prepare`)."
        )
    return image_columns[0]


def find_label_columns(dataset: datasets.DatasetDict, data_args: DataArguments) -> list[str]:
    features = dataset["train"].features
    columns = [data_args.label_column] if data_args.label_column else LEVEL_COLUMNS[data_args.label_level]
    if not data_args.label_column and not all(c in features for c in columns) and "label" in features:
        raise SystemExit(
            f"error: --label_level {data_args.label_level} needs the column(s) {columns}, which this data set lacks "
            f"(columns: {list(features)}); for a data set that is not Yoga-82 pass --label_column label."
        )
    for column in columns:
        if column not in features:
            flag = "--label_column" if data_args.label_column else f"--label_level {data_args.label_level}"
            raise SystemExit(
                f"error: {flag} needs the column {column!r}, which this data set lacks (columns: {list(features)}); "
                "choose a label column the data set has with --label_column."
            )
        if not isinstance(features[column], datasets.ClassLabel):
            # Strings or ints: one ClassLabel, named from train, for every split (so that ids agree across splits).
            values = sorted(set(dataset["train"].unique(column)))
            class_label = datasets.ClassLabel(names=[str(v) for v in values])
            ids = {value: i for i, value in enumerate(values)}
            for split in dataset:
                features = dataset[split].features.copy()
                features[column] = class_label
                dataset[split] = dataset[split].map(
                    _encode_labels, batched=True, fn_kwargs={"column": column, "ids": ids}, features=features
                )
    return columns


def _encode_labels(batch: dict[str, list], column: str, ids: dict[Any, int]) -> dict[str, list[int]]:
    return {column: [ids[value] for value in batch[column]]}


def hierarchy_of_dataset(dataset: datasets.DatasetDict) -> tuple[list[str], list[list[str]], list[list[int]]]:
    """The Yoga-82 hierarchy as the data set states it: ClassLabel names per level and parents read off the rows.

    Empty when the data set lacks Yoga-82's three level columns. Rows whose labels contradict one another stop
    training with an error (a fine class under two parents).
    """
    levels = LEVEL_COLUMNS["all"]
    features = dataset["train"].features
    if not all(isinstance(features.get(level), datasets.ClassLabel) for level in levels):
        return [], [], []
    names = [list(features[level].names) for level in levels]
    parents = []
    for coarse, fine in zip(levels, levels[1:], strict=False):
        pairs = set()
        for split in dataset.values():
            ids = split.select_columns([coarse, fine]).with_format("numpy")[:]  # label columns only, no images
            pairs.update(zip(ids[fine].tolist(), ids[coarse].tolist(), strict=True))
        parent = {}
        for child, coarse_id in sorted(pairs):
            if parent.setdefault(child, coarse_id) != coarse_id:
                raise SystemExit(
                    f"error: the data set's rows put {fine} class {names[levels.index(fine)][child]!r} under two "
                    f"{coarse} classes ({parent[child]} and {coarse_id}); fix the labels (python -m yoga82 prepare "
                    "checks them)."
                )
        fine_names = names[levels.index(fine)]
        parents.append([parent.get(i, 0) for i in range(len(fine_names))])
    return levels, names, parents


# ---------------------------------------------------------------------------------------------------- model


def parse_overrides(text: str | None) -> dict[str, Any]:
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise SystemExit(f"error: --config_overrides item {item!r} is not key=value.")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def build_model(
    model_args: ModelArguments,
    data_args: DataArguments,
    label_columns: list[str],
    class_names: list[list[str]],
    hierarchy: tuple[list[str], list[list[str]], list[list[int]]],
) -> torch.nn.Module:
    """A fresh model of the preset, or the ``--init_from`` checkpoint with a new head where the classes changed."""
    levels, level_names, parents = hierarchy
    hierarchical = len(label_columns) > 1
    label_level = label_columns[0] if not hierarchical and label_columns[0] in levels else None
    names = class_names[-1]
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    hierarchy_kwargs = dict(hierarchy_levels=levels, hierarchy_class_names=level_names, hierarchy_parents=parents)
    model_class = ViTYogaForHierarchicalClassification if hierarchical else ViTYogaForImageClassification
    overrides = parse_overrides(model_args.config_overrides)
    if model_args.hidden_dropout_prob is not None:
        overrides["hidden_dropout_prob"] = model_args.hidden_dropout_prob
    elif not model_args.init_from:
        overrides.setdefault("hidden_dropout_prob", 0.1)  # the report's recipe
    if data_args.image_size:
        overrides["image_size"] = data_args.image_size

    if not model_args.init_from:
        preset = model_args.model_preset or "vit-ti16"
        try:
            config = ViTYogaConfig.from_preset(
                preset, **hierarchy_kwargs, label_level=label_level, **labels, **overrides
            )
        except (ValueError, TypeError) as error:
            raise SystemExit(f"error: cannot build the model: {error}") from None
        return model_class._from_config(config, attn_implementation=model_args.attn_implementation)

    try:
        source_dict, _ = ViTYogaConfig.get_config_dict(model_args.init_from)
        if source_dict.get("model_type") != ViTYogaConfig.model_type:
            raise ValueError(
                f"it is a {source_dict.get('model_type')!r} checkpoint, not a ViTYoga one; convert it first with "
                "`python convert_vit_checkpoint.py --source ... --output_dir ...`"
            )
        source = ViTYogaConfig.from_pretrained(model_args.init_from)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: --init_from {model_args.init_from}: {error}") from None
    if source.hierarchy_levels and levels and (
        source.hierarchy_class_names != level_names or source.hierarchy_parents != parents
    ):
        raise SystemExit(
            f"error: --init_from {model_args.init_from} was trained on another label hierarchy than this data set's "
            "(class names or parents differ); fine-tune from a checkpoint of the same hierarchy."
        )
    if overrides.get("image_size", source.image_size) != source.image_size:
        raise SystemExit(
            f"error: --init_from {model_args.init_from} is a {source.image_size} px model but {overrides['image_size']}"
            " px was asked for; drop --image_size (images are resized to the checkpoint's size)."
        )
    unknown = set(overrides) - set(source.to_dict())
    if unknown:
        raise SystemExit(f"error: --config_overrides names fields ViTYogaConfig lacks: {sorted(unknown)}.")
    same_head = (
        not hierarchical
        and source.num_labels == len(names)
        and source.id2label == labels["id2label"]
        and "ViTYogaForImageClassification" in (source.architectures or [])
    ) or (hierarchical and "ViTYogaForHierarchicalClassification" in (source.architectures or []))
    config_kwargs = dict(hierarchy_kwargs, label_level=label_level, **labels, **overrides)
    config = ViTYogaConfig.from_pretrained(model_args.init_from, **config_kwargs)
    config.init_lineage = [*source.init_lineage, {
        "checkpoint": model_args.init_from,
        "label_level": source.label_level or ("all" if "Hierarchical" in str(source.architectures) else None),
        "num_labels": source.num_labels,
        "head": "kept" if same_head else "re-initialised",
    }]
    if same_head:
        return model_class.from_pretrained(
            model_args.init_from, config=config, attn_implementation=model_args.attn_implementation
        )
    model = model_class._from_config(config, attn_implementation=model_args.attn_implementation)
    backbone = ViTYogaModel.from_pretrained(model_args.init_from)
    model.vit.load_state_dict(backbone.state_dict())
    logger.warning(
        f"Initialised the backbone from {model_args.init_from} ({source.num_labels} classes, level "
        f"{source.label_level}); the head is new ({model.config.num_labels} classes, level "
        f"{label_level or ('all' if hierarchical else None)})."
    )
    return model


# ---------------------------------------------------------------------------------------------------- metrics


class HierarchicalMetrics:
    """Trainer's ``compute_metrics``: top-1/top-5 and the coarse accuracies implied by fine predictions per level."""

    def __init__(self, label_columns: list[str], class_names: list[list[str]], config: ViTYogaConfig) -> None:
        self.metric = evaluate.load(str(METRIC_PATH))
        self.label_columns, self.class_names, self.config = label_columns, class_names, config
        self.per_class = False  # set for the final evaluations: per-class accuracy goes to the results files
        self.last_per_level: dict[str, dict[str, Any]] = {}

    def level_kwargs(self, column: str) -> dict[str, Any]:
        config = self.config
        if column not in config.hierarchy_levels:
            return {}
        depth = config.hierarchy_levels.index(column)
        if depth == 0:
            return {}
        return {"hierarchy_parents": config.hierarchy_parents[:depth],
                "hierarchy_levels": config.hierarchy_levels[: depth + 1]}

    def per_level(self, logits, labels, per_class: bool = False) -> dict[str, dict[str, Any]]:
        logits = logits if isinstance(logits, (tuple, list)) else (logits,)
        labels = np.asarray(labels).reshape(len(labels), -1)
        results = {}
        for i, column in enumerate(self.label_columns):
            scores = np.asarray(logits[i], dtype=np.float32)
            result = self.metric.compute(
                predictions=scores, references=labels[:, i], top_k=(1, 5), class_names=self.class_names[i],
                **self.level_kwargs(column),
            )
            if not per_class:
                result = {k: v for k, v in result.items() if not k.startswith("per_class")}
            results[column] = result
        return results

    def __call__(self, eval_prediction) -> dict[str, float]:
        results = self.per_level(eval_prediction.predictions, eval_prediction.label_ids, self.per_class)
        self.last_per_level = results
        flat: dict[str, float] = {}
        for column, result in results.items():
            prefix = "" if len(results) == 1 else f"{column}_"
            flat.update({f"{prefix}{k}": v for k, v in result.items()
                         if k != "num_examples" and not k.startswith("per_class")})
        if len(results) > 1:  # the finest level drives model selection and early stopping
            flat["accuracy"] = results[self.label_columns[-1]]["accuracy"]
        return flat


class YogaTrainer(Trainer):
    """Trainer that also reports the running accuracy on the (augmented) training batches, as the report's
    figures show, gathered over all processes at each log."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._train_correct = torch.zeros(2, dtype=torch.float64)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        fine_labels = labels[:, -1] if labels.ndim == 2 else labels
        correct = (outputs.logits.detach().argmax(-1) == fine_labels).sum().item()
        self._train_correct += torch.tensor([correct, fine_labels.numel()], dtype=torch.float64)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            counts = self.accelerator.reduce(self._train_correct.to(self.accelerator.device), reduction="sum")
            if counts[1] > 0:
                logs["train_accuracy"] = round((counts[0] / counts[1]).item(), 4)
            self._train_correct.zero_()
        super().log(logs, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------- outputs


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-*`` that finished saving (trainer_state.json is written last), or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    complete = [p for p in candidates if (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[1]))) if complete else None


def resolve_resume(training_args: TrainingArguments) -> str | None:
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() in ("latest", "true", "last"):
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise SystemExit(f"error: no complete checkpoint in {training_args.output_dir} to resume from.")
        return checkpoint
    if not (Path(value) / "trainer_state.json").is_file():
        latest = last_complete_checkpoint(str(Path(value).parent))
        raise SystemExit(
            f"error: {value} is not a complete checkpoint (no trainer_state.json; the run was probably killed while "
            f"saving it). Resume from {latest or 'an earlier checkpoint'} or pass --resume_from_checkpoint latest."
        )
    return value


def plot_history(log_history: list[dict[str, Any]], output_dir: Path) -> list[str]:
    """Loss and accuracy per epoch for train and validation (the report's figures) as training_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [e for e in log_history if "loss" in e and "epoch" in e]
    evals = [e for e in log_history if "eval_loss" in e]
    if not train and not evals:
        return []
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([e["epoch"] for e in train], [e["loss"] for e in train], "o-", label="train")
    ax_loss.plot([e["epoch"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation")
    ax_acc.plot([e["epoch"] for e in train if "train_accuracy" in e],
                [e["train_accuracy"] for e in train if "train_accuracy" in e], "o-", label="train (augmented)")
    ax_acc.plot([e["epoch"] for e in evals], [e.get("eval_accuracy", np.nan) for e in evals], "o-",
                label="validation")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "training_curves.png", dpi=120)
    plt.close(fig)
    return ["training_curves.png"]


def plot_confusion(logits: np.ndarray, labels: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels, logits.argmax(-1)), 1)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(4 + 0.18 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = [name[:28] for name in names]
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=6 if n > 30 else 8)
    ax.set_yticks(range(n), ticks, fontsize=6 if n > 30 else 8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_model_card(
    output_dir: Path, model: torch.nn.Module, data_args: DataArguments, training_args: TrainingArguments,
    results: dict[str, dict[str, dict[str, Any]]], label_columns: list[str], sizes: dict[str, int], plots: list[str],
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
    repo_name = training_args.hub_model_id or Path(output_dir).name
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
    hyper.update(world_size=training_args.world_size, rand_augment_ops=data_args.rand_augment_ops,
                 image_size=config.image_size, hidden_dropout_prob=config.hidden_dropout_prob,
                 drop_path_rate=config.drop_path_rate)
    params = sum(p.numel() for p in model.parameters())
    plots_md = "\n".join(f"![{p}]({p})" for p in plots)
    patience = data_args.early_stopping_patience
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

Hyper-parameters: `{json.dumps(hyper, default=str)}`. AdamW, RandAugment ({data_args.rand_augment_ops} ops), random
crops of {config.image_size} from {round(config.image_size * CROP_RATIO)} px, horizontal flips, best checkpoint by
validation accuracy{stopping}.

## Lineage

{lineage}

{plots_md}

## Limitations

Yoga-82 is scraped from the web: images are unevenly distributed over classes, about a quarter of the links are
dead, and some poses differ only by details that a low-resolution model may not see. A model trained on the synthetic
stick-figure poses is for testing the pipeline only and says nothing about photographs.
"""
    ModelCard(content).save(output_dir / "README.md")


def push_folder(output_dir: Path, training_args: TrainingArguments) -> bool:
    """Upload exactly the output folder (no checkpoints) to the Hub as one commit; a failure is reported and the
    folder kept. One explicit commit (rather than upload_folder's pipelined multi-commit path) keeps the Hub repo
    either fully updated or untouched."""
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id = training_args.hub_model_id or output_dir.name
    files = sorted(
        p for p in output_dir.rglob("*")
        if p.is_file() and not p.relative_to(output_dir).parts[0].startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        and p.suffix not in (".bin", ".pt", ".pkl")
    )
    try:
        api = HfApi(token=training_args.hub_token)
        api.create_repo(repo_id, private=training_args.hub_private_repo, exist_ok=True)
        api.create_commit(
            repo_id=repo_id,
            operations=[CommitOperationAdd(str(p.relative_to(output_dir)), str(p)) for p in files],
            commit_message="Upload ViTYoga trained with train.py",
        )
    except Exception as error:  # any network or auth failure: the local folder is complete; say how to retry
        logger.error(
            f"Upload to the Hub repo {repo_id!r} failed ({type(error).__name__}: {error}). The folder {output_dir} is "
            f"complete; retry with `hf upload {repo_id} {output_dir} --exclude 'checkpoint-*'`."
        )
        return False
    logger.info(f"Pushed {len(files)} files of {output_dir} to https://huggingface.co/{repo_id}")
    return True


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser((ModelArguments, DataArguments, YogaTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    if not training_args.should_log:
        logger.setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not training_args.use_cpu:
        # Without this, Trainer on a GPU-less machine runs N independent copies instead of one distributed run.
        training_args.use_cpu = True
        training_args.__dict__.pop("_setup_devices", None)
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ and not torch.cuda.is_available() and torch.get_num_threads() == 1:
        # `accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which halves CPU training speed on 2 cores:
        # share the cores between the processes instead.
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(threads)
        logger.info(f"CPU training: {threads} threads per process (accelerate launch had set 1).")
    level_name = data_args.label_column or f"level{data_args.label_level}".replace("levelall", "all")
    given = given_flags(argv)
    if "output_dir" not in given:  # TrainingArguments would have defaulted to "trainer_output"
        training_args.output_dir = str(Path("runs") / level_name)
    output_dir = Path(training_args.output_dir)
    if model_args.model_preset and model_args.model_preset not in VIT_YOGA_PRESETS:
        raise SystemExit(f"error: --model_preset {model_args.model_preset!r} is unknown; choose one of "
                         f"{sorted(VIT_YOGA_PRESETS)}.")
    if data_args.dataset_name == "synthetic" and not data_args.train_dir:
        _apply_synthetic_defaults(model_args, data_args, training_args, given)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # we push the finished folder once
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)

    # Everything a user can get wrong is checked here, before any training.
    dataset = load_image_dataset(data_args, training_args)
    image_column = find_image_column(dataset["train"].features, data_args.image_column)
    label_columns = find_label_columns(dataset, data_args)
    class_names = [list(dataset["train"].features[c].names) for c in label_columns]
    hierarchy = hierarchy_of_dataset(dataset) if not data_args.label_column else ([], [], [])
    model = build_model(model_args, data_args, label_columns, class_names, hierarchy)
    logger.info(f"Processes: {training_args.world_size} ({training_args.parallel_mode.value}), device "
                f"{training_args.device}")
    config = model.config
    image_size = config.image_size
    logger.info(f"Model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{config.num_hidden_layers} layers x {config.hidden_size} wide, {image_size} px; "
                f"labels {label_columns}; data {', '.join(f'{k}: {len(v)}' for k, v in dataset.items())}")

    processor = vit_yoga_image_processor(config)
    if init_processor := _init_processor(model_args.init_from):
        processor = init_processor
    mean, std = processor.image_mean, processor.image_std
    for split, ds in dataset.items():
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decoded by us, in JPEG draft mode
        transform = build_image_transform(image_size, split == "train", mean, std, data_args.rand_augment_ops)
        ds.set_transform(BatchTransform(transform, image_column, label_columns))
        dataset[split] = ds

    if len(label_columns) > 1:  # Trainer keeps only the per-level logits for compute_metrics
        config.keys_to_ignore_at_inference = ["logits", "level_losses"]
    callbacks = []
    if data_args.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    metrics = HierarchicalMetrics(label_columns, class_names, config)
    trainer = YogaTrainer(
        model=model, args=training_args, data_collator=collate, train_dataset=dataset["train"],
        eval_dataset=dataset["validation"], compute_metrics=metrics, callbacks=callbacks,
    )

    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle has no place in a shared repo
    train_metrics = dict(train_result.metrics, train_samples=len(dataset["train"]))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    plots = plot_history(trainer.state.log_history, output_dir) if trainer.is_world_process_zero() else []
    metrics.per_class = True
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split not in dataset:
            logger.info(f"No {split} split: skipping its evaluation.")
            continue
        prediction = trainer.predict(dataset[split], metric_key_prefix=prefix)
        per_level = metrics.last_per_level
        results[split] = per_level
        split_metrics = dict(prediction.metrics, **{f"{prefix}_samples": len(dataset[split])})
        split_metrics[f"{prefix}_per_level"] = per_level
        trainer.log_metrics(prefix, {k: v for k, v in split_metrics.items() if not isinstance(v, dict)})
        trainer.save_metrics(prefix, split_metrics, combined=True)
        if trainer.is_world_process_zero():
            logits = prediction.predictions if isinstance(prediction.predictions, tuple) else (prediction.predictions,)
            labels = np.asarray(prediction.label_ids).reshape(len(prediction.label_ids), -1)
            for i, column in enumerate(label_columns):
                name = f"confusion_{split}_{column}.png"
                plot_confusion(np.asarray(logits[i]), labels[:, i], class_names[i], output_dir / name,
                               f"{column}, {split}: top-1 {per_level[column]['accuracy']:.3f}")
                plots.append(name)

    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        sizes = {split: len(ds) for split, ds in dataset.items()}
        write_model_card(output_dir, model, data_args, training_args, results, label_columns, sizes, plots)
        if push_to_hub:
            push_folder(output_dir, training_args)
    trainer.accelerator.wait_for_everyone()
    return {"results": results, "output_dir": str(output_dir), "train": train_metrics}


def _init_processor(init_from: str | None):
    """The image processor of the checkpoint we start from (its normalisation), if it has one."""
    if not init_from:
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(init_from)
    except (OSError, ValueError):
        return None


def _apply_synthetic_defaults(model_args, data_args, training_args, given: set[str]) -> None:
    """Out of the box (no data set given): a CPU-sized model and schedule for the built-in synthetic poses."""
    chosen = []
    if not model_args.model_preset and not model_args.init_from:
        model_args.model_preset = "vit-pico"
        if not data_args.image_size:
            data_args.image_size = data_args.synthetic_image_size
        chosen.append(f"model vit-pico at {data_args.image_size} px")
    if "hidden_dropout_prob" not in given and not model_args.init_from:
        model_args.hidden_dropout_prob = 0.0  # a few thousand clean drawings: dropout only slows learning down
        chosen.append("hidden_dropout_prob=0.0")
    for name, value in (("per_device_train_batch_size", 32), ("per_device_eval_batch_size", 128),
                        ("num_train_epochs", 60.0), ("learning_rate", 1e-3), ("warmup_steps", 100),
                        ("rand_augment_ops", 0), ("dataloader_num_workers", 0)):
        if name not in given:
            setattr(data_args if hasattr(data_args, name) else training_args, name, value)
            chosen.append(f"{name}={value}")
    logger.warning(f"No data set given: training on the built-in synthetic poses with {', '.join(chosen)} "
                   "(CPU-sized; pass --dataset_name <folder or Hub id> for Yoga-82).")
    training_args.warmup_steps = int(training_args.warmup_steps)


if __name__ == "__main__":
    main()
