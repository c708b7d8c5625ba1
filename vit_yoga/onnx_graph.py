"""A ViTYoga checkpoint as an ONNX graph, and the graph run beside PyTorch: what ``python -m vit_yoga.export`` builds
and checks (vit_yoga/export.py orchestrates; vit_yoga/int8.py quantises).

- ``load_checkpoint``: the checkpoint's own model class (``trust_remote_code``) and its image processor, refused with
  the fix when it cannot export (not ViTYoga, headless, no processor, an attention ONNX cannot express).
- ``ExportableClassifier``: the model as a function of ``pixel_values`` returning a flat tuple, described by an
  ``OutputSpec`` (each output's name, level and kind); ``export_graph`` traces it with a dynamic batch axis.
- ``run_both`` and ``compare``: PyTorch and ONNX Runtime on the same pixels, and how far apart they are.
- ``labels_document``: what ``labels.json`` holds, for programs that read no config.json.

The names of the folder's files and outputs are the runtime's (``vit_yoga.onnx_runtime``): it reads the format,
this writes it.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yoga_common.errors import UsageError

from .onnx_runtime import ATTENTION_PREFIX, INPUT_NAME, PROBABILITIES_PREFIX

DEFAULT_OPSET = 17
DYNAMO_OPSET = 18  # what torch's dynamo exporter writes natively
EXPORTABLE_ATTENTION = ("eager", "sdpa")
EXPORTERS = ("torchscript", "dynamo")
CLASSIFIERS = ("ViTYogaForImageClassification", "ViTYogaForHierarchicalClassification")


def require_onnx() -> None:
    """Raise a UsageError naming the install when onnx or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"exporting needs {' and '.join(missing)}: pip install -e '.[onnx]' (or pip install onnx "
                         "onnxruntime).")


def load_checkpoint(model: str, attn_implementation: str | None = None) -> tuple[nn.Module, Any]:
    """The checkpoint's model (its own code, ``trust_remote_code``) in eval mode, and its image processor."""
    from transformers import AutoConfig, AutoImageProcessor
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    if attn_implementation is not None and attn_implementation not in EXPORTABLE_ATTENTION:
        raise UsageError(
            f"--attn_implementation {attn_implementation}: ONNX has no such kernel (flash attention and flex "
            f"attention are GPU/compiler kernels); export with one of {list(EXPORTABLE_ATTENTION)}: the same weights "
            "give the same outputs."
        )
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {model}: {error}") from None
    if getattr(config, "model_type", None) != "vit_yoga":
        raise UsageError(
            f"--model {model} is a {getattr(config, 'model_type', None)!r} model, not a ViTYoga checkpoint; export "
            "transformers' own models with optimum (`optimum-cli export onnx --model ...`)."
        )
    try:
        processor = AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError):
        raise UsageError(
            f"--model {model} has no preprocessor_config.json: without it nobody knows how to prepare an image for "
            "the exported model; save the image processor into the folder (train.py and the converter do)."
        ) from None
    architecture = (config.architectures or [""])[0]
    if architecture not in CLASSIFIERS:
        raise UsageError(f"--model {model} is a {architecture or 'headless'} checkpoint; only the classifiers "
                         f"{list(CLASSIFIERS)} export (train or fine-tune a head first).")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        # The class config.json names, from the checkpoint's code. Not AutoModelForImageClassification: once it has
        # loaded one checkpoint, it maps that code's config class to that model class for the rest of the process,
        # so a joint checkpoint loaded after a one-head one of the same code came back with one head.
        model_class = get_class_from_dynamic_module(f"modeling_vit_yoga.{architecture}", str(model))
        loaded = model_class.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {model}: {error}") from None
    implementation = loaded.config._attn_implementation or "sdpa"
    if implementation not in EXPORTABLE_ATTENTION:
        raise UsageError(
            f"--model {model} loads with attn_implementation={implementation!r}, which ONNX cannot express; pass "
            f"--attn_implementation sdpa (or eager)."
        )
    return loaded.eval(), processor


def is_joint(model: nn.Module) -> bool:
    """A model with a head per level (ViTYogaForHierarchicalClassification)."""
    return hasattr(model, "classifiers")


@dataclass
class OutputSpec:
    """What the exported graph returns, in order: each output's name, the level it covers, and its kind."""

    names: list[str] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)  # "" for an attention map (it covers no level)
    kinds: list[str] = field(default_factory=list)  # "logits", "probabilities" or "attentions"

    def add(self, name: str, level: str, kind: str) -> None:
        self.names.append(name)
        self.levels.append(level)
        self.kinds.append(kind)


def logits_level(config: Any) -> str:
    """The level the ``logits`` output covers: the finest for a joint model, ``label_level`` for a one-head model."""
    if config.hierarchy_levels and not config.label_level:
        return config.hierarchy_levels[-1]
    return config.label_level or "label"


