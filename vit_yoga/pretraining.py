"""pretrain.py's parts: its flags, the unlabelled images it learns from, the k-NN reading of the features, the
Trainer that runs a self-supervised objective (self_supervised.py), and the backbone checkpoint it writes."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from modeling_vit_yoga import ViTYogaModel
from yoga_common.errors import UsageError
from yoga_common.files import atomic_write
from yoga_common.hub import HubTarget

from .arguments import SYNTHETIC, DataSourceArguments, ModelArguments, flag
from .data import LEVEL_COLUMNS, find_image_column, find_labels, load_image_dataset
from .image_cache import decode_once
from .recipes import PRETRAIN_RECIPE, PRETRAIN_RUN_DEFAULTS, PRETRAIN_SYNTHETIC, machine_defaults
from .self_supervised import METHODS, SelfSupervisedViT, ViewsTransform, feature_spread
from .transforms import BatchTransform, EvaluationTransform

logger = logging.getLogger(__name__)

IMAGE = "image"  # the one column of the pretraining images
NO_LABEL = "no_label"  # a constant column where the data set has no labels


@dataclass
class PretrainArguments:
    method: str = flag(
        "simclr",
        "The self-supervised objective: 'simclr' (contrastive: two views of an image pulled "
        "together, every other image of the batch pushed away) or 'dino' (self-distillation from "
        "a momentum teacher, with multi-crop). Which measured better: docs/pretraining.md.",
        choices=list(METHODS),
    )
    extra_images: str | None = flag(
        None,
        "A folder of more unlabelled photos (searched recursively; labels and subfolders are "
        "ignored), learnt from beside the training split's images.",
    )
    global_views: int = flag(2, "Full-size views of each image per step (at least 2).")
    local_views: int = flag(0, "DINO's small crops per image (half the image size; 0: none).")
    global_crop_min_scale: float = flag(0.25, "Smallest share of the image a full-size view keeps.")
    temperature: float = flag(0.2, "SimCLR's softmax temperature.")
    teacher_momentum: float = flag(
        0.99,
        "DINO: the teacher's momentum at the first step; it rises to 1 on a cosine over the run's "
        "optimizer steps.",
    )
    knn_k: int = flag(20, "Neighbours of the k-NN accuracy logged at each evaluation.")


@dataclass
class PretrainingArguments(TrainingArguments):
    overwrite_output_dir: bool = flag(
        False,
        "Start over in an --output_dir that holds another run (its files are moved aside and "
        "removed once this run has finished).",
    )


@dataclass
class PretrainRun:
    model: ModelArguments
    data: DataSourceArguments
    pretrain: PretrainArguments
    training: PretrainingArguments
    hub: HubTarget | None
    defaults_note: str


def parse_pretrain_arguments(argv: list[str]) -> PretrainRun:
    """The command line over pretraining's defaults (recipes.py): a flag the user gives wins."""
    classes = (ModelArguments, DataSourceArguments, PretrainArguments, PretrainingArguments)
    first = vars(HfArgumentParser(classes, add_help=False).parse_known_args(argv)[0])
    synthetic = first["dataset_name"] == SYNTHETIC and not first["train_dir"]
    chosen = {**PRETRAIN_RECIPE, **(PRETRAIN_SYNTHETIC if synthetic else {})}
    if first["init_from"]:
        for name in ("model_preset", "patch_embedding_type"):
            chosen.pop(name, None)
    defaults = {**PRETRAIN_RUN_DEFAULTS, **chosen, **machine_defaults(int(os.environ.get("WORLD_SIZE", "1"))),
                "output_dir": os.path.join("runs", "pretrain")}
    parser = HfArgumentParser(classes)
    parser.set_defaults(**defaults)
    model_args, data_args, pretrain_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if pretrain_args.global_views < 2:
        raise UsageError(f"--global_views {pretrain_args.global_views}: both methods compare at least 2 views of "
                         "an image; pass 2 or more.")
    if pretrain_args.local_views and pretrain_args.method != "dino":
        raise UsageError(f"--local_views {pretrain_args.local_views} is DINO's multi-crop; pass --method dino or "
                         "--local_views 0.")
    if pretrain_args.extra_images and not Path(pretrain_args.extra_images).is_dir():
        raise UsageError(f"--extra_images {pretrain_args.extra_images} is not a folder; give a folder of photos.")
    if training_args.load_best_model_at_end:
        raise UsageError("--load_best_model_at_end: pretraining keeps its last weights (the k-NN reading guides, it "
                         "does not select); drop the flag.")
    hub = HubTarget.from_training_args(training_args) if training_args.push_to_hub else None
    training_args.hub_token = None  # kept by the hub target alone: never pickled into a checkpoint
    training_args.push_to_hub = False
    values = {**vars(model_args), **vars(pretrain_args), **vars(training_args)}
    kept = ", ".join(f"{k}={getattr(values[k], 'value', values[k])}" for k in chosen if values.get(k) == chosen[k])
    note = f"Pretraining defaults (a flag you give overrides its default): {kept}."
    if synthetic:
        note = ("No data set given: pretraining on the built-in synthetic poses (pass --dataset_name or --train_dir "
                f"for your photos). {note}")
    return PretrainRun(model_args, data_args, pretrain_args, training_args, hub, note)


