"""The vit-yoga demo: drop a photo, see every level of the label tree, the path through it, and where the model looks.

    python app.py --model runs/all            # a train.py output folder, or a Hub id; opens http://127.0.0.1:7860
    python app.py --onnx runs/all-onnx [--int8]   # a folder python -m vit_yoga.export wrote: ONNX Runtime, no torch
    python app.py --model runs/all --write_space spaces/vit-yoga   # a folder to push as a Hugging Face Space
                                                                   # (with --onnx: a Space without torch)

The Hugging Face Spaces convention for a Gradio app: one file at the top of the repository. It is self-contained (torch,
transformers, gradio, Pillow, numpy, and the checkpoint's own code through ``trust_remote_code``; never the
``vit_yoga`` package), so the same file runs in a Space. With ``--onnx`` it imports neither torch nor transformers
(onnxruntime, gradio, Pillow and numpy only): ONNX Runtime runs the exported graph, whose outputs already hold the
tree-consistent probabilities (and, exported with ``--attention_maps``, every layer's attention weights); preparing
the photo, reading the tree and the rollout are numpy here, and give the PyTorch path's numbers within 1e-4
(tests/test_app.py). ``--write_space`` writes what a Space needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # the PyTorch path imports torch when it loads a checkpoint; --onnx never does
    import torch

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
SPACE_MODEL_FILE = "space_model.txt"  # in a Space written by --write_space: the model to serve (a folder or Hub id)
SPACE_ONNX_FILE = "space_onnx.json"  # in a Space written with --onnx: {"folder": ..., "int8": ...}
GRADIO_REQUIREMENT = "gradio>=5.0,<7"  # as setup.cfg's [demo] extra
ONNXRUNTIME_REQUIREMENT = "onnxruntime>=1.18"  # as setup.cfg's [onnx] extra
INSTALL_HINT = 'pip install -e ".[demo]"  (or: pip install "gradio>=5.0,<7")'
DEFAULT_MAX_MEGAPIXELS = 32.0
DISPLAY_SIZE = 512  # the overlay's longest side: enough to see, small enough to send back fast
LEVEL_TITLES = {"label_6": "Body position", "label_20": "Variation", "label_82": "Pose"}
# Files of a train.py output folder that a Space needs to serve it (checkpoints, plots and pickles stay home).
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
               "test_results.json", "eval_results.json")
RESULT_FILES = ("test_results.json", "all_results.json", "eval_results.json")  # what a run reports, in this order
# An export of python -m vit_yoga.export: what --onnx reads (one of the two graphs) and a Space copies.
ONNX_FILE, ONNX_INT8_FILE = "model.onnx", "model_int8.onnx"
EXPORT_FILES = ("config.json", "preprocessor_config.json", "labels.json", "export_results.json")
EXPORT_COMMAND = "python -m vit_yoga.export --model CHECKPOINT --output_dir DIR --attention_maps"


class DemoUsageError(ValueError):
    """Something the person running the demo can fix (a flag, a folder); main prints it and exits 2."""


class PhotoError(ValueError):
    """A photo the demo cannot read; its message is shown on the page."""


# ------------------------------------------------------------------------------------------------- the model


@dataclass
class Classifier:
    """A checkpoint ready to answer: the model (eager attention, so that one forward returns the maps), its image
    processor, and the checkpoint's own tree functions (``tree_probabilities``, ``describe_tree_prediction``).
    ``OnnxClassifier`` answers the same way from an export, without torch."""

    model: torch.nn.Module
    processor: Any
    name: str
    levels: list[str]
    class_names: list[list[str]]  # each level's, coarsest first
    tree_probabilities: Any
    describe: Any
    info: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # a line the page shows in place of the map (the PyTorch path always has one)

    def run_model(self, pixel_values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """One forward: each level's tree-consistent probabilities, and every layer's attention maps. The one place
        the model is called (``OnnxClassifier.answer`` runs the exported graph instead)."""
        import torch

        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values, output_attentions=True)
            level_logits = getattr(outputs, "level_logits", None)
            logits = outputs.logits if level_logits is None else level_logits
            return self.tree_probabilities(self.model.config, logits), outputs.attentions

    def answer(self, photo: Image.Image, top_k: int = 5) -> tuple[dict[str, Any], np.ndarray | None]:
        """The hierarchical prediction (``describe_tree_prediction``'s dict) and the attention rollout map over the
        patch grid, values in [0, 1]."""
        pixel_values = self.processor(images=photo, return_tensors="pt")["pixel_values"]
        probabilities, attentions = self.run_model(pixel_values)
        (prediction,) = self.describe(self.model.config, probabilities, top_k=top_k)
        grid = (pixel_values.shape[-2] // self.model.config.patch_size,
                pixel_values.shape[-1] // self.model.config.patch_size)
        return prediction, heat_map(attention_rollout([a.float().numpy() for a in attentions])[0], grid)


def load_classifier(model_ref: str) -> Classifier:
    """A train.py output folder or a Hub id, with the code it ships (``trust_remote_code``)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=True)
        backbone_only = bool(getattr(config, "pretraining", None)) and config.architectures == ["ViTYogaModel"]
        model = None if backbone_only else AutoModelForImageClassification.from_pretrained(
            model_ref, trust_remote_code=True, attn_implementation="eager"
        ).eval()
        processor = AutoImageProcessor.from_pretrained(model_ref)
    except (OSError, ValueError) as error:
        raise DemoUsageError(
            f"--model {model_ref}: cannot load it ({error}). Give an output folder of train.py (e.g. runs/all) or a "
            "Hub model id."
        ) from None
    if model is None:
        raise DemoUsageError(
            f"--model {model_ref} is a backbone pretrained by pretrain.py: it has no classification head. Fine-tune it "
            f"first (`python train.py --init_from {model_ref} --dataset_name ...`) and serve that output folder."
        )
    tree_probabilities, describe, levels = tree_functions(model, model_ref)
    return Classifier(model, processor, model_ref.rstrip("/"), levels, checkpoint_class_names(model.config, levels),
                      tree_probabilities, describe, model_info(model, model_ref, levels))


