"""Trainer for ViTYoga: transformers' Trainer plus the running accuracy on the training batches, and a collate step
of its own for training (label smoothing acts on the training targets only)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer


class YogaTrainer(Trainer):
    """Trainer that also reports the accuracy on the (augmented) training batches of each logging period, over all
    processes, as the report's figures show.

    ``train_collator`` builds the training batches (soft targets where label smoothing asks for them, see
    transforms.TrainingCollator); ``data_collator`` builds the evaluation batches, whose losses stay the plain
    cross-entropy so that they compare across recipes.
    """

    def __init__(self, *args: Any, train_collator: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_collator = train_collator or self.data_collator
        # Label smoothing is in the training targets (train_collator), for every level of the hierarchy; Trainer's
        # LabelSmoother reads only the finest level's logits, and would smooth the evaluation loss too.
        self.label_smoother = None
        self._correct: torch.Tensor | None = None  # on the device: counting must not wait for the GPU every step
        self._seen = 0

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with layer-wise learning-rate decay when ``--layer_decay`` < 1 (BEiT's and MAE's
        fine-tuning): the head and the final norm at the full rate, block i at ``layer_decay`` ** (depth - i), the
        embeddings at ``layer_decay`` ** (depth + 1). The scheduler scales every group alike."""
        decay = getattr(self.args, "layer_decay", 1.0)
        if decay >= 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        depth = model.config.num_hidden_layers
        with_weight_decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = layer_index(name, depth)
            decayed = name in with_weight_decay
            group = groups.setdefault((layer, decayed), {
                "params": [], "weight_decay": self.args.weight_decay if decayed else 0.0,
                "lr": self.args.learning_rate * decay ** (depth + 1 - layer),
            })
            group["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer

    def get_train_dataloader(self):
        # Trainer builds every DataLoader from self.data_collator; the training one alone gets train_collator.
        eval_collator, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = eval_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:  # prediction_step calls compute_loss too: evaluation batches are not training accuracy
            self._count_correct(outputs.logits.detach(), inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def _count_correct(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Top-1 hits on the finest level; a soft target's class is its most probable one (MixUp's dominant image)."""
        if labels.is_floating_point():
            target = labels[:, -logits.shape[-1]:].argmax(-1)
        else:
            target = labels.reshape(len(labels), -1)[:, -1]
        correct = (logits.argmax(-1) == target.to(logits.device)).sum()
        self._correct = correct if self._correct is None else self._correct + correct
        self._seen += target.numel()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log: every process gets here at the same step
            correct = self._correct if self._correct is not None else torch.zeros((), dtype=torch.long)
            counts = torch.stack([correct.to(self.args.device), torch.tensor(self._seen, device=self.args.device)])
            correct_total, seen_total = self.accelerator.reduce(counts, reduction="sum").tolist()
            if seen_total > 0:
                logs["train_accuracy"] = round(correct_total / seen_total, 4)
            self._correct, self._seen = None, 0
        super().log(logs, *args, **kwargs)


def layer_index(name: str, depth: int) -> int:
    """A parameter's depth for layer-wise decay: 0 for the embeddings (patch or stem, class token, positions), i + 1
    for block i, ``depth`` + 1 for the final norm and the heads."""
    if ".embeddings." in f".{name}":
        return 0
    parts = name.split(".")
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) + 1
    return depth + 1