class ExportableClassifier(nn.Module):
    """The classifier as a function of ``pixel_values`` alone returning a flat tuple of tensors: what an ONNX
    graph's named outputs are (ModelOutput dataclasses and keyword switches do not survive tracing).

    Outputs: ``logits``, a joint model's ``logits_<level>``, ``probabilities_<level>`` for every level of the
    checkpoint code's ``predicted_levels`` (its ``tree_probabilities``: tree-consistent), and with
    ``attention_maps`` every layer's attention weights, last (the model must run eager attention: sdpa returns no
    weights)."""

    def __init__(self, model: nn.Module, attention_maps: bool = False) -> None:
        super().__init__()
        self.model = model
        self.attention_maps = attention_maps
        config = model.config
        self.joint = is_joint(model)
        code = sys.modules[type(model).__module__]  # the checkpoint's own modeling code: its hierarchy decoding
        self.tree_probabilities = code.tree_probabilities
        self.spec = OutputSpec()
        self.spec.add("logits", logits_level(config), "logits")
        if self.joint:
            for level in config.hierarchy_levels:
                self.spec.add(f"logits_{level}", level, "logits")
        for level in code.predicted_levels(config):
            self.spec.add(f"{PROBABILITIES_PREFIX}{level}", level, "probabilities")
        if attention_maps:
            for layer in range(config.num_hidden_layers):
                self.spec.add(f"{ATTENTION_PREFIX}{layer}", "", "attentions")

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values, return_dict=True, output_attentions=self.attention_maps)
        outputs = [output.logits]
        if self.joint:
            outputs += list(output.level_logits)
        scores = tuple(output.level_logits) if self.joint else output.logits
        outputs += list(self.tree_probabilities(self.model.config, scores))
        if self.attention_maps:
            outputs += list(output.attentions)
        return tuple(outputs)


def export_graph(
    wrapper: ExportableClassifier, path: str | Path, example: torch.Tensor, opset: int, exporter: str
) -> None:
    """``torch.onnx.export`` with a dynamic batch axis on the input and every output."""
    names = wrapper.spec.names
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated and about tracing constants (the image size,
            # which the graph fixes on purpose); neither is for the user to act on.
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=names,
                                  opset_version=opset, dynamo=True, dynamic_shapes={INPUT_NAME: {0: batch}},
                                  external_data=False, verbose=False)
            else:
                axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
                torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=names,
                                  opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    except Exception as error:  # the exporters raise many types; the user needs the reason and a way out
        raise UsageError(
            f"torch.onnx.export ({exporter}, opset {opset}) cannot export this model: {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:400]}. Try --attn_implementation eager, another --opset, or "
            f"--exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}."
        ) from error


def run_both(
    wrapper: ExportableClassifier, sessions: dict[str, Any], pixel_values: torch.Tensor, batch_size: int = 32
) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Every output of PyTorch and of each ONNX session on ``pixel_values``, batch by batch (so the dynamic batch
    axis is exercised with a full and, usually, a partial batch)."""
    torch_parts: list[list[np.ndarray]] = []
    ort_parts: dict[str, list[list[np.ndarray]]] = {name: [] for name in sessions}
    with torch.no_grad():
        for start in range(0, len(pixel_values), batch_size):
            batch = pixel_values[start:start + batch_size]
            torch_parts.append([t.float().numpy() for t in wrapper(batch)])
            for name, session in sessions.items():
                ort_parts[name].append(session.run(wrapper.spec.names, {INPUT_NAME: batch.numpy()}))
    join = lambda parts: [np.concatenate(column) for column in zip(*parts, strict=True)]
    return join(torch_parts), {name: join(parts) for name, parts in ort_parts.items()}


def compare(spec: OutputSpec, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    """Max |difference| per output, and top-1 agreement per logits output (a share of the images)."""
    result: dict[str, Any] = {"max_abs_difference": {}, "top1_agreement": {}}
    for name, kind, ref, got in zip(spec.names, spec.kinds, reference, candidate, strict=True):
        result["max_abs_difference"][name] = float(np.abs(ref - got).max())
        if kind == "logits":
            result["top1_agreement"][name] = float((ref.argmax(-1) == got.argmax(-1)).mean())
    return result


def labels_document(config: Any, spec: OutputSpec) -> dict[str, Any]:
    """What ``labels.json`` holds: the levels (coarsest first), each level's class names, each level's parent ids in
    the level above, which output covers which level, and which outputs are attention maps (``attentions_<i>``, one
    per layer, first layer first; empty without ``--attention_maps``), for programs that read no config.json."""
    if config.hierarchy_levels:
        levels = list(config.hierarchy_levels)
        names = {level: list(n) for level, n in zip(levels, config.hierarchy_class_names, strict=True)}
        parents = {level: list(p) for level, p in zip(levels[1:], config.hierarchy_parents, strict=True)}
    else:
        level = logits_level(config)
        levels, parents = [level], {}
        names = {level: [config.id2label[i] for i in range(config.num_labels)]}
    return {"levels": levels, "names": names, "parents": parents,
            "outputs": {name: level for name, level, kind in zip(spec.names, spec.levels, spec.kinds, strict=True)
                        if kind != "attentions"},
            "attention_maps": [name for name, kind in zip(spec.names, spec.kinds, strict=True) if kind == "attentions"],
            "input": INPUT_NAME}


__all__ = ["DEFAULT_OPSET", "DYNAMO_OPSET", "EXPORTABLE_ATTENTION", "EXPORTERS", "ExportableClassifier", "OutputSpec",
           "compare", "export_graph", "labels_document", "load_checkpoint", "require_onnx", "run_both"]
