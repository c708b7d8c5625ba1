"""train.py's flags: three dataclasses read by transformers' HfArgumentParser, over the defaults of recipes.py.

Every ``TrainingArguments`` flag works as in any transformers script. The fields below hold neutral values only
(augmentation off, no early stopping); the values a run starts from are the recipe's, applied before parsing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from configuration_vit_yoga import PATCH_EMBEDDING_TYPES, VIT_YOGA_PRESETS, ViTYogaConfig
from yoga_common.errors import UsageError
from yoga_common.hub import HubTarget

from .recipes import DEFAULT_RECIPE, RECIPES, run_defaults

SYNTHETIC = "synthetic"


def flag(default: Any, text: str, **metadata: Any) -> Any:
    """A dataclass field that HfArgumentParser turns into ``--name``: its default, its help ``text`` and any other
    argparse setting (``choices``...)."""
    return field(default=default, metadata={"help": text, **metadata})

RECIPE_DEFAULT = "Default: set by the recipe (see docs/training.md)."


@dataclass
class ModelArguments:
    model_preset: str | None = flag(None, f"Model size: one of {sorted(VIT_YOGA_PRESETS)}. {RECIPE_DEFAULT}")
    config_overrides: str | None = flag(
        None,
        "Config fields to override, 'k=v,k=v' (e.g. 'num_hidden_layers=6,drop_path_rate=0.1'). "
        "With --init_from, architecture fields must equal the checkpoint's.",
    )
    init_from: str | None = flag(
        None,
        "A ViTYoga checkpoint folder or Hub id to start from (e.g. a model trained on another "
        "label level, or convert_vit_checkpoint.py's output). A head whose classes differ is "
        "re-initialised.",
    )
    attn_implementation: str = flag("sdpa", "eager, sdpa, flash_attention_2, ...")
    hidden_dropout_prob: float | None = flag(
        None,
        "Dropout on the embeddings and after attention and MLP. Default: the recipe's for a new "
        "model, the checkpoint's with --init_from.",
    )
    patch_embedding_type: str | None = flag(
        None,
        "'standard' (the ViT's patch projection; ports to and from transformers and timm) or "
        "'conv_stem' (3x3 convolutions, Xiao et al. 2021; why: docs/training.md). "
        "Default: the recipe's for a new model, the checkpoint's with --init_from.",
        choices=list(PATCH_EMBEDDING_TYPES),
    )
    drop_path_rate: float | None = flag(
        None,
        "Stochastic depth of the last block (growing linearly from 0 at the first). Default: the "
        "recipe's for a new model, the checkpoint's with --init_from.",
    )


@dataclass
class DataSourceArguments:
    """Where the images (and labels) come from: train.py's and pretrain.py's data flags."""

    dataset_name: str = flag(
        SYNTHETIC,
        "'synthetic' (generated once into a cache folder), a folder written by `python -m yoga82 "
        "prepare`, or a Hub data set id.",
    )
    dataset_config_name: str | None = flag(None, "The Hub data set's config.")
    train_dir: str | None = flag(None, "An image folder (one subfolder per class).")
    validation_dir: str | None = flag(None, "An image folder for validation.")
    test_dir: str | None = flag(None, "An image folder for the final test.")
    label_level: str = flag(
        "3",
        "1, 2, 3 or all: Yoga-82's label_6, label_20, label_82, or all three heads at once.",
        choices=["1", "2", "3", "all"],
    )
    label_column: str | None = flag(None, "The label column of a data set that is not Yoga-82 (overrides label_level).")
    image_column: str | None = flag(None, "Default: the data set's Image column.")
    image_size: int | None = flag(None, "Same as --config_overrides image_size=N. Default: the model's.")
    validation_fraction: float = flag(0.1, "Share of train held out when the data set has no validation split.")
    max_train_samples: int | None = flag(None, "Truncate train (debugging).")
    max_eval_samples: int | None = flag(None, "Truncate validation and test.")
    synthetic_images_per_class: int = flag(40, "Size of the synthetic data set.")
    synthetic_image_size: int = flag(64, "Side of the synthetic images.")
    decode_cache: str = flag(
        "auto",
        "'auto': when a sample of the image headers shows the train or validation images much "
        "larger than the model needs (over 2.25x the pixels of a shorter side of max(256, 8/7 of "
        "the image size)), decode and resize them once to that shorter side, into a lossless cache "
        "beside the data set that later epochs and runs reuse (rebuilt when a file changes). "
        "'off': decode the original files at every read.",
        choices=["auto", "off"],
    )

    @property
    def synthetic(self) -> bool:
        return self.dataset_name == SYNTHETIC and not self.train_dir


@dataclass
class DataArguments(DataSourceArguments):
    """The data flags of train.py: the source, and the training augmentation."""

    train_crop: str = flag(
        "none",
        "Training crop: 'random' (squash to 8/7 of the size, then a random crop: the report's 224 "
        "from 256), 'random_resized' (a random area, at least --crop_min_scale of the image, and "
        "aspect ratio, resized: DeiT's and timm's) or 'none' (squash to the size, as evaluation "
        f"does). {RECIPE_DEFAULT}",
        choices=["random", "random_resized", "none"],
    )
    crop_min_scale: float = flag(0.08, "Smallest share of the image a 'random_resized' crop keeps (timm's --scale).")
    hflip: float = flag(0.0, f"Probability of a horizontal flip in training (0: off). {RECIPE_DEFAULT}")
    rand_augment_ops: int = flag(0, f"RandAugment operations per training image (0: off). {RECIPE_DEFAULT}")
    rand_augment_magnitude: int = flag(9, f"RandAugment magnitude, 0 to 30 (torchvision's default 9). {RECIPE_DEFAULT}")
    mixup: float = flag(0.0, f"MixUp alpha (0: off); with --cutmix, each batch gets one of the two. {RECIPE_DEFAULT}")
    cutmix: float = flag(0.0, f"CutMix alpha (0: off). {RECIPE_DEFAULT}")
    reprob: float = flag(0.0, f"Random erasing probability (timm's --reprob; 0: off). {RECIPE_DEFAULT}")


@dataclass
class YogaTrainingArguments(TrainingArguments):
    """TrainingArguments plus the recipe, early stopping, and the run-level flag transformers 5 no longer has."""

    recipe: str | None = flag(
        None,
        f"The defaults to start from: one of {sorted(RECIPES)} (docs/training.md). Default: "
        f"{DEFAULT_RECIPE!r}, CPU-sized on the built-in synthetic poses.",
        choices=sorted(RECIPES),
    )
    early_stopping_patience: int = flag(
        0,
        "Stop after this many evaluations without a better --metric_for_best_model (0: off). "
        + RECIPE_DEFAULT,
    )
    overwrite_output_dir: bool = flag(
        False,
        "Start over in an --output_dir that holds another run (its files are moved aside and "
        "removed once this run has finished).",
    )
    layer_decay: float = flag(
        1.0,
        "Layer-wise learning-rate decay (BEiT, MAE fine-tuning): block i of L learns at "
        "layer_decay ** (L - i) times the rate of the head (1: off). " + RECIPE_DEFAULT,
    )


@dataclass
class RunArguments:
    model: ModelArguments
    data: DataArguments
    training: YogaTrainingArguments
    hub: HubTarget | None  # where to push the finished folder; it alone holds the token
    defaults_note: str  # what the log says about the defaults this run started from


def _parser(add_help: bool = True) -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, YogaTrainingArguments), add_help=add_help)


def _field_defaults() -> dict[str, Any]:
    return {f.name: f.default for cls in (ModelArguments, DataArguments) for f in fields(cls)}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # TrainingArguments turns some strings into enums


def pretraining_record(init_from: str | None) -> dict[str, Any] | None:
    """config.json's ``pretraining`` of an --init_from backbone that pretrain.py wrote (it has no head), else None."""
    if not init_from:
        return None
    try:
        config, _ = ViTYogaConfig.get_config_dict(init_from)
    except (OSError, ValueError):
        return None  # build_model says what is wrong with the checkpoint
    is_backbone = config.get("architectures") == ["ViTYogaModel"]
    return config.get("pretraining") if is_backbone else None


