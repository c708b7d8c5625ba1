"""Pretrain a ViTYoga backbone on unlabelled photos (self-supervised), then fine-tune it with train.py --init_from.

    accelerate launch pretrain.py                                        # the synthetic poses, a CPU-sized model
    accelerate launch pretrain.py --train_dir my_photos --model_preset vit-pico --output_dir runs/pretrain
    accelerate launch pretrain.py --dataset_name data/yoga82 --extra_images more_photos/ --method dino
    accelerate launch train.py --init_from runs/pretrain --train_dir my_photos    # a new head, the fine-tuning recipe

Only the training split's images are learnt from (plus --extra_images); the labels, where the data set has them, are
read for one thing: the k-NN accuracy of the features on the validation split at each evaluation, which shows
pretraining working before any fine-tuning. Every TrainingArguments flag works (``python pretrain.py --help``). The
output folder is a backbone checkpoint (ViTYogaModel: weights, config, model code, image processor, model card,
curves) that ``AutoModel.from_pretrained(..., trust_remote_code=True)`` loads.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import set_seed

from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import ViTYogaModel
from vit_yoga.models import config_overrides, image_processor
from vit_yoga.outputs import (
    UmaskPermissions,
    check_output_dir,
    release_previous_run,
    resolve_resume,
    set_aside_previous_run,
)
from vit_yoga.plots import plot_pretraining_history
from vit_yoga.pretraining import (
    PretrainTrainer,
    SelfSupervisedSchedule,
    build_self_supervised,
    collate_views,
    load_pretraining_data,
    parse_pretrain_arguments,
    pretraining_record,
    with_evaluation_transform,
    write_pretraining_card,
    write_results,
)
from vit_yoga.runtime import start_run
from vit_yoga.self_supervised import SelfSupervisedViews, ViewsTransform
from yoga_common.errors import UsageError, command_line
from yoga_common.files import give_umask_permissions
from yoga_common.hub import push_model_folder

logger = logging.getLogger("pretrain")


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse: pretraining's defaults first, then the user's flags.
    run = parse_pretrain_arguments(sys.argv[1:] if argv is None else argv)
    model_args, data_args, pretrain_args, training_args = run.model, run.data, run.pretrain, run.training
    start_run(training_args, logger, run.defaults_note, data_args.synthetic)
    output_dir = Path(training_args.output_dir)
    replaces_previous_run = check_output_dir(training_args, overwrite=training_args.overwrite_output_dir)
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)

    # 2. Model: a new ViTYoga backbone (or --init_from's), and the method's heads (and teacher) around it.
    overrides = config_overrides(model_args, data_args)
    if model_args.init_from:
        backbone = ViTYogaModel.from_pretrained(model_args.init_from, **overrides)
    else:
        try:
            config = ViTYogaConfig.from_preset(model_args.model_preset or "vit-ti16", **overrides,
                                               attn_implementation=model_args.attn_implementation)
        except (ValueError, TypeError) as error:
            raise UsageError(f"cannot build the model: {error}") from None
        backbone = ViTYogaModel(config)
    model = build_self_supervised(backbone, pretrain_args)
    processor = image_processor(backbone, model_args.init_from)
    config = backbone.config

    # 3. Data: the training split's images (and --extra_images), never validation or test; labels for k-NN only.
    # Photos much larger than the model needs are decoded and resized once, into a cache later epochs and runs reuse.
    data = load_pretraining_data(data_args, pretrain_args, training_args, config.image_size)
    logger.info(f"Method: {pretrain_args.method}; backbone {sum(p.numel() for p in backbone.parameters()):,} "
                f"parameters, {config.num_hidden_layers} layers x {config.hidden_size} wide, {config.image_size} px; "
                f"{data.training_images} training images + {data.extra_images} extra; k-NN labels: "
                f"{data.label_column or 'none'}; processes: {training_args.world_size}")

    # 4. Input pipeline: each training image decoded once per step into its views; k-NN images as the pipeline
    # prepares them.
    views = SelfSupervisedViews(
        config.image_size, processor.image_mean, processor.image_std, global_views=pretrain_args.global_views,
        local_views=pretrain_args.local_views, global_scale=(pretrain_args.global_crop_min_scale, 1.0),
        local_scale=(0.05, pretrain_args.global_crop_min_scale),
    )
    views_of_images = ViewsTransform(views, training_args.seed)
    images = data.images
    images.set_transform(views_of_images)
    label_column = data.label_column or "no_label"
    knn_queries = with_evaluation_transform(data.knn_queries, processor, label_column)
    knn_bank = with_evaluation_transform(data.knn_bank, processor, label_column) if data.knn_bank else None

    # 5. Pretrain.
    previous_run = set_aside_previous_run(training_args) if replaces_previous_run else None
    trainer = PretrainTrainer(
        model=model, args=training_args, data_collator=collate_views, train_dataset=images,
        eval_dataset=knn_queries, knn_bank=knn_bank, knn_queries=knn_queries, knn_k=pretrain_args.knn_k,
        callbacks=[UmaskPermissions()],
    )
    trainer.add_callback(SelfSupervisedSchedule(trainer, views_of_images))
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics, combined=False)  # no all_results.json: not a classifier
    trainer.save_state()

    # 6. Write the backbone checkpoint: weights, config (with what pretraining did), code, processor, curves, card.
    record = pretraining_record(run, data, trainer.state.log_history, trainer.state)
    if trainer.is_world_process_zero():
        encoder = trainer.accelerator.unwrap_model(trainer.model).encoder
        encoder.config.pretraining = record
        encoder.config.architectures = [type(encoder).__name__]
        encoder.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        plots = ["training_curves.png"] if plot_pretraining_history(
            trainer.state.log_history, output_dir / "training_curves.png") else []
        write_results(output_dir, record, trainer.state.log_history)
        write_pretraining_card(output_dir, encoder, record, run.hub.repo_id if run.hub else output_dir.name, plots)
        give_umask_permissions(output_dir)
        release_previous_run(previous_run)
    trainer.accelerator.wait_for_everyone()

    # 7. Push the finished folder; a failed push leaves it complete and exits non-zero.
    if run.hub and trainer.is_world_process_zero():
        push_model_folder(output_dir, run.hub, "Upload a ViTYoga backbone pretrained with pretrain.py", logger)
    return {"output_dir": str(output_dir), "record": record, "trainer": trainer}


if __name__ == "__main__":
    sys.exit(command_line(main))  # a UsageError: one "error: ..." line and exit status 2