def checkpoint_class_names(config: Any, levels: Sequence[str]) -> list[list[str]]:
    if config.hierarchy_levels and levels[0] in config.hierarchy_levels:
        return [config.hierarchy_class_names[config.hierarchy_levels.index(level)] for level in levels]
    return [[config.id2label[i] for i in range(config.num_labels)]]


def tree_functions(model: torch.nn.Module, model_ref: str) -> tuple[Any, Any, list[str]]:
    """The checkpoint's own ``tree_probabilities`` (its model code) and ``describe_tree_prediction`` (its shipped
    ``pipeline_vit_yoga.py``), so the demo answers exactly as the hierarchical pipeline does for that checkpoint."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.utils import cached_file

    modeling = sys.modules[type(model).__module__]
    if not (hasattr(modeling, "tree_probabilities") and cached_file(
            model_ref, "pipeline_vit_yoga.py", _raise_exceptions_for_missing_entries=False)):
        raise DemoUsageError(
            f"--model {model_ref} predates the hierarchical pipeline (no pipeline_vit_yoga.py, or model code without "
            "tree_probabilities); retrain it with this version of train.py, or, in a clone of vit-yoga, copy this "
            "version's configuration_vit_yoga.py and modeling_vit_yoga.py into the folder and run `python -c \"from "
            f"vit_yoga.models import save_hierarchical_pipeline as s; s('{model_ref}')\"`."
        )
    describe = get_class_from_dynamic_module("pipeline_vit_yoga.describe_tree_prediction", model_ref)
    return modeling.tree_probabilities, describe, list(modeling.predicted_levels(model.config))


def attention_rollout(attentions: Sequence[Any], residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, ACL 2020): how much each patch feeds the class token through all layers.

    Each layer's attention (batch, heads, tokens, tokens), averaged over heads, is mixed with the identity for the
    residual connection (``residual * I + (1 - residual) * A``, rows renormalised); the rollout is their product, last
    layer first to first layer last, and its class-token row is returned without the class token itself: (batch,
    patches), float32. Only that row is needed, so it is carried as a vector through the layers (tokens^2 work per
    layer, not tokens^3). Written here because no library computes it for a model of its own: a few lines over the
    eager attention maps the forward returned. numpy, so that both paths use it: the PyTorch model's maps and the
    exported graph's ``attentions_<i>`` outputs.
    """
    row = None
    for layer in reversed(attentions):
        mixed = np.asarray(layer, dtype=np.float32).mean(axis=1)  # (batch, tokens, tokens)
        mixed = residual * np.eye(mixed.shape[-1], dtype=np.float32) + (1 - residual) * mixed
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        row = mixed[:, 0] if row is None else (row[:, None, :] @ mixed)[:, 0]
    return row[:, 1:]