# --------------------------------------------------------------------------------------------------------- data
@dataclass
class PretrainingData:
    images: datasets.Dataset  # the training split's images (and --extra_images'): one column, IMAGE, undecoded
    knn_bank: datasets.Dataset | None  # the training split with its labels: the k-NN's neighbours (None: no labels)
    knn_queries: datasets.Dataset  # the validation split with its labels: what the k-NN is scored on and the
    # features' spread measured on (without labels: a sample of the training images)
    label_column: str | None
    training_images: int
    extra_images: int
    class_names: list[str] = dataclasses.field(default_factory=list)


def knn_label_column(features: datasets.Features, data_args: DataSourceArguments) -> str | None:
    """The labels the k-NN reading scores (their only use): --label_column, else the finest level --label_level
    names, else an image folder's ``label``; None when the data set has none."""
    if data_args.label_column:
        return data_args.label_column
    level = LEVEL_COLUMNS[data_args.label_level][-1]
    return next((c for c in (level, "label") if c in features), None)


def load_pretraining_data(data_args: DataSourceArguments, pretrain_args: PretrainArguments,
                          training_args: TrainingArguments, image_size: int) -> PretrainingData:
    """The images pretraining learns from: the training split only (validation and test stay unseen, so that a
    fine-tuned model's scores stay honest), plus --extra_images; and the labelled splits of the k-NN reading. Images
    much larger than ``image_size`` needs are decoded once (image_cache.decode_once, --decode_cache)."""
    dataset = load_image_dataset(data_args, training_args)
    image_column = find_image_column(dataset["train"].features, data_args.image_column)
    dataset = decode_once(dataset, image_column, image_size, training_args, mode=data_args.decode_cache)
    if data_args.max_train_samples:
        dataset["train"] = dataset["train"].select(range(min(data_args.max_train_samples, len(dataset["train"]))))
    if data_args.max_eval_samples:
        dataset["validation"] = dataset["validation"].select(
            range(min(data_args.max_eval_samples, len(dataset["validation"]))))
    train = _images_only(dataset["train"], image_column)
    extra = None
    if pretrain_args.extra_images:
        try:
            extra = datasets.load_dataset("imagefolder", data_dir=pretrain_args.extra_images, drop_labels=True,
                                          split="train")
        except (FileNotFoundError, ValueError) as error:  # datasets' "no data files" errors derive from these
            raise UsageError(f"--extra_images {pretrain_args.extra_images} holds no readable image files "
                             f"({type(error).__name__}); give a folder of photos.") from None
        if len(extra) == 0:
            raise UsageError(f"--extra_images {pretrain_args.extra_images} holds no image files.")
        column = find_image_column(extra.features, None)
        extra = decode_once(datasets.DatasetDict(train=extra), column, image_size, training_args,
                            mode=data_args.decode_cache)["train"]
        extra = _images_only(extra, column)
    images = datasets.concatenate_datasets([train, extra]) if extra is not None else train
    images = images.add_column("index", list(range(len(images))))  # each image's own views (ViewsTransform)

    column = knn_label_column(dataset["train"].features, data_args)
    if column is None:
        # No labels: the evaluations read the features' spread on (at most 512 of) the images, and no k-NN.
        logger.info("The data set has no labels: no k-NN reading; each evaluation logs the features' spread.")
        sample = train.select(range(min(512, len(train))))
        queries = sample.add_column(NO_LABEL, [0] * len(sample))
        return PretrainingData(images, None, queries, None, len(train), len(extra or []))
    labels = find_labels(dataset, dataclasses.replace(data_args, label_column=column))
    keep = [image_column, column]
    return PretrainingData(images, dataset["train"].select_columns(keep),
                           dataset["validation"].select_columns(keep), column, len(train), len(extra or []),
                           labels.class_names[0])


