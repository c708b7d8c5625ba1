"""Every default of a training run, in one place: the recipes, and what the machine and the run itself decide.

train.py applies these *before* it parses the user's flags (``parse_arguments`` in arguments.py), so a flag the
user gives wins by construction, in any spelling the parser accepts and in a JSON arguments file. The dataclass
fields in arguments.py hold only neutral values (augmentation off, no early stopping); the library's own defaults
(TrainingArguments') apply to anything no recipe mentions.
"""

from __future__ import annotations

import os
from typing import Any

import torch

# What every run of train.py needs, whatever the recipe: an evaluation per epoch that keeps the best checkpoint by
# validation accuracy, our own image columns (Trainer must not drop them), and callback state (early stopping's
# patience) carried across a resume.
RUN_DEFAULTS: dict[str, Any] = dict(
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_strategy="epoch",
    save_total_limit=2,
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    remove_unused_columns=False,
    restore_callback_states_from_checkpoint=True,
)

# The default: a ViT that learns from little data, with the convolutional stem (why, and what each choice measured
# on the synthetic poses and scikit-learn's digits: docs/training.md, "Recipes"); light augmentation (crops, flips)
# rather than RandAugment, which costs accuracy on short schedules; cosine decay after a 10% warm-up.
SMALL_DATA_RECIPE: dict[str, Any] = dict(
    model_preset="vit-ti16",
    patch_embedding_type="conv_stem",
    hidden_dropout_prob=0.0,
    drop_path_rate=0.0,
    learning_rate=5e-4,
    adam_beta1=0.9,
    adam_beta2=0.999,
    weight_decay=0.05,
    per_device_train_batch_size=256,
    per_device_eval_batch_size=256,
    num_train_epochs=100.0,
    warmup_steps=0.1,  # a float below 1: a share of the steps
    lr_scheduler_type="cosine",
    max_grad_norm=5.0,
    train_crop="random",
    hflip=0.5,
    rand_augment_ops=0,
    early_stopping_patience=0,
    # Decoding and augmenting 256 px JPEGs costs a few ms per image: feed the model from several processes.
    dataloader_num_workers=min(8, os.cpu_count() or 1),
)

# The course report's recipe for Yoga-82: ViT-Ti/16 at 224 px from 256 px images, AdamW, RandAugment.
REPORT_RECIPE: dict[str, Any] = dict(
    model_preset="vit-ti16",
    patch_embedding_type="standard",
    hidden_dropout_prob=0.1,
    drop_path_rate=0.0,
    learning_rate=2e-4,
    adam_beta1=0.9,
    adam_beta2=0.999,
    weight_decay=0.05,
    per_device_train_batch_size=256,
    per_device_eval_batch_size=256,
    num_train_epochs=100.0,
    warmup_steps=0,
    max_grad_norm=5.0,
    lr_scheduler_type="linear",
    train_crop="random",
    hflip=0.5,
    rand_augment_ops=2,
    early_stopping_patience=12,
    dataloader_num_workers=min(8, os.cpu_count() or 1),
)

# DeiT's data-efficient recipe (Touvron et al., ICML 2021, Table 9): AdamW at 5e-4 per 512 images, cosine decay
# after 5 warm-up epochs, RandAugment m9, MixUp 0.8, CutMix 1.0, label smoothing 0.1, random erasing 0.25, drop path
# 0.1, random resized crops, 300 epochs, no dropout, no clipping. Scale the learning rate with the global batch.
DEIT_RECIPE: dict[str, Any] = dict(
    model_preset="vit-ti16",
    patch_embedding_type="standard",
    hidden_dropout_prob=0.0,
    drop_path_rate=0.1,
    learning_rate=2.5e-4,  # 5e-4 x 256 / 512
    adam_beta1=0.9,
    adam_beta2=0.999,
    weight_decay=0.05,
    per_device_train_batch_size=256,
    per_device_eval_batch_size=256,
    num_train_epochs=300.0,
    warmup_steps=5 / 300,  # a float below 1: a share of the steps (5 of 300 epochs)
    max_grad_norm=0.0,
    lr_scheduler_type="cosine",
    train_crop="random_resized",
    crop_min_scale=0.08,
    hflip=0.5,
    rand_augment_ops=2,
    rand_augment_magnitude=9,
    mixup=0.8,
    cutmix=1.0,
    label_smoothing_factor=0.1,
    reprob=0.25,
    early_stopping_patience=0,
    dataloader_num_workers=min(8, os.cpu_count() or 1),
)