def heat_map(rollout: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One image's rollout on the patch grid, scaled so that its hottest patch is 1."""
    heat = rollout.reshape(grid)
    return heat / max(float(heat.max()), 1e-12)


def model_info(model: torch.nn.Module, model_ref: str, levels: Sequence[str]) -> dict[str, Any]:
    """What a person should know about the model they try: its name, size, and the accuracy its run reported."""
    from transformers.utils import cached_file

    config = model.config
    info: dict[str, Any] = {
        "name": model_ref.rstrip("/"),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": config.image_size, "patch_size": config.patch_size, "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size, "stem": getattr(config, "patch_embedding_type", "standard"),
        "levels": list(levels), "label_level": config.label_level,
    }
    for name in RESULT_FILES:
        path = cached_file(model_ref, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            info |= reported_accuracy(json.loads(Path(path).read_text()))
            break
    return info


def reported_accuracy(results: dict[str, Any]) -> dict[str, Any]:
    """The split a run's results file reports on and its top-1 accuracies (``label_6_accuracy``...)."""
    split = "test" if any(k.startswith("test_") for k in results) else "eval"
    return {"split": split, "accuracy": {key[len(split) + 1:]: value for key, value in results.items()
                                         if key.startswith(f"{split}_") and key.endswith("accuracy")
                                         and not isinstance(value, dict)}}


def describe_model(info: dict[str, Any]) -> str:
    """One Markdown paragraph: name, architecture, size, and the accuracy the run reported."""
    parameters = info.get("parameters")
    size = "" if not parameters else f", {parameters / 1e6:.1f} M parameters" if parameters >= 1e5 else \
        f", {parameters / 1e3:.0f} k parameters"
    runtime = f" in {info['runtime']}" if info.get("runtime") else ""
    stem = ", conv stem" if info["stem"] == "conv_stem" else ""
    text = (f"**Model:** `{info['name']}` ({info['architecture']}{runtime}{size}; {info['image_size']} px, patch "
            f"{info['patch_size']}, {info['layers']} layers x {info['hidden_size']}{stem}).")
    accuracy = info.get("accuracy") or {}
    # A joint model reports each level's top-1 (label_6_accuracy, ...); a one-head model its own level's (accuracy).
    top1 = {level: accuracy[f"{level}_accuracy"] for level in info["levels"] if f"{level}_accuracy" in accuracy}
    if not top1 and "accuracy" in accuracy:
        top1 = {info["label_level"] or "top-1": accuracy["accuracy"]}
    if top1:
        where = "test set" if info.get("split") == "test" else "validation set"
        text += f" Top-1 accuracy its run reported on the {where}: " + ", ".join(
            f"{level} {value:.1%}" for level, value in top1.items()) + "."
    else:
        text += " No accuracy reported with this checkpoint (an untrained or unevaluated model)."
    return text


# ------------------------------------------------------------------------------------- the exported model (--onnx)


class OnnxClassifier:
    """An export of ``python -m vit_yoga.export`` (``--onnx DIR``) run by ONNX Runtime, answering as ``Classifier``
    does for the checkpoint it came from, with no torch and no transformers.

    The graph computes each level's tree-consistent probabilities (``probabilities_<level>``: the checkpoint's own
    ``tree_probabilities``, with a joint model's heads combined by its rule, ``config.hierarchy_combination``) and,
    exported with ``--attention_maps``, every layer's attention weights (``attentions_<i>``). The rest is numpy here:
    the photo prepared by the folder's ``preprocessor_config.json`` (``prepare_pixels``: the image processor's
    numbers), the top-k and the path as ``describe_tree_prediction`` builds them (``describe``), and the rollout
    (``attention_rollout``, the function the PyTorch path uses too). An export without attention outputs answers
    with no map, and ``note`` says how to export one with them.
    """

    def __init__(self, folder: str | Path, int8: bool = False, threads: int | None = None) -> None:
        folder = Path(folder)
        model_file, labels, config, preprocessing, results = read_export(folder, int8)
        try:
            import onnxruntime
        except ImportError:
            raise DemoUsageError(f"--onnx needs ONNX Runtime: pip install '{ONNXRUNTIME_REQUIREMENT}' (or pip "
                                 "install -e \".[onnx]\").") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # ONNX Runtime's threads spin between runs by default: CPU taken from Gradio's own threads on a small server.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own types for a damaged or foreign graph
            reason = (str(error).strip().splitlines() or [""])[0][:300]
            raise DemoUsageError(f"--onnx {folder}: ONNX Runtime cannot load {model_file.name} "
                                 f"({type(error).__name__}: {reason}); export the checkpoint again: {EXPORT_COMMAND}."
                                 ) from None
        outputs = [output.name for output in self.session.get_outputs()]
        self.probability_outputs = [name for name in outputs if name.startswith("probabilities_")]
        if not self.probability_outputs:
            raise DemoUsageError(f"--onnx {folder} has no probabilities_<level> outputs (exported before the hierarchy "
                                 f"decoding existed); export the checkpoint again: {EXPORT_COMMAND}.")
        self.attention_outputs = [name for name in labels.get("attention_maps", []) if name in outputs]
        self.input_name = labels.get("input", "pixel_values")
        self.name = str(folder).rstrip("/")
        self.levels = [labels["outputs"][name] for name in self.probability_outputs]
        self.class_names = [labels["names"][level] for level in self.levels]
        self.ancestors = ancestor_table(labels, self.levels)
        self.preprocessing = preprocessing
        self.patch_size = int(config["patch_size"])
        self.info = onnx_model_info(self.name, config, results, self.levels, int8)
        self.note = "" if self.attention_outputs else (
            f"No attention map: `{folder.name}` was exported without attention outputs; to see where the model "
            f"looks, export its checkpoint with them: `{EXPORT_COMMAND}`.")

    def answer(self, photo: Image.Image, top_k: int = 5) -> tuple[dict[str, Any], np.ndarray | None]:
        """``Classifier.answer`` from the graph: the prediction dict, and the rollout map (None without maps)."""
        pixels = prepare_pixels(photo, self.preprocessing)
        outputs = self.session.run(self.probability_outputs + self.attention_outputs, {self.input_name: pixels})
        probabilities = [scores[0] for scores in outputs[:len(self.probability_outputs)]]
        prediction = self.describe(probabilities, top_k)
        if not self.attention_outputs:
            return prediction, None
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return prediction, heat_map(attention_rollout(outputs[len(self.probability_outputs):])[0], grid)

    def describe(self, probabilities: Sequence[np.ndarray], top_k: int = 5) -> dict[str, Any]:
        """``describe_tree_prediction`` (the checkpoint's ``pipeline_vit_yoga.py``) for one image with the demo's
        decision, "probability", in numpy: each level's ``top_k`` classes, and the path ``most_probable_path`` takes,
        the most probable class of the finest predicted level and its ancestors, each node with its level's
        probability; ``path_score`` is the finest node's. Written out rather than loaded from the checkpoint's
        file, which imports torch and transformers: six lines, kept equal to it by tests/test_app.py."""
        leaf = int(np.argmax(probabilities[-1]))
        ids = self.ancestors[leaf]
        return {
            "levels": {level: [{"label": names[c], "score": float(p[c])}
                               for c in np.argsort(-p, kind="stable")[:top_k]]
                       for level, names, p in zip(self.levels, self.class_names, probabilities, strict=True)},
            "path": [{"level": level, "label": names[c], "score": float(p[c])}
                     for level, names, c, p in zip(self.levels, self.class_names, ids, probabilities, strict=True)],
            "path_score": float(probabilities[-1][leaf]),
        }


def read_export(folder: Path, int8: bool = False) -> tuple[Path, dict, dict, dict, dict]:
    """The graph file and the JSON files of an export (labels, config, preprocessing, results); a folder that is not
    one raises ``DemoUsageError`` naming the fix. Files only: cheap enough to check before Gradio is imported."""
    fix = f"export a checkpoint with `{EXPORT_COMMAND}` and pass --onnx DIR, or serve a checkpoint with --model"
    if not folder.is_dir():
        raise DemoUsageError(f"--onnx {folder} is not a folder; {fix}.")
    model_file = folder / (ONNX_INT8_FILE if int8 else ONNX_FILE)
    missing = [name for name in (model_file.name, *EXPORT_FILES[:3]) if not (folder / name).is_file()]
    if int8 and missing == [ONNX_INT8_FILE]:
        raise DemoUsageError(f"--onnx {folder} --int8: the export has no {ONNX_INT8_FILE}; export it with --quantize "
                             "dynamic as well, or drop --int8 to serve model.onnx.")
    if missing:
        raise DemoUsageError(f"--onnx {folder} is not an export of python -m vit_yoga.export (no "
                             f"{', '.join(missing)}); {fix}.")
    documents = []
    for name in EXPORT_FILES:
        try:
            documents.append(json.loads((folder / name).read_text()) if (folder / name).is_file() else {})
        except (OSError, ValueError) as error:
            raise DemoUsageError(f"--onnx {folder}: {name} cannot be read ({error}); export the checkpoint again "
                                 "into a new folder.") from None
    config, preprocessing, labels, results = documents
    return model_file, labels, config, check_preprocessing(preprocessing, folder), results


def ancestor_table(labels: dict[str, Any], levels: Sequence[str]) -> np.ndarray:
    """(classes of the finest of ``levels``, len(levels)): each finest class's id at every level, coarsest first,
    from labels.json's parents (each level's parent ids in the level above)."""
    table = np.zeros((len(labels["names"][levels[-1]]), len(levels)), dtype=np.int64)
    table[:, -1] = np.arange(len(table))
    for depth in range(len(levels) - 1, 0, -1):
        table[:, depth - 1] = np.asarray(labels["parents"][levels[depth]])[table[:, depth]]
    return table


def onnx_model_info(name: str, config: dict[str, Any], results: dict[str, Any], levels: Sequence[str],
                    int8: bool) -> dict[str, Any]:
    """``model_info`` for an export: config.json's architecture and sizes, export_results.json's parameter count and
    the accuracy the checkpoint's run reported (exports of older versions have neither: then none is shown)."""
    info: dict[str, Any] = {
        "name": name, "architecture": (config.get("architectures") or ["ViTYoga"])[0],
        "runtime": "ONNX Runtime, int8" if int8 else "ONNX Runtime", "parameters": results.get("parameters"),
        "image_size": config.get("image_size"), "patch_size": config.get("patch_size"),
        "layers": config.get("num_hidden_layers"), "hidden_size": config.get("hidden_size"),
        "stem": config.get("patch_embedding_type", "standard"), "levels": list(levels),
        "label_level": config.get("label_level"),
    }
    reported = results.get("reported_results")
    if reported:
        info |= reported_accuracy(reported["metrics"])
    return info


# The image processor's resampling filters that prepare_pixels reproduces: PIL's number -> (filter, taps at scale 1).
def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


RESAMPLE_FILTERS = {2: (_triangle, 2), 3: (_cubic, 4)}  # BILINEAR, BICUBIC
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def check_preprocessing(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """preprocessor_config.json, checked to ask only for what ``prepare_pixels`` does (a ViT image processor:
    resize to a fixed size, rescale, normalise), so that a different one is refused instead of answered wrongly."""
    size = config.get("size") or {}
    problems = []
    if config.get("do_resize", True) and not {"height", "width"} <= set(size):
        problems.append(f"size {size} (a fixed height and width is implemented)")
    if config.get("do_resize", True) and config.get("resample", 2) not in RESAMPLE_FILTERS:
        problems.append(f"resample {RESAMPLE_NAMES.get(config.get('resample'), config.get('resample'))} (BILINEAR "
                        "and BICUBIC are implemented)")
    if config.get("do_center_crop") or config.get("do_pad"):
        problems.append("a crop or padding")
    if problems:
        raise DemoUsageError(f"--onnx {folder}: its preprocessor_config.json asks for {'; '.join(problems)}, which the "
                             "demo's numpy preparation does not reproduce; serve the checkpoint with --model.")
    return config


def prepare_pixels(photo: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """(1, 3, height, width) float32 ``pixel_values`` from an RGB photo, as the image processor prepares them
    (``ViTImageProcessor`` of transformers 5: torchvision resizes the uint8 image, then rescale and normalise are
    one float32 step), from preprocessor_config.json's numbers alone. The resize is torch's antialiased uint8
    kernel written out in numpy (``resize_like_torch``): Pillow's own resize rounds differently, a level of 255 on
    many pixels (0.008 after normalisation), while this one gives the processor's pixels exactly."""
    photo = photo if photo.mode == "RGB" else photo.convert("RGB")
    if config.get("do_resize", True):
        pixels = resize_like_torch(photo, config["size"]["height"], config["size"]["width"], config.get("resample", 2))
    else:
        pixels = np.asarray(photo)
    values = pixels.astype(np.float32)
    scale = float(config.get("rescale_factor", 1 / 255))
    mean = np.asarray(config.get("image_mean", [0.5] * 3), dtype=np.float32)
    std = np.asarray(config.get("image_std", [0.5] * 3), dtype=np.float32)
    if config.get("do_rescale", True) and config.get("do_normalize", True):
        values = (values - mean * np.float32(1 / scale)) / (std * np.float32(1 / scale))  # the processor's fused step
    elif config.get("do_rescale", True):
        values = values * np.float32(scale)
    elif config.get("do_normalize", True):
        values = (values - mean) / std
    return np.ascontiguousarray(values.transpose(2, 0, 1)[None])


def resize_like_torch(photo: Image.Image, height: int, width: int, resample: int) -> np.ndarray:
    """An RGB photo -> (height, width, 3) uint8, as torch's CPU kernel for uint8 images with antialias
    (``F.interpolate(..., antialias=True)``, which torchvision's resize calls): separable, the width first; each
    pass rounds to uint8. The width pass runs on the transposed photo (Pillow transposes a 7-megapixel photo in
    a fifth of numpy's time), so that both passes gather whole rows."""
    if photo.width != width:
        columns = np.asarray(photo.transpose(Image.Transpose.TRANSPOSE))  # (W, H, 3)
        pixels = _resample_axis(columns, width, resample).transpose(1, 0, 2)
    else:
        pixels = np.asarray(photo)
    if pixels.shape[0] != height:
        pixels = _resample_axis(np.ascontiguousarray(pixels), height, resample)
    return pixels


def _resample_axis(pixels: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Resample axis 0 of a uint8 array to ``size`` in integer arithmetic with int16 weights, as torch does:
    ``sum(weight * pixel) + 2^(precision - 1) >> precision``, clipped to [0, 255]."""
    index, weights, precision = _axis_weights(pixels.shape[0], size, resample)
    total = np.full((size, *pixels.shape[1:]), 1 << (precision - 1), dtype=np.int32)
    for tap in range(weights.shape[1]):
        if weights[:, tap].any():
            total += pixels[index[:, tap]] * weights[:, tap].reshape(-1, *[1] * (pixels.ndim - 1))
    return np.clip(total >> precision, 0, 255).astype(np.uint8)


def _axis_weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Input indices and int16 weights (out_size, taps) and their precision in bits, as ATen's
    ``_compute_index_ranges_int16_weights`` computes them (antialias, align_corners False): the float64 weights of
    ``_compute_indices_min_size_weights_aa`` (the filter stretched by the scale when shrinking, normalised per output;
    summed in its order), scaled by the largest power of two that keeps them in int16, then rounded half away from
    zero."""
    filter_fn, interp_size = RESAMPLE_FILTERS[resample]
    scale = in_size / out_size
    support = (interp_size * 0.5) * scale if scale >= 1.0 else interp_size * 0.5
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size) + 0.5)
    first = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)  # C++'s int64 cast truncates
    count = np.clip(np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    offsets = np.arange(taps)
    inside = offsets[None] < count[:, None]
    weights = np.where(inside, filter_fn((offsets[None] + first[:, None] - centers[:, None] + 0.5) * invscale), 0.0)
    total = np.zeros(out_size)
    for tap in range(taps):  # in ATen's order, tap by tap: the same float64 sums to the last bit
        total = total + weights[:, tap]
    weights = np.where(total[:, None] != 0, weights / np.where(total == 0, 1.0, total)[:, None], weights)
    largest = float(weights[inside].max()) if inside.any() else 0.0
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    integers = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return np.minimum(first[:, None] + offsets[None], in_size - 1), integers, precision



# ------------------------------------------------------------------------------------------------- the photo


def read_photo(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """The photo upright and in RGB, as ``pipeline("image-classification")`` reads it (transformers' ``load_image``
    on a file: ``PIL.Image.open``, EXIF orientation, RGB; written out here so that --onnx needs no transformers); a
    file that is not a readable photo raises ``PhotoError`` with what to do instead."""
    name = Path(path).name
    try:
        with Image.open(path) as probe:  # the header only: refuse a huge photo before decoding it
            width, height = probe.size
    except Image.DecompressionBombError:
        raise PhotoError(f"{name} is too large to decode safely; resize it below {max_megapixels:g} megapixels.") \
            from None
    except (UnidentifiedImageError, OSError):
        raise PhotoError(f"{name} is not an image (or not a format Pillow reads); upload a JPEG, PNG or WebP photo.") \
            from None
    if width * height > max_megapixels * 1e6:
        raise PhotoError(f"{name} is {width * height / 1e6:.1f} megapixels ({width}x{height}); this demo takes photos "
                         f"up to {max_megapixels:g} megapixels: resize it (the model sees it at a few hundred pixels "
                         "anyway).")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{name} could not be decoded ({error}): the file is damaged or truncated; upload it again "
                         "or try another photo.") from None


# Inferno-like colour stops (dark, violet, red, orange, pale yellow): hot areas stand out over any photo.
HEAT_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)


def overlay(photo: Image.Image, heat: np.ndarray, opacity: float) -> Image.Image:
    """The attention map stretched back over the photo (the processor squashed the photo to a square; this undoes
    it), coloured and blended at ``opacity`` (0: the photo only, 1: the map only). At most DISPLAY_SIZE pixels."""
    shown = photo.copy()
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    heat_image = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(shown.size, Image.BILINEAR)
    positions = np.asarray(heat_image, dtype=np.float32) / 255 * (len(HEAT_COLOURS) - 1)
    low = np.floor(positions).astype(int).clip(0, len(HEAT_COLOURS) - 2)
    weight = (positions - low)[..., None]
    colours = HEAT_COLOURS[low] * (1 - weight) + HEAT_COLOURS[low + 1] * weight
    return Image.blend(shown, Image.fromarray(colours.astype(np.uint8)), float(opacity))


# -------------------------------------------------------------------------------------------------- the page


def level_title(level: str, size: int) -> str:
    return f"{LEVEL_TITLES.get(level, level)} ({level}, {size} classes): top 5"


def path_markdown(prediction: dict[str, Any]) -> str:
    steps = " → ".join(f"**{node['label']}** ({node['score']:.1%})" for node in prediction["path"])
    return f"Most probable path: {steps}"


def build_demo(classifier: Classifier | OnnxClassifier, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               examples_dir: Path = EXAMPLES_DIR) -> Any:
    """The page: a photo in; each level's top 5, the path, and the attention map with an opacity slider out (an
    export without attention outputs: no map and no slider, and ``classifier.note`` in their place)."""
    import gradio as gr

    sizes = {level: len(names) for level, names in zip(classifier.levels, classifier.class_names, strict=True)}
    has_map = not classifier.note

    def classify(photo_path: str | None, opacity: float) -> list[Any]:
        empty = [None] * len(classifier.levels)
        if photo_path is None:
            return [*empty, "", None, "", None]
        try:
            photo = read_photo(photo_path, max_megapixels)
        except PhotoError as error:
            return [*empty, "", None, f"⚠️ {error}", None]
        prediction, heat = classifier.answer(photo)
        labels = [{c["label"]: c["score"] for c in prediction["levels"][level]} for level in classifier.levels]
        if heat is None:
            return [*labels, path_markdown(prediction), None, "", None]
        shown = photo.copy()
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        return [*labels, path_markdown(prediction), overlay(shown, heat, opacity), "", (shown, heat)]

    def reblend(state: tuple[Image.Image, np.ndarray] | None, opacity: float) -> Image.Image | None:
        return None if state is None else overlay(state[0], state[1], opacity)

    with gr.Blocks(title=f"vit-yoga: {classifier.name}") as demo:
        gr.Markdown("# vit-yoga: which yoga pose is this?\nDrop, paste or take a photo, or click an example. The "
                    "model answers on every level of Yoga-82's tree (body position → variation → pose), with "
                    "probabilities that add up along the tree" + (", and shows where it looks (attention "
                    "rollout)." if has_map else "."))
        gr.Markdown(describe_model(classifier.info), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Photo",
                                 elem_id="photo")
                photo.preprocess = undecoded_upload(photo)
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Attention map opacity", elem_id="opacity",
                                    visible=has_map)
                examples = sorted(str(p) for p in examples_dir.glob("*.jpg")) if examples_dir.is_dir() else []
                if examples:
                    gr.Examples(examples, inputs=photo, label="Examples (MIT licence, see examples/LICENSE)")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                path = gr.Markdown(elem_id="path")
                heatmap = gr.Image(type="pil", label="Where the model looks (attention rollout)", elem_id="overlay",
                                   interactive=False, format="jpeg", visible=has_map)
                gr.Markdown(classifier.note, elem_id="note", visible=not has_map)
        with gr.Row():
            outputs = [gr.Label(num_top_classes=5, label=level_title(level, sizes[level]), elem_id=f"level-{level}")
                       for level in classifier.levels]
        state = gr.State()
        photo.change(classify, [photo, opacity], [*outputs, path, heatmap, message, state], api_name="classify")
        opacity.release(reblend, [state, opacity], heatmap, api_name="blend")
    return demo


def undecoded_upload(component: Any) -> Any:
    """gr.Image's preprocess, except that an uploaded file reaches the app undecoded, so that an unreadable photo gets
    the app's own message on the page (gr.Image would fail inside gradio with a generic error). Set on the instance:
    a gr.Image subclass would make gradio write an ``app.pyi`` beside this file."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is None or (payload.url or "").startswith("data:"):
            return original(payload)
        return payload.path

    return preprocess


# ----------------------------------------------------------------------------------------- choosing a model


def newest_run(runs_dir: Path) -> Path | None:
    """The newest finished train.py output under ``runs_dir`` (top-level weights and results are written last)."""
    finished = [weights.parent for weights in runs_dir.glob("**/model.safetensors")
                if not any(part.startswith("checkpoint-") for part in weights.parent.parts)
                and (weights.parent / "config.json").is_file()
                and (weights.parent / "all_results.json").is_file()]
    return max(finished, key=lambda folder: (folder / "model.safetensors").stat().st_mtime, default=None)


def default_model(runs_dirs: Sequence[Path] | None = None) -> str:
    """A Space's own model (``space_model.txt`` beside this file), else the newest finished run under ``runs_dirs``
    (default: runs/ here and beside this file)."""
    space_model = HERE / SPACE_MODEL_FILE
    if space_model.is_file():
        ref = space_model.read_text().strip()
        return str(HERE / ref) if (HERE / ref).is_dir() else ref
    for runs in dict.fromkeys(runs_dirs or (Path.cwd() / "runs", HERE / "runs")):
        found = newest_run(runs) if runs.is_dir() else None
        if found:
            return str(found)
    raise DemoUsageError(
        "no model to serve: pass --model FOLDER_OR_HUB_ID, or train one first, e.g. `python train.py --label_level all`"
        " (about 6 minutes on a laptop CPU; it writes runs/all, which `python app.py` then finds by itself)."
    )


def space_onnx() -> tuple[Path, bool] | None:
    """A Space written with --onnx: its export folder and whether it serves the int8 graph; None elsewhere."""
    path = HERE / SPACE_ONNX_FILE
    if not path.is_file():
        return None
    served = json.loads(path.read_text())
    return HERE / served["folder"], bool(served.get("int8"))


# ------------------------------------------------------------------------------------------------ the Space


def write_space(model_ref: str, space_dir: Path, overwrite: bool = False, onnx: bool = False,
                int8: bool = False) -> Path:
    """A folder to push as a Hugging Face Space: this app, its requirements, a README with the Space's front matter,
    the examples with their licence, and the model (its files when ``model_ref`` is a folder; its id otherwise).
    ``onnx``: ``model_ref`` is an export folder (``--onnx``); the Space gets its graph (``int8``: model_int8.onnx)
    and JSON files, and requirements with onnxruntime instead of torch and transformers."""
    from importlib.metadata import version

    from huggingface_hub import SpaceCard, SpaceCardData

    try:  # the clone's atomic folder writer; a Space running this file never writes Spaces
        from yoga_common.files import staged_folder
    except ImportError:
        raise DemoUsageError("--write_space runs from a clone of vit-yoga (it needs yoga_common).") from None
    local = Path(model_ref).is_dir()
    if onnx:
        model_file, labels = read_export(Path(model_ref), int8)[:2]
        model_files = [model_file.name, *EXPORT_FILES]
        has_map = bool(labels.get("attention_maps"))
        requirements = f"{ONNXRUNTIME_REQUIREMENT}\n"  # the exported graph: no torch, no transformers
    else:
        if local and not (Path(model_ref) / "model.safetensors").is_file():
            raise DemoUsageError(f"--model {model_ref} has no model.safetensors: give a finished train.py output "
                                 "folder.")
        model_files = sorted({*MODEL_FILES, *(p.name for p in Path(model_ref).glob("*.py"))})
        has_map = True
        requirements = "torch>=2.4\ntransformers>=5.0,<6\n"  # as setup.cfg's install_requires
    try:
        with staged_folder(space_dir, overwrite=overwrite) as staging:
            shutil.copy2(Path(__file__), staging / "app.py")
            (staging / "examples").mkdir()
            for example in sorted(EXAMPLES_DIR.glob("*")):
                shutil.copy2(example, staging / "examples" / example.name)
            if local:
                (staging / "model").mkdir()
                for name in model_files:
                    if (Path(model_ref) / name).is_file():
                        shutil.copy2(Path(model_ref) / name, staging / "model" / name)
            if onnx:
                (staging / SPACE_ONNX_FILE).write_text(json.dumps({"folder": "model", "int8": int8}) + "\n")
            else:
                (staging / SPACE_MODEL_FILE).write_text(("model" if local else model_ref) + "\n")
            (staging / "requirements.txt").write_text(
                f"{requirements}{GRADIO_REQUIREMENT}\npillow>=10.0\nnumpy>=1.24\n")
            shown_name = Path(model_ref).name if local else model_ref
            data = SpaceCardData(
                title=f"vit-yoga: {shown_name}", emoji="🧘", colorFrom="indigo",
                colorTo="green", sdk="gradio", sdk_version=version("gradio"), app_file="app.py", pinned=False,
                license="apache-2.0", models=None if local else [model_ref], short_description="Yoga-82 poses: "
                "three levels, the path, and where the model looks",
            )
            what = (f"an ONNX export of a ViTYoga checkpoint, run by ONNX Runtime{' in int8' * int8} without PyTorch"
                    if onnx else "a ViTYoga checkpoint")
            shown = ", the most probable path and the attention rollout map" if has_map else \
                " and the most probable path (it was exported without attention maps)"
            body = (f"# vit-yoga demo\n\nServes `{shown_name}` ({what}: 6 body positions → 20 variations → 82 "
                    f"poses). Upload a photo to see each level's top 5{shown}. Run it locally with `pip install "
                    "-r requirements.txt && python app.py`.\n\n"
                    "Example photos: MIT licence, see `examples/LICENSE` and `examples/README.md`.\n")
            SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(staging / "README.md")
    except FileExistsError:
        raise DemoUsageError(f"--write_space {space_dir} already exists and is not empty: pass --overwrite to replace "
                             "it, or choose another folder.") from None
    return space_dir


# --------------------------------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="a train.py output folder or a Hub model id (default: the Space's model, "
                        "else the newest finished run under runs/)")
    parser.add_argument("--onnx", type=Path, metavar="DIR",
                        help="serve an export of python -m vit_yoga.export instead, with ONNX Runtime and without "
                        "torch (its attention map needs an export with --attention_maps)")
    parser.add_argument("--int8", action="store_true", help="with --onnx: serve model_int8.onnx (--quantize dynamic)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on ($GRADIO_SERVER_NAME; 0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=int(os.environ["GRADIO_SERVER_PORT"])
                        if os.environ.get("GRADIO_SERVER_PORT") else None,
                        help="port ($GRADIO_SERVER_PORT; default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max_megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                        help="larger photos get a message instead of an answer")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch or ONNX Runtime (default: theirs)")
    parser.add_argument("--write_space", type=Path, metavar="DIR",
                        help="write a Hugging Face Space for --model (or --onnx) into DIR and exit (no server)")
    parser.add_argument("--overwrite", action="store_true", help="let --write_space replace a non-empty DIR")
    return parser.parse_args(argv)


def onnx_source(args: argparse.Namespace) -> tuple[Path, bool] | None:
    """The export to serve (--onnx, or a Space's own when no model is named) and whether in int8; None for the
    PyTorch path. Checks the flags and the export's files: cheap, so it runs before Gradio is imported."""
    if args.onnx and args.model:
        raise DemoUsageError("give --model (a checkpoint, PyTorch) or --onnx (an export, ONNX Runtime), not both.")
    if args.int8 and not args.onnx:
        raise DemoUsageError("--int8 serves an export's model_int8.onnx: use it with --onnx DIR.")
    source = (args.onnx, args.int8) if args.onnx else None if args.model else space_onnx()
    if source:
        read_export(*source)
    return source


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        onnx = onnx_source(args)
    except DemoUsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: the demo needs Gradio, which the core install leaves out: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        model_ref = str(onnx[0]) if onnx else args.model or default_model()
        if args.write_space:
            write_space(model_ref, args.write_space, overwrite=args.overwrite, onnx=bool(onnx),
                        int8=bool(onnx and onnx[1]))
            print(f"Wrote a Space to {args.write_space}; push it with: hf upload --repo-type space YOU/NAME "
                  f"{args.write_space} .")
            return 0
        start = time.perf_counter()
        if onnx:
            classifier = OnnxClassifier(onnx[0], int8=onnx[1], threads=args.threads)
        else:
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            classifier = load_classifier(model_ref)
    except DemoUsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Loaded {model_ref}{' (ONNX Runtime)' if onnx else ''} in {time.perf_counter() - start:.1f} s; levels "
          f"{classifier.levels}.{' ' + classifier.note if classifier.note else ''}", flush=True)
    demo = build_demo(classifier, args.max_megapixels)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
