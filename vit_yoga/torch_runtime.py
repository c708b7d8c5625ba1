"""A train.py checkpoint run by PyTorch through its own code, answering as its hierarchical pipeline does.

    classify = load_checkpoint_classifier("runs/all")   # a folder or a Hub id
    classify("pose.jpg")   # the dict pipeline("hierarchical-image-classification") answers

The model is the checkpoint's own class (``trust_remote_code``), its probabilities its model code's
``tree_probabilities``, its answers its shipped ``pipeline_vit_yoga.describe_tree_prediction``: so a checkpoint
answers here (predict, the demo) exactly as its pipeline answers on the Hub, whatever version of this repository
runs it. The photo is prepared by the checkpoint's image processor, as the pipeline prepares it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from answers_vit_yoga import LabelTree
from yoga_common.errors import UsageError

from .inference import RESULT_FILES, HierarchicalClassifier, model_info, training_data


class CheckpointClassifier(HierarchicalClassifier):
    """A checkpoint ready to answer, on ``device``, in bf16 autocast when ``bf16``."""

    def __init__(self, model: torch.nn.Module, processor: Any, model_ref: str, device: torch.device,
                 bf16: bool = False) -> None:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        self.model, self.processor, self.device, self.bf16 = model, processor, device, bf16
        self.name = model_ref.rstrip("/")
        modeling = sys.modules[type(model).__module__]
        self.tree_probabilities = modeling.tree_probabilities
        self.describe_tree_prediction = get_class_from_dynamic_module(
            "pipeline_vit_yoga.describe_tree_prediction", model_ref)
        levels = list(modeling.predicted_levels(model.config))
        self.tree = LabelTree.from_config(model.config, levels)
        self.info = model_info(self.name, type(model).__name__, sum(p.numel() for p in model.parameters()),
                               model.config, levels, run_results(model_ref, RESULT_FILES),
                               data=training_data(run_results(model_ref, ("all_results.json",))))

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def has_attention_maps(self) -> bool:
        return self.model.config._attn_implementation == "eager"

    def prepare(self, photos: Sequence[Any]) -> torch.Tensor:
        return self.processor(images=list(photos), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def run_model(self, pixel_values: Any, attentions: bool = False
                  ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Each level's tree-consistent probabilities for a batch (coarsest first), and with ``attentions`` every
        layer's attention weights (None unless the model runs eager attention). The one place the model is
        called."""
        pixels = torch.as_tensor(pixel_values).to(self.device, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        maps = attentions and self.has_attention_maps
        with autocast:
            outputs = self.model(pixel_values=pixels, output_attentions=maps)
        level_logits = getattr(outputs, "level_logits", None)
        logits = outputs.logits if level_logits is None else level_logits
        probabilities = [p.float().cpu().numpy() for p in self.tree_probabilities(self.model.config, logits)]
        return probabilities, [a.float().cpu().numpy() for a in outputs.attentions] if maps else None

    def describe(self, probabilities: Sequence[np.ndarray], top_k: int = 5, decision: str = "probability"
                 ) -> list[dict[str, Any]]:
        """The checkpoint's own ``describe_tree_prediction`` (its pipeline file)."""
        tensors = [torch.from_numpy(np.asarray(p)) for p in probabilities]
        return self.describe_tree_prediction(self.model.config, tensors, top_k=top_k, decision=decision)


def run_results(model_ref: str, names: Sequence[str]) -> dict[str, Any] | None:
    """The first of the results files ``names`` the checkpoint (a folder or a Hub id) has, read, else None."""
    from transformers.utils import cached_file

    for name in names:
        path = cached_file(model_ref, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            try:
                return json.loads(Path(path).read_text())
            except (OSError, ValueError):
                return None
    return None


def load_checkpoint_classifier(model_ref: str, device: str = "auto", bf16: bool | None = None,
                               attn_implementation: str | None = None) -> CheckpointClassifier:
    """A train.py output folder or Hub id, on ``device`` ("auto": a GPU when there is one), in bf16 autocast on a GPU
    that supports it unless ``bf16`` says otherwise. ``attn_implementation="eager"`` for attention maps."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    if bf16 is None:
        bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    fix = "give a train.py output folder or a Hub model id"
    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {model_ref}: cannot load it ({error}); {fix}.") from None
    if getattr(config, "pretraining", None) and config.architectures == ["ViTYogaModel"]:
        raise UsageError(
            f"--model {model_ref} is a backbone pretrained by pretrain.py: it has no classification head. Fine-tune it "
            f"first (`python train.py --init_from {model_ref} --dataset_name ...`) and use that output folder."
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(model_ref, trust_remote_code=True, **kwargs)
        processor = AutoImageProcessor.from_pretrained(model_ref)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {model_ref}: cannot load it ({error}); {fix}.") from None
    return CheckpointClassifier(model.eval().to(target), processor, model_ref, target, bf16)


__all__ = ["CheckpointClassifier", "load_checkpoint_classifier", "run_results"]