# A few hundred photos of one's own on a CPU (a folder per pose): the small-data recipe at vit-pico's size (64 px), in
# batches of 32 (the default's 256 would be one optimiser step an epoch) and for 120 epochs. Measured on 249 real
# training photos of 7 poses: 0.482 level-3 test top-1 against 0.366 for 40 epochs, mean of 3 seeds, and above
# self-supervised pretraining then fine-tuning (0.320); docs/pretraining.md.
FEW_PHOTOS_RECIPE: dict[str, Any] = dict(
    SMALL_DATA_RECIPE,
    model_preset="vit-pico",
    per_device_train_batch_size=32,
    num_train_epochs=120.0,
)

RECIPES: dict[str, dict[str, Any]] = {"small-data": SMALL_DATA_RECIPE, "few-photos": FEW_PHOTOS_RECIPE,
                                      "report": REPORT_RECIPE, "deit": DEIT_RECIPE}
DEFAULT_RECIPE = "small-data"

# The built-in synthetic poses (no data set given): whatever the recipe, a model and a schedule sized for a CPU:
# about 5 minutes on 2 cores out of the box.
SYNTHETIC_POSES: dict[str, Any] = dict(
    model_preset="vit-pico",
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    num_train_epochs=30.0,
    learning_rate=1e-3,
    dataloader_num_workers=0,
)

# pretrain.py: what every run needs (an evaluation per epoch: the k-NN reading; pretraining keeps its last weights)
# and its recipe. The optimiser is train.py's small-data one; the views and the loss: self_supervised.py.
PRETRAIN_RUN_DEFAULTS: dict[str, Any] = dict(
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_strategy="epoch",
    save_total_limit=2,
    load_best_model_at_end=False,
    remove_unused_columns=False,
    restore_callback_states_from_checkpoint=True,
)
PRETRAIN_RECIPE: dict[str, Any] = dict(
    model_preset="vit-ti16",
    patch_embedding_type="conv_stem",
    learning_rate=1e-3,
    weight_decay=0.05,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=256,
    num_train_epochs=100.0,
    warmup_steps=0.1,
    lr_scheduler_type="cosine",
    max_grad_norm=3.0,
    dataloader_num_workers=min(8, os.cpu_count() or 1),
)
# No data set given: the built-in synthetic poses, sized for a CPU like train.py's.
PRETRAIN_SYNTHETIC: dict[str, Any] = dict(
    model_preset="vit-pico",
    per_device_eval_batch_size=128,
    num_train_epochs=30.0,
    dataloader_num_workers=0,
)

# train.py --init_from a backbone that pretrain.py wrote: added to the recipe (the log says so). Chosen by measurement
# on the real photos (docs/pretraining.md).
FINE_TUNE_PRETRAINED: dict[str, Any] = dict(
    layer_decay=0.75,
)

# Architecture and regularisation come from the checkpoint that --init_from names, not from a recipe.
FROM_CHECKPOINT = ("model_preset", "patch_embedding_type", "hidden_dropout_prob", "drop_path_rate")


def machine_defaults(world_size: int) -> dict[str, Any]:
    """What this machine decides: CPU processes run one distributed job (gloo) where there is no accelerator, and
    pinned memory only where there is one to copy to."""
    has_accelerator = torch.accelerator.is_available()
    return dict(use_cpu=world_size > 1 and not has_accelerator, dataloader_pin_memory=has_accelerator)


def output_dir_name(label_level: str, label_column: str | None) -> str:
    """``runs/level1``, ``runs/all`` or ``runs/<label column>``."""
    if label_column:
        return label_column
    return "all" if label_level == "all" else f"level{label_level}"


def run_defaults(
    *, synthetic: bool, init_from: str | None, label_level: str, label_column: str | None, world_size: int,
    recipe: str | None, pretrained: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The defaults of one run: all of them, the recipe's alone (for the log), and where they come from.
    ``pretrained``: the ``pretraining`` record of an ``--init_from`` backbone written by pretrain.py, which adds the
    fine-tuning recipe."""
    name = recipe or DEFAULT_RECIPE
    chosen, source = dict(RECIPES[name]), f"the {name!r} recipe"
    if synthetic:
        chosen.update(SYNTHETIC_POSES)
        source += ", sized for a CPU on the synthetic poses"
    if init_from:
        for field in FROM_CHECKPOINT:
            chosen.pop(field, None)
    if init_from and pretrained:
        chosen.update(FINE_TUNE_PRETRAINED)
        source += (f", with the fine-tuning recipe for a backbone pretrained by pretrain.py ({pretrained.get('method')}"
                   f", {init_from})")
    defaults = {**RUN_DEFAULTS, **chosen, **machine_defaults(world_size)}
    defaults["output_dir"] = os.path.join("runs", output_dir_name(label_level, label_column))
    return defaults, chosen, source
