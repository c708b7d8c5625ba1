"""The model of a run: a new ViTYoga of a preset, or the ``--init_from`` checkpoint with a new head where the classes
changed, and the image processor that ships with it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

import answers_vit_yoga
import pipeline_vit_yoga
from configuration_vit_yoga import VIT_YOGA_PRESETS, ViTYogaConfig
from modeling_vit_yoga import (
    ViTYogaForHierarchicalClassification,
    ViTYogaForImageClassification,
    ViTYogaModel,
    vit_yoga_image_processor,
)
from yoga82.labels import display_names
from yoga_common.errors import UsageError
from yoga_common.files import atomic_write

from .arguments import DataArguments, ModelArguments
from .data import Labels

logger = logging.getLogger(__name__)

# Fields that shape the weights: a checkpoint's values cannot change. The others (dropout, drop path) may.
ARCHITECTURE_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "qkv_bias", "layer_norm_eps", "patch_embedding_type",
)
HIERARCHICAL = ViTYogaForHierarchicalClassification.__name__
SINGLE_HEAD = ViTYogaForImageClassification.__name__


def parse_overrides(text: str | None) -> dict[str, Any]:
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise UsageError(f"--config_overrides item {item!r} is not key=value.")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def config_overrides(model_args: ModelArguments, data_args: DataArguments) -> dict[str, Any]:
    """The config fields the flags set: --config_overrides, --image_size, --patch_embedding_type,
    --hidden_dropout_prob, --drop_path_rate."""
    overrides = parse_overrides(model_args.config_overrides)
    flags = {"image_size": data_args.image_size, "patch_embedding_type": model_args.patch_embedding_type,
             "hidden_dropout_prob": model_args.hidden_dropout_prob, "drop_path_rate": model_args.drop_path_rate}
    for name, value in flags.items():
        if value is None:
            continue
        if overrides.get(name, value) != value:
            raise UsageError(f"--{name} {value} and --config_overrides {name}={overrides[name]} disagree; "
                             "give one of them.")
        overrides[name] = value
    unknown = set(overrides) - set(ViTYogaConfig().to_dict())
    if unknown:
        raise UsageError(f"--config_overrides names fields ViTYogaConfig lacks: {sorted(unknown)}.")
    return overrides


def build_model(model_args: ModelArguments, data_args: DataArguments, labels: Labels) -> torch.nn.Module:
    """A fresh model of the preset, or the ``--init_from`` checkpoint with a new head where the classes changed."""
    model_class = ViTYogaForHierarchicalClassification if labels.hierarchical else ViTYogaForImageClassification
    names = labels.class_names[-1]
    every_name = labels.hierarchy.get("hierarchy_class_names") or labels.class_names
    label_kwargs = dict(
        labels.hierarchy, label_level=labels.label_level,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        display_names=display_names([name for level in every_name for name in level]),
        attn_implementation=model_args.attn_implementation,
    )
    overrides = config_overrides(model_args, data_args)
    if not model_args.init_from:
        try:
            config = ViTYogaConfig.from_preset(model_args.model_preset or "vit-ti16", **label_kwargs, **overrides)
        except (ValueError, TypeError) as error:
            raise UsageError(f"cannot build the model: {error}") from None
        model = model_class(config)
    else:
        model = _from_checkpoint(model_args, model_class, labels, label_kwargs, overrides)
    # Every config.json the run writes (checkpoints and the final folder) names the hierarchical pipeline;
    # save_hierarchical_pipeline puts its code beside it.
    model.config.custom_pipelines = pipeline_vit_yoga.CUSTOM_PIPELINES
    return model


def save_hierarchical_pipeline(output_dir: str | Path) -> None:
    """Make a saved ViTYoga folder serve ``pipeline("hierarchical-image-classification", model=output_dir,
    trust_remote_code=True)``: ``pipeline_vit_yoga.py`` and ``answers_vit_yoga.py`` (which it imports) beside the
    model code, and config.json's ``custom_pipelines`` entry, as transformers' pipeline registry writes them.

    A plain copy of one file: transformers' ``Pipeline.save_pretrained`` does the same but needs the pipeline built
    and saves the weights again.
    """
    folder = Path(output_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{folder} has no config.json; save the model there first (model.save_pretrained).")
    for module in (pipeline_vit_yoga, answers_vit_yoga):  # the pipeline and the answers it builds (imported by it)
        atomic_write(folder / Path(module.__file__).name, Path(module.__file__).read_bytes())
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("custom_pipelines") != pipeline_vit_yoga.CUSTOM_PIPELINES:
        config["custom_pipelines"] = pipeline_vit_yoga.CUSTOM_PIPELINES
        atomic_write(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


class SaveHierarchicalPipeline(TrainerCallback):
    """Puts the hierarchical pipeline into each checkpoint Trainer saves, so that every folder of a run serves it."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                save_hierarchical_pipeline(checkpoint)


