"""Train ViTYoga on Yoga-82 (or any image data set) with transformers' Trainer on Accelerate.

    accelerate launch train.py --label_level 3                       # synthetic poses, a CPU-sized model
    accelerate launch train.py --label_level 1 --dataset_name data/yoga82 --output_dir runs/level1
    accelerate launch train.py --label_level 3 --dataset_name data/yoga82 --init_from runs/level1
    accelerate launch train.py --label_level all --dataset_name data/yoga82 --push_to_hub --hub_model_id me/vit-yoga

Every ``TrainingArguments`` flag works too (``python train.py --help``). The output folder is a complete Hub model
repo: safetensors weights, config with auto_map, the model code, the image processor, results JSON, plots and a
model card. This file tells the story of a run; the work is done by the modules of the ``vit_yoga`` package.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import datasets
from transformers import EarlyStoppingCallback, set_seed

from vit_yoga.arguments import parse_arguments
from vit_yoga.card import write_model_card
from vit_yoga.data import DATA_RECORD_KEY, data_record, load_data
from vit_yoga.evaluation import HierarchicalMetrics, evaluate_split
from vit_yoga.image_cache import decode_once
from vit_yoga.models import SaveHierarchicalPipeline, build_model, image_processor, save_hierarchical_pipeline
from vit_yoga.outputs import (
    UmaskPermissions,
    check_output_dir,
    release_previous_run,
    resolve_resume,
    set_aside_previous_run,
)
from vit_yoga.plots import plot_history
from vit_yoga.runtime import start_run
from vit_yoga.trainer import YogaTrainer
from vit_yoga.transforms import BatchTransform, EvaluationTransform, TrainingCollator, TrainingTransform, collate
from yoga_common.errors import command_line
from yoga_common.files import give_umask_permissions
from yoga_common.hub import push_model_folder

logger = logging.getLogger("train")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # 1. Parse: the recipe's defaults first, then the user's flags (every flag wins over its default).
    run = parse_arguments(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args = run.model, run.data, run.training
    start_run(training_args, logger, run.defaults_note, data_args.synthetic)
    output_dir = Path(training_args.output_dir)

    # Everything a user can get wrong is checked before training: the output folder, the checkpoint to resume,
    # the data, the labels and the model.
    replaces_previous_run = check_output_dir(training_args, overwrite=training_args.overwrite_output_dir)
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)

    # 2. Data: the splits, the label columns and the hierarchy the data states.
    dataset, image_column, labels = load_data(data_args, training_args)

    # 3. Model: a new ViTYoga, or --init_from's backbone (and head, where the classes are the same).
    model = build_model(model_args, data_args, labels)
    processor = image_processor(model, model_args.init_from)
    config = model.config
    logger.info(f"Processes: {training_args.world_size} ({training_args.parallel_mode.value}), device "
                f"{training_args.device}")
    logger.info(f"Model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{config.num_hidden_layers} layers x {config.hidden_size} wide, {config.image_size} px; labels "
                f"{labels.columns}; data {', '.join(f'{k}: {len(v)}' for k, v in dataset.items())}")

    # Images much larger than the model needs are decoded and resized once, into a cache later epochs and runs reuse.
    dataset = decode_once(dataset, image_column, config.image_size, training_args, mode=data_args.decode_cache)

    # 4. Input pipeline: training images decoded and augmented on the fly; evaluation images prepared exactly as
    # pipeline("image-classification") prepares them with the saved processor.
    train_transform = TrainingTransform(
        config.image_size, processor.image_mean, processor.image_std, train_crop=data_args.train_crop,
        crop_min_scale=data_args.crop_min_scale, hflip=data_args.hflip, rand_augment_ops=data_args.rand_augment_ops,
        rand_augment_magnitude=data_args.rand_augment_magnitude, reprob=data_args.reprob,
    )
    for split, ds in dataset.items():
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decoded by the transforms
        transform = train_transform if split == "train" else EvaluationTransform(processor)
        ds.set_transform(BatchTransform(transform, image_column, labels.columns))
        dataset[split] = ds

    # 5. Train.
    previous_run = set_aside_previous_run(training_args) if replaces_previous_run else None
    metrics = HierarchicalMetrics(labels.columns, labels.class_names, labels.hierarchy)
    callbacks = [SaveHierarchicalPipeline(), UmaskPermissions()]  # the pipeline file first, then the modes
    if training_args.early_stopping_patience > 0:  # with --load_best_model_at_end (parse_arguments checks)
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    parents = labels.hierarchy.get("hierarchy_parents", []) if labels.hierarchical else []
    trainer = YogaTrainer(
        model=model, args=training_args, data_collator=collate,
        train_collator=TrainingCollator(
            [len(n) for n in labels.class_names], parents, label_smoothing=training_args.label_smoothing_factor,
            mixup_alpha=data_args.mixup, cutmix_alpha=data_args.cutmix,
        ),
        train_dataset=dataset["train"], eval_dataset=dataset["validation"], compute_metrics=metrics,
        callbacks=callbacks,
    )
    ignore_keys = ["logits", "level_losses"] if labels.hierarchical else None  # predictions: each level's logits
    train_result = trainer.train(resume_from_checkpoint=resume, ignore_keys_for_eval=ignore_keys)
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle has no place in a shared repo
    train_metrics = dict(train_result.metrics, train_samples=len(dataset["train"]))
    trainer.log_metrics("train", train_metrics)
    # With where the images came from (vit_yoga.data.data_record): what the ONNX export checks on by default.
    trainer.save_metrics("train", dict(train_metrics, **{DATA_RECORD_KEY: data_record(data_args, training_args.seed)}))
    trainer.save_state()

    # 6. Evaluate the final model on validation and test.
    results: dict[str, dict[str, dict[str, Any]]] = {}
    plots: list[str] = []
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split not in dataset:
            logger.info(f"No {split} split: skipping its evaluation.")
            continue
        results[split], split_plots = evaluate_split(trainer, dataset[split], split, prefix, metrics, output_dir,
                                                     ignore_keys)
        plots += split_plots

    # 7. Write the rest of the model repo: processor, curves, model card.
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        save_hierarchical_pipeline(output_dir)
        if plot_history(trainer.state.log_history, output_dir / "training_curves.png"):
            plots.insert(0, "training_curves.png")
        sizes = {split: len(ds) for split, ds in dataset.items()}
        repo_name = run.hub.repo_id if run.hub else output_dir.name
        write_model_card(output_dir, model, data_args, training_args, results, labels.columns, sizes, plots,
                         repo_name)
        give_umask_permissions(output_dir)  # the weights too: safetensors writes them 0600
        release_previous_run(previous_run)
    trainer.accelerator.wait_for_everyone()

    # 8. Push the finished folder; a failed push leaves it complete and exits non-zero.
    if run.hub and trainer.is_world_process_zero():
        push_model_folder(output_dir, run.hub, "Upload ViTYoga trained with train.py", logger)
    # The trainer and the splits as prepared above (transforms set) go back to a caller that evaluates further: the
    # train/serve parity test compares this very evaluation path with the pipeline, image by image.
    return {"results": results, "output_dir": str(output_dir), "train": train_metrics, "trainer": trainer,
            "datasets": dataset}


if __name__ == "__main__":
    sys.exit(command_line(main))  # a UsageError: one "error: ..." line and exit status 2
