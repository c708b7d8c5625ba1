"""The augmentation and regularisation flags work: shapes, mixed targets that are distributions agreeing across the
hierarchy's levels, and a few training steps with each of them on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

import yoga82
from vit_yoga.arguments import parse_arguments
from vit_yoga.recipes import RECIPES
from vit_yoga.transforms import TrainingCollator, TrainingTransform

train_main = load_script("train.py")["main"]
TINY = "image_size=32,patch_size=8,hidden_size=48,num_hidden_layers=2,num_attention_heads=3,intermediate_size=96"
SIZES = [6, 20, 82]


def examples(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    poses = rng.choice(82, count, replace=False)
    rows = []
    for pose in poses:
        label_20 = yoga82.labels.PARENT_OF_82[pose]
        rows.append({"pixel_values": torch.randn(3, 8, 8),
                     "labels": [yoga82.labels.PARENT_OF_20[label_20], label_20, int(pose)]})
    return rows


@pytest.mark.parametrize("mixup, cutmix, smoothing", [(0.8, 0.0, 0.0), (0.0, 1.0, 0.0), (0.8, 1.0, 0.1), (0, 0, 0.1)])
def test_mixed_targets_are_distributions_that_agree_across_levels(mixup, cutmix, smoothing):
    torch.manual_seed(0)  # CutMix's box can fall outside a tiny image (then nothing mixes): fix the draw
    parents = yoga82.hierarchy()["hierarchy_parents"]
    collator = TrainingCollator(SIZES, parents, label_smoothing=smoothing, mixup_alpha=mixup, cutmix_alpha=cutmix)
    batch = collator(examples(8))
    labels = batch["labels"]
    assert labels.shape == (8, sum(SIZES)) and labels.dtype == torch.float32
    assert batch["pixel_values"].shape == (8, 3, 8, 8)
    levels = labels.split(SIZES, dim=1)
    for level in levels:
        torch.testing.assert_close(level.sum(1), torch.ones(8))  # each level's target is a distribution
        assert level.min() >= smoothing / level.shape[1] - 1e-6
    unsmoothed = [(level - smoothing / level.shape[1]) / (1 - smoothing) for level in levels]
    fine_to_20 = torch.nn.functional.one_hot(torch.tensor(parents[1]), 20).float()
    torch.testing.assert_close(unsmoothed[2] @ fine_to_20, unsmoothed[1])  # a parent's share is its children's sum
    if mixup or cutmix:
        poses_per_example = (unsmoothed[2] > 0).sum(1)
        assert poses_per_example.max() == 2 and poses_per_example.min() >= 1  # at most two images' poses mixed


def test_mixing_one_level_and_plain_batches():
    collator = TrainingCollator([82], [], mixup_alpha=0.8)
    batch = collator([{**e, "labels": e["labels"][-1]} for e in examples(4)])
    assert batch["labels"].shape == (4, 82)
    torch.testing.assert_close(batch["labels"].sum(1), torch.ones(4))
    plain = TrainingCollator([82], [])([{**e, "labels": e["labels"][-1]} for e in examples(4)])
    assert plain["labels"].dtype == torch.long and plain["labels"].shape == (4,)


def test_training_transform_flags():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    for crop in ("random", "random_resized", "none"):
        out = TrainingTransform(32, (0.5,) * 3, (0.5,) * 3, train_crop=crop, hflip=0.5, rand_augment_ops=2,
                                rand_augment_magnitude=15, reprob=0.5)(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    plain = TrainingTransform(32, (0.5,) * 3, (0.5,) * 3)(image)
    flipped = TrainingTransform(32, (0.5,) * 3, (0.5,) * 3, hflip=1.0)(image)
    torch.testing.assert_close(flipped, plain.flip(-1))
    erased = TrainingTransform(32, (0.5,) * 3, (0.5,) * 3, reprob=1.0)(image)
    assert (erased != plain).any()


@pytest.mark.slow
def test_training_with_every_regulariser_on(poses, tmp_path):
    out = tmp_path / "regularised"
    train_main(["--dataset_name", str(poses), "--label_level", "all", "--output_dir", str(out), "--model_preset",
                "vit-pico", "--config_overrides", TINY, "--max_steps", "3", "--per_device_train_batch_size", "8",
                "--train_crop", "random_resized", "--crop_min_scale", "0.35", "--hflip", "0.5", "--rand_augment_ops",
                "2", "--rand_augment_magnitude", "12", "--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25",
                "--label_smoothing_factor", "0.1", "--drop_path_rate", "0.1", "--max_eval_samples", "16",
                "--dataloader_num_workers", "0", "--eval_strategy", "no", "--save_strategy", "no",
                "--load_best_model_at_end", "False", "--logging_steps", "1", "--logging_strategy", "steps"])
    config = json.loads((out / "config.json").read_text())
    assert config["drop_path_rate"] == 0.1
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert len(steps) == 3 and all(np.isfinite(e["loss"]) and 0 <= e["train_accuracy"] <= 1 for e in steps)
    card = (out / "README.md").read_text()
    assert "MixUp (alpha 0.8)" in card and "random erasing (p=0.25)" in card


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_parses_and_a_flag_still_wins(recipe, tmp_path):
    run = parse_arguments(["--dataset_name", str(tmp_path), "--recipe", recipe, "--learning_rate", "0.123",
                           "--output_dir", str(tmp_path / "out")])
    values = {**vars(run.model), **vars(run.data), **vars(run.training)}
    for name, value in RECIPES[recipe].items():
        if name != "learning_rate":
            assert values[name] == value or getattr(values[name], "value", None) == value, name
    assert run.training.learning_rate == 0.123


def test_the_few_photos_recipe_is_the_measured_long_schedule():
    """`few-photos` is `small-data` with what measured better on a few hundred real photos (docs/training.md): vit-pico,
    batches of 32 (8 optimiser steps an epoch on 249 photos, not 1) and 120 epochs."""
    from vit_yoga.recipes import SMALL_DATA_RECIPE

    changed = {k: v for k, v in RECIPES["few-photos"].items() if SMALL_DATA_RECIPE.get(k) != v}
    assert changed == {"model_preset": "vit-pico", "per_device_train_batch_size": 32, "num_train_epochs": 120.0}
    assert RECIPES["few-photos"].keys() == SMALL_DATA_RECIPE.keys()
    # On the built-in synthetic poses every recipe is resized for a CPU: there few-photos is the default run.
    from vit_yoga.recipes import run_defaults

    def defaults(recipe):
        return run_defaults(synthetic=True, init_from=None, label_level="3", label_column=None, world_size=1,
                            recipe=recipe)[0]

    assert defaults("few-photos") == defaults(None)