def parse_arguments(argv: list[str]) -> RunArguments:
    """Parse the command line (or one JSON file of flags) over the defaults of recipes.py."""
    json_file = argv[0] if len(argv) == 1 and argv[0].endswith(".json") else None
    if json_file:
        given = json.loads(Path(json_file).read_text())
        first = {**_field_defaults(), **given}
    else:
        # The same parser (so the same spellings and abbreviations), without --help and without building the
        # dataclasses: only the flags that choose the defaults are read here.
        first = vars(_parser(add_help=False).parse_known_args(argv)[0])
    defaults, recipe, source = run_defaults(
        synthetic=first["dataset_name"] == SYNTHETIC and not first["train_dir"],
        init_from=first["init_from"],
        label_level=first["label_level"],
        label_column=first["label_column"],
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        recipe=first.get("recipe"),
        pretrained=pretraining_record(first["init_from"]),
    )
    parser = _parser()
    if json_file:
        model_args, data_args, training_args = parser.parse_dict({**defaults, **given})
    else:
        parser.set_defaults(**defaults)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    if model_args.model_preset and model_args.model_preset not in VIT_YOGA_PRESETS:
        raise UsageError(f"--model_preset {model_args.model_preset!r} is unknown; choose one of "
                         f"{sorted(VIT_YOGA_PRESETS)}.")
    if training_args.early_stopping_patience > 0 and not training_args.load_best_model_at_end:
        # transformers' EarlyStoppingCallback needs the best model tracked (it asserts so at the first step); a
        # patience that would be silently ignored is refused before any work instead.
        raise UsageError(
            f"--early_stopping_patience {training_args.early_stopping_patience} needs --load_best_model_at_end True "
            "(early stopping compares each evaluation with the best one, which only that tracks; it also needs "
            "--eval_strategy and --save_strategy to match). Pass --load_best_model_at_end True, or "
            "--early_stopping_patience 0 to train without early stopping."
        )
    hub = HubTarget.from_training_args(training_args) if training_args.push_to_hub else None
    # The token must not be pickled into every checkpoint's training_args.bin; the hub target keeps it. Trainer
    # must not push either: the finished folder is pushed once, at the end.
    training_args.hub_token = None
    training_args.push_to_hub = False

    values = {**vars(model_args), **vars(data_args), **vars(training_args)}
    kept = ", ".join(f"{name}={_plain(values[name])}" for name in recipe if values[name] == recipe[name])
    note = f"Defaults from {source} (a flag you give overrides its default): {kept}."
    if data_args.synthetic:
        note = ("No data set given: training on the built-in synthetic poses (pass --dataset_name <folder or Hub id> "
                f"for Yoga-82). {note}")
    return RunArguments(model_args, data_args, training_args, hub, note)