def _images_only(split: datasets.Dataset, image_column: str) -> datasets.Dataset:
    split = split.select_columns([image_column])
    if image_column != IMAGE:
        split = split.rename_column(image_column, IMAGE)
    return split.cast_column(IMAGE, datasets.Image(decode=False))


def with_evaluation_transform(split: datasets.Dataset, processor: Any, label_column: str) -> datasets.Dataset:
    """A labelled split as the k-NN reads it: each image prepared as the image-classification pipeline prepares it."""
    image_column = next(c for c in split.column_names if c != label_column)
    split = split.cast_column(image_column, datasets.Image(decode=False))
    split.set_transform(BatchTransform(EvaluationTransform(processor), image_column, [label_column]))
    return split


def collate_views(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack each key of the examples: views (batch, views, 3, h, w), or pixel_values and class ids."""
    return {key: torch.stack([e[key] for e in examples]) if torch.is_tensor(examples[0][key])
            else torch.tensor([e[key] for e in examples]) for key in examples[0]}


# -------------------------------------------------------------------------------------------------------- k-NN
def weighted_knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                      query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """DINO's weighted k-NN classifier on L2-normalised features: each query's ``k`` most cosine-similar bank
    features vote for their class with weight exp(similarity / temperature); top-1 accuracy of the votes."""
    bank, queries = F.normalize(bank.float(), dim=-1), F.normalize(queries.float(), dim=-1)
    similarity, index = (queries @ bank.T).topk(min(k, len(bank)), dim=-1)
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    votes = torch.zeros(len(queries), classes).scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
    return (votes.argmax(-1) == query_labels).float().mean().item()


# ----------------------------------------------------------------------------------------------------- trainer
class PretrainTrainer(Trainer):
    """Trainer for a SelfSupervisedViT: each evaluation is the k-NN top-1 of the pretrained backbone's features on
    the validation split (neighbours from the training split) and the features' spread, the collapse signal; the
    training logs carry the method's own statistics (DINO's teacher entropy, SimCLR's embedding spread)."""

    def __init__(self, *args: Any, knn_bank: datasets.Dataset | None = None,
                 knn_queries: datasets.Dataset | None = None, knn_k: int = 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.knn_bank, self.knn_queries, self.knn_k = knn_bank, knn_queries, knn_k
        self.warned_of_collapse = False

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log: every process gets here at the same step
            statistics = self.accelerator.unwrap_model(self.model).pop_statistics()
            for name, value in sorted(statistics.items()):
                logs[name] = round(self.accelerator.reduce(value.to(self.args.device), reduction="mean").item(), 4)
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def _features(self, encoder: ViTYogaModel, dataset: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image's pooled feature and label, from all processes (each process reads its share)."""
        features, labels = [], []
        for batch in self.get_eval_dataloader(dataset):
            pooled = encoder(pixel_values=batch["pixel_values"], pooled_only=True).pooler_output
            gathered = self.accelerator.gather_for_metrics((pooled.float().contiguous(), batch["labels"]))
            features.append(gathered[0].cpu())
            labels.append(gathered[1].cpu())
        return torch.cat(features), torch.cat(labels)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        encoder, was_training = model.encoder, model.training
        encoder.eval()
        try:
            queries, query_labels = self._features(encoder, self.knn_queries)
            metrics = {f"{metric_key_prefix}_feature_spread": round(feature_spread(queries).item(), 4)}
            if self.knn_bank is not None:
                bank, bank_labels = self._features(encoder, self.knn_bank)
                top1 = weighted_knn_top1(bank, bank_labels, queries, query_labels, self.knn_k)
                metrics[f"{metric_key_prefix}_knn_top1"] = round(top1, 4)
        finally:
            model.train(was_training)
        self.log(metrics)
        if not self.warned_of_collapse:  # once a run: the curves show the rest
            self.warned_of_collapse = warn_if_collapsed(self.state.log_history, self.state.global_step,
                                                        self.state.max_steps)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def warn_if_collapsed(log_history: list[dict[str, float]], step: int, max_steps: int) -> bool:
    """Warn when the representation has collapsed while k-NN stays at its value at initialisation: after a fifth of
    the run, k-NN within 0.02 of the first reading and either the features' spread under half its first value or
    DINO's teacher entropy at an extreme (under 5 % or over 95 % of ln K: one output for every image, or a uniform
    one). Returns whether it warned."""
    readings = [e for e in log_history if "eval_feature_spread" in e]
    if len(readings) < 2 or not max_steps or step < 0.2 * max_steps:
        return False
    first, last = readings[0], readings[-1]
    knn_flat = last.get("eval_knn_top1", 0.0) <= first.get("eval_knn_top1", 0.0) + 0.02
    entropies = [e["teacher_entropy"] for e in log_history if "teacher_entropy" in e]
    collapsed_spread = last["eval_feature_spread"] < 0.5 * first["eval_feature_spread"]
    collapsed_teacher = bool(entropies) and not 0.05 < entropies[-1] < 0.95
    if knn_flat and (collapsed_spread or collapsed_teacher):
        what = (f"teacher entropy {entropies[-1]:.2f} of ln K" if collapsed_teacher else
                f"feature spread {last['eval_feature_spread']:.3f}, from {first['eval_feature_spread']:.3f}")
        logger.warning(
            f"The representation has collapsed ({what}) and k-NN top-1 is still {last.get('eval_knn_top1', 'unread')}"
            f", its value at initialisation ({first.get('eval_knn_top1', 'unread')}): pretraining is not learning. "
            "Try --method "
            "simclr, a lower --learning_rate, or more optimizer steps (a smaller --per_device_train_batch_size)."
        )
        return True
    return False


class SelfSupervisedSchedule(TrainerCallback):
    """Tells the model how far the run is (DINO's teacher temperature warms up over it), evaluates the k-NN once
    before the first step (the reading at initialisation), and moves the momentum teacher after each optimizer
    step. Everything it sets follows from the step count, so a resumed run continues the same schedule."""

    def __init__(self, trainer: PretrainTrainer, views: ViewsTransform) -> None:
        self.trainer, self.views = trainer, views

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.views.epoch = math.floor((state.epoch or 0) + 1e-6)  # a run resumed mid-epoch continues that epoch

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and args.eval_strategy != "no":
            self.trainer.evaluate()

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.progress = state.global_step / max(state.max_steps, 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.progress = state.global_step / max(state.max_steps, 1)
        model.update_teacher()


def build_self_supervised(backbone: ViTYogaModel, pretrain_args: PretrainArguments) -> SelfSupervisedViT:
    return SelfSupervisedViT(backbone, pretrain_args.method, temperature=pretrain_args.temperature,
                             teacher_momentum=pretrain_args.teacher_momentum)


# ------------------------------------------------------------------------------------------------------ output
def pretraining_record(run: PretrainRun, data: PretrainingData, log_history: list[dict[str, Any]],
                       state: Any) -> dict[str, Any]:
    """What config.json's ``pretraining`` says of the run (train.py --init_from reads it to pick its recipe)."""
    readings = [e for e in log_history if "eval_knn_top1" in e]
    args, p = run.training, run.pretrain
    return {
        "method": p.method,
        "dataset": run.data.train_dir or run.data.dataset_name,
        "training_images": data.training_images,
        "extra_images": data.extra_images,
        "epochs": args.num_train_epochs,
        "optimizer_steps": state.global_step,
        "global_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "views": {"global": p.global_views, "local": p.local_views, "global_crop_min_scale": p.global_crop_min_scale},
        **({"temperature": p.temperature} if p.method == "simclr" else {"teacher_momentum": p.teacher_momentum}),
        "knn_label_column": data.label_column,
        "knn_top1_at_initialisation": readings[0]["eval_knn_top1"] if readings else None,
        "knn_top1": readings[-1]["eval_knn_top1"] if readings else None,
    }


def write_pretraining_card(output_dir: Path, encoder: ViTYogaModel, record: dict[str, Any], repo_name: str,
                           plots: list[str]) -> None:
    """README.md of the backbone: what it is, the method and its recipe, the data it saw, its k-NN curve, how to use
    it (AutoModel, train.py --init_from)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = encoder.config
    card_data = ModelCardData(
        model_name=repo_name, library_name="transformers", pipeline_tag="image-feature-extraction",
        license="apache-2.0", tags=["vision", "vit", "self-supervised", record["method"], "yoga-82", "custom_code"],
    )
    params = sum(p.numel() for p in encoder.parameters())
    method = {"simclr": "SimCLR's contrastive loss (Chen et al., ICML 2020)",
              "dino": "DINO's self-distillation from a momentum teacher (Caron et al., ICCV 2021)"}[record["method"]]
    knn = ("no labels: no k-NN reading" if record["knn_top1"] is None else
           f"{record['knn_top1_at_initialisation']:.3f} at initialisation -> **{record['knn_top1']:.3f}** after "
           f"pretraining (weighted k-NN, k = 20, on the validation split's `{record['knn_label_column']}`)")
    plots_md = "\n".join(f"![{p}]({p})" for p in plots)
    content = f"""---
{card_data.to_yaml()}
---

# {repo_name}

A ViTYoga backbone ({config.num_hidden_layers} layers, width {config.hidden_size}, patch {config.patch_size},
{config.image_size} px, `{config.patch_embedding_type}` patch embedding; {params:,} parameters) pretrained without
labels by the vit-yoga project's `pretrain.py`: {method}. It has no classification head: fine-tune it.

## Use

```python
from transformers import AutoModel
backbone = AutoModel.from_pretrained("{repo_name}", trust_remote_code=True)
features = backbone(pixel_values).pooler_output  # the class token, what a classifier reads
```

```bash
accelerate launch train.py --init_from {repo_name} --dataset_name ...   # a new head, the fine-tuning recipe
```

## Pretraining

- Images: {record['training_images']:,} of the training split of `{record['dataset']}` (validation and test
  unseen){f", plus {record['extra_images']:,} unlabelled photos" if record['extra_images'] else ""}; no labels used.
- Recipe: {record['epochs']:g} epochs, {record['optimizer_steps']:,} optimizer steps, global batch
  {record['global_batch_size']}, AdamW lr {record['learning_rate']:g}, cosine after warm-up; views
  {json.dumps(record['views'])}{f", temperature {record['temperature']}" if 'temperature' in record else ''}\
{f", teacher momentum {record['teacher_momentum']} -> 1" if 'teacher_momentum' in record else ''}.
- k-NN top-1: {knn}.

{plots_md}
"""
    atomic_write(output_dir / "README.md", ModelCard(content).content)


def write_results(output_dir: Path, record: dict[str, Any], log_history: list[dict[str, Any]]) -> None:
    readings = [{k: v for k, v in e.items() if k in ("epoch", "step", "eval_knn_top1", "eval_feature_spread")}
                for e in log_history if "eval_knn_top1" in e or "eval_feature_spread" in e]
    atomic_write(output_dir / "pretrain_results.json",
                 json.dumps({**record, "evaluations": readings}, indent=2) + "\n")