def _from_checkpoint(
    model_args: ModelArguments, model_class: type, labels: Labels, label_kwargs: dict[str, Any],
    overrides: dict[str, Any],
) -> torch.nn.Module:
    init_from = model_args.init_from
    try:
        source_dict, _ = ViTYogaConfig.get_config_dict(init_from)
        if source_dict.get("model_type") != ViTYogaConfig.model_type:
            raise ValueError(
                f"it is a {source_dict.get('model_type')!r} checkpoint, not a ViTYoga one; convert it first with "
                "`python convert_vit_checkpoint.py --source ... --output_dir ...`"
            )
        source = ViTYogaConfig.from_pretrained(init_from)
    except (OSError, ValueError) as error:
        raise UsageError(f"--init_from {init_from}: {error}") from None
    if source.hierarchy_levels and labels.hierarchy and (
        source.hierarchy_class_names != labels.hierarchy["hierarchy_class_names"]
        or source.hierarchy_parents != labels.hierarchy["hierarchy_parents"]
    ):
        raise UsageError(
            f"--init_from {init_from} was trained on another label hierarchy than this data set's "
            "(class names or parents differ); fine-tune from a checkpoint of the same hierarchy."
        )
    # A preset given with --init_from is a set of architecture overrides like any other.
    asked = {**VIT_YOGA_PRESETS.get(model_args.model_preset or "", {}), **overrides}
    for name in ARCHITECTURE_FIELDS:
        value = asked.get(name, getattr(source, name))
        if value != getattr(source, name):
            flag = f"--model_preset {model_args.model_preset}" if name not in overrides else "your flags"
            what = (f"a {source.image_size} px model but {value} px was asked for" if name == "image_size" else
                    f"a model with {name}={getattr(source, name)} but {name}={value} was asked for")
            raise UsageError(
                f"--init_from {init_from} is {what} ({name}, by {flag}); the weights fix the architecture: drop "
                f"that override (images are resized to the checkpoint's {source.image_size} px) or train a new model "
                "without --init_from."
            )
    source_architectures = source.architectures or []
    names = labels.class_names[-1]
    same_head = (
        not labels.hierarchical
        and source.num_labels == len(names)
        and source.id2label == dict(enumerate(names))
        and SINGLE_HEAD in source_architectures
    ) or (labels.hierarchical and HIERARCHICAL in source_architectures)
    try:
        config = ViTYogaConfig.from_pretrained(init_from, **label_kwargs, **overrides)
        config.validate_vit_yoga()  # from_pretrained sets the overrides after the config has validated itself
    except ValueError as error:
        raise UsageError(f"--init_from {init_from} with your overrides: {error}") from None
    config.init_lineage = [*source.init_lineage, {
        "checkpoint": init_from,
        "label_level": source.label_level or ("all" if HIERARCHICAL in source_architectures else None),
        "num_labels": source.num_labels,
        "head": "kept" if same_head else "re-initialised",
    }]
    if same_head:
        return model_class.from_pretrained(init_from, config=config)
    model = model_class(config)
    backbone = ViTYogaModel.from_pretrained(init_from)
    model.vit.load_state_dict(backbone.state_dict())
    level = labels.label_level or ("all" if labels.hierarchical else None)
    logger.warning(
        f"Initialised the backbone from {init_from} ({source.num_labels} classes, level {source.label_level}); the "
        f"head is new ({model.config.num_labels} classes, level {level})."
    )
    return model


def image_processor(model: torch.nn.Module, init_from: str | None):
    """The processor the output folder ships: the --init_from checkpoint's normalisation if it has one (e.g. an
    ImageNet model's mean and std), else ViT's 0.5; the model's size."""
    mean_std: dict[str, Any] = {}
    if init_from:
        from transformers import AutoImageProcessor

        try:
            source = AutoImageProcessor.from_pretrained(init_from)
            mean_std = dict(image_mean=source.image_mean, image_std=source.image_std)
        except (OSError, ValueError):
            pass  # no preprocessor_config.json: ViT's usual 0.5 normalisation
    return vit_yoga_image_processor(model.config, **mean_std)
