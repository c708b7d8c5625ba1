"""A ViTYoga checkpoint as an ONNX model that ONNX Runtime runs with no code of ours (``python -m vit_yoga.export``).

    python -m vit_yoga.export --model runs/level3 --output_dir runs/level3-onnx [--quantize dynamic] [--opset 17]
        [--check_images DIR [DIR ...]] [--attn_implementation eager|sdpa] [--exporter torchscript|dynamo]
        [--attention_maps]

The folder it writes:

- ``model.onnx``: input ``pixel_values`` (batch, 3, H, W), a dynamic batch axis; outputs ``logits`` (the finest
  level's, as the PyTorch model's ``logits``), for a joint model every level's ``logits_<level>``, and, when the
  model code has the hierarchy decoding (``tree_probabilities``), ``probabilities_<level>`` for every level of
  ``predicted_levels``: tree-consistent probabilities, each coarse one the sum of its children's. With
  ``--attention_maps``, also ``attentions_<i>`` for every layer i (batch, heads, tokens, tokens): the softmaxed
  attention weights the demo's rollout map is computed from, exported with eager attention (sdpa returns none).
- ``model_int8.onnx`` with ``--quantize dynamic``: ONNX Runtime's dynamic quantisation (int8 weights of the
  MatMul/Gemm layers, activations quantised on the fly), mixed precision: the layers whose int8 changes the top-1
  most on calibration images (``--calibration_images``, default the synthetic poses' validation split) stay fp32
  until the int8 model agrees with fp32 there (``quantize_with_sensitivity``).
- ``config.json`` (the checkpoint's: label names, tree, decoding rule), ``preprocessor_config.json`` (how to prepare
  an image), ``labels.json`` (levels, names, parents and which output holds which level: all a program with ONNX
  Runtime alone needs; ``attention_maps`` lists the attention outputs) and ``export_results.json`` (what the checks
  measured, the parameter count, and the accuracy the checkpoint's run reported, for the demo's model line).

Before anything is written, the exported graphs are checked against the PyTorch model on real images prepared as
the image-classification pipeline prepares them: fp32 within ``--tolerance`` (1e-4) on every output (attention maps
included) and the same top-1 on every image; int8 at least ``--int8_min_agreement`` (99 %) top-1 agreement with
PyTorch. The folder is built under a temporary name and appears complete, or not at all.

Exporter: torch's TorchScript-based ``torch.onnx.export(dynamo=False)`` by default (it is deprecated in torch 2.9+
but still ships). Measured here (ViT-Ti/16 224 px, sdpa, ONNX Runtime 1.32, one run on a loaded machine), its graph
ran at least as fast as the dynamo exporter's (batch 1: 4.7x against 4.4x PyTorch eager; batch 16: 1.9x against
1.6x) and it exports in 6 s instead of 45 s; ``--exporter dynamo`` (needs onnxscript) gives the same outputs (tested)
and is the way once the TorchScript exporter is removed.
optimum's exporter needs an ``OnnxConfig`` per model type and adds nothing for a one-input vision model, so the
export goes through torch directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yoga_common.errors import UsageError
from yoga_common.files import atomic_write, staged_folder

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
LABELS_FILE = "labels.json"
RESULTS_FILE = "export_results.json"
DEFAULT_OPSET = 17
DYNAMO_OPSET = 18  # what torch's dynamo exporter writes natively
EXPORTABLE_ATTENTION = ("eager", "sdpa")
EXPORTERS = ("torchscript", "dynamo")
CLASSIFIERS = ("ViTYogaForImageClassification", "ViTYogaForHierarchicalClassification")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SYNTHETIC = "synthetic"  # --check_images word for the synthetic poses' test split (--calibration_images: train)
CALIBRATION_LIMIT = 512  # calibration images for the int8 layer choice
RANKING_IMAGES = 128  # of which the per-layer damage ranking uses the first
ATTENTION_PREFIX = "attentions_"  # --attention_maps: one output per layer, attentions_0 first
# What a train.py run reports about its accuracy, looked for in this order (as the demo does).
RESULT_FILES = ("test_results.json", "all_results.json", "eval_results.json")


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


# --------------------------------------------------------------------------------------------------------------
# The model and what it outputs
# --------------------------------------------------------------------------------------------------------------
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


def _model_module(model: nn.Module) -> Any:
    return sys.modules[type(model).__module__]


def hierarchy_functions(model: nn.Module) -> tuple[Any, Any, Any] | None:
    """``(predicted_levels, tree_probabilities, config)`` from the checkpoint's own model code, else from this
    repository's with the checkpoint's config read into this repository's config class (a checkpoint written before
    the hierarchy decoding existed has the same label fields, and the new ones' defaults); None when neither has
    them."""
    functions = [getattr(_model_module(model), name, None) for name in ("predicted_levels", "tree_probabilities")]
    if None not in functions:
        return functions[0], functions[1], model.config
    import modeling_vit_yoga
    from configuration_vit_yoga import ViTYogaConfig

    functions = [getattr(modeling_vit_yoga, name, None) for name in ("predicted_levels", "tree_probabilities")]
    if None in functions:
        return None
    return functions[0], functions[1], ViTYogaConfig.from_dict(model.config.to_dict())


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
    ``attention_maps``: also every layer's attention weights, last in the outputs (the model must run eager
    attention: sdpa returns no weights)."""

    def __init__(self, model: nn.Module, attention_maps: bool = False) -> None:
        super().__init__()
        self.model = model
        self.attention_maps = attention_maps
        config = model.config
        self.joint = is_joint(model)
        self.spec = OutputSpec()
        self.spec.add("logits", logits_level(config), "logits")
        if self.joint:
            for level in config.hierarchy_levels:
                self.spec.add(f"logits_{level}", level, "logits")
        functions = hierarchy_functions(model)
        self.tree_probabilities = None
        if functions is not None:
            predicted_levels, self.tree_probabilities, self.decoding_config = functions
            for level in predicted_levels(self.decoding_config):
                self.spec.add(f"probabilities_{level}", level, "probabilities")
        if attention_maps:
            for layer in range(config.num_hidden_layers):
                self.spec.add(f"{ATTENTION_PREFIX}{layer}", "", "attentions")

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values, return_dict=True, output_attentions=self.attention_maps)
        outputs = [output.logits]
        level_logits = tuple(output.level_logits) if self.joint else None
        if self.joint:
            outputs += list(level_logits)
        if self.tree_probabilities is not None:
            scores = level_logits if self.joint else output.logits
            outputs += list(self.tree_probabilities(self.decoding_config, scores))
        if self.attention_maps:
            outputs += list(output.attentions)
        return tuple(outputs)


def export_graph(
    wrapper: ExportableClassifier, path: Path, example: torch.Tensor, opset: int, exporter: str
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
                                  opset_version=opset, dynamo=True, dynamic_shapes={"pixel_values": {0: batch}},
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


# --------------------------------------------------------------------------------------------------------------
# The images the checks run on
# --------------------------------------------------------------------------------------------------------------
def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_folders(folders: Sequence[str | Path] | None, option: str = "--check_images") -> list[Path | str]:
    """The ``--check_images`` sources, each folder checked to hold images (before any long work); the word
    ``synthetic`` stands for the synthetic poses' test split. None or empty: the synthetic test split alone."""
    result: list[Path | str] = []
    for folder in folders or [SYNTHETIC]:
        if str(folder) == SYNTHETIC:
            result.append(SYNTHETIC)
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise UsageError(f"{option} {folder} is not a folder; give a folder of photos (any depth) or "
                             f"{SYNTHETIC!r}.")
        if not image_files(folder):
            raise UsageError(f"{option} {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        result.append(folder)
    return result


def synthetic_test_images() -> list[Any]:
    """The test split of the built-in synthetic poses (the data set train.py makes when given none: 40 per pose,
    64 px, seed 0, whose test split is each pose's first 8 images), drawn offline: 656 photos. Each image depends only
    on (seed, pose, index), so drawing 8 per pose with no held-out splits gives exactly those images, 5x faster than
    drawing all 40."""
    from transformers.image_utils import load_image

    from yoga82 import build_synthetic

    drawn = build_synthetic(images_per_class=8, validation_fraction=0.0, test_fraction=0.0, progress=False)
    return [load_image(row["image"]) for row in drawn["train"]]


def synthetic_calibration_images(limit: int = CALIBRATION_LIMIT) -> list[Any]:
    """Images of the synthetic poses' validation split (train.py's default set: 40 per pose, seed 0; indices 8-15
    of each pose), never one of ``synthetic_test_images``: the int8 layer choice is made on these, the checks then
    run on the test split. Not the training split: a model is surer of its training images than of any other, so
    int8 flips fewer of them (measured: all-int8 agreed on 99.2 % of the training images, 98.3 % of the test
    images). Pose by pose, so any ``limit`` covers the poses evenly."""
    from yoga82.synthetic import LABEL_82_NAMES, draw_pose

    images = []
    for index in range(8, 16):
        for pose in range(len(LABEL_82_NAMES)):
            if len(images) == limit:
                return images
            images.append(draw_pose(pose, np.random.default_rng([0, pose, index]), 64).convert("RGB"))
    return images


def load_photos(folder: Path, limit: int | None = None) -> list[Any]:
    """The photos of ``folder`` as the image-classification pipeline loads them (EXIF orientation, RGB)."""
    from transformers.image_utils import load_image

    files = image_files(folder)[:limit]
    photos = []
    for path in files:
        try:
            photos.append(load_image(str(path)))
        except Exception as error:  # PIL raises several types for a bad file; skip it, say which
            logger.warning("skipping %s: %s", path, error)
    if not photos:
        raise UsageError(f"--check_images {folder}: none of its {len(files)} images could be read.")
    return photos


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------
def ort_session(path: str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


def preprocess(processor: Any, photos: Sequence[Any]) -> torch.Tensor:
    return processor(images=list(photos), return_tensors="pt")["pixel_values"]


# --------------------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------------------
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


def reported_results(model: str | Path) -> dict[str, Any] | None:
    """The first of the checkpoint folder's RESULT_FILES (what its run reported on the test or validation set), so
    that a program serving the export can say how accurate the model is; None for a Hub id or a folder without."""
    for name in RESULT_FILES:
        path = Path(model) / name
        if path.is_file():
            try:
                return {"file": name, "metrics": json.loads(path.read_text())}
            except (OSError, ValueError):
                return None
    return None


def export_onnx(
    model: str | Path,
    output_dir: str | Path,
    *,
    quantize: str | None = None,
    opset: int | None = None,
    check_images: Sequence[str | Path] | None = None,
    check_limit: int | None = None,
    attn_implementation: str | None = None,
    exporter: str = "torchscript",
    tolerance: float = 1e-4,
    int8_min_agreement: float = 0.99,
    calibration_images: str | Path = SYNTHETIC,
    calibration_limit: int = CALIBRATION_LIMIT,
    overwrite: bool = False,
    attention_maps: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (a ViTYoga folder or Hub id) to ``output_dir`` after checking the graphs against PyTorch.

    ``check_images``: folders of photos, or ``"synthetic"`` (the synthetic poses' test split: the default);
    ``check_limit`` caps the
    photos taken from each. With ``quantize="dynamic"``, ``calibration_images`` (a folder, or ``"synthetic"``: the
    synthetic poses' validation split) are where the layers kept in fp32 are chosen (``quantize_with_sensitivity``),
    at most ``calibration_limit`` of them. ``attention_maps``: also output every layer's attention weights (eager
    attention; int8 keeps them too, computed by the quantised network). Returns what ``export_results.json`` holds.
    Raises ``UsageError`` for bad arguments (before loading anything), a model that cannot export, or a failed check
    (nothing written then).
    """
    require_onnx()
    output_dir = Path(output_dir)
    if quantize not in (None, "dynamic"):
        raise UsageError(f"--quantize {quantize}: only 'dynamic' (ONNX Runtime's dynamic int8 quantisation) exists.")
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter {exporter}: choose one of {list(EXPORTERS)}.")
    if opset is None:
        opset = DYNAMO_OPSET if exporter == "dynamo" else DEFAULT_OPSET
    if exporter == "dynamo" and opset < DYNAMO_OPSET:
        raise UsageError(f"--exporter dynamo --opset {opset}: the dynamo exporter writes opset {DYNAMO_OPSET} and "
                         "its conversion down to 17 gave an invalid graph here (ReduceLogSumExp); use --opset 18+.")
    if not 17 <= opset <= 23:
        raise UsageError(f"--opset {opset}: give 17 to 23 (17 has LayerNormalization; ONNX Runtime 1.18+ runs all).")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise UsageError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite or pick another folder.")
    if attention_maps:
        if attn_implementation not in (None, "eager"):
            raise UsageError(f"--attention_maps --attn_implementation {attn_implementation}: only eager attention "
                             "returns its weights; drop --attn_implementation (eager is then used) or pass eager.")
        attn_implementation = "eager"
    folders = check_folders(check_images)
    if quantize == "dynamic":
        if calibration_limit < 1:
            raise UsageError(f"--calibration_limit {calibration_limit}: give at least 1 (default {CALIBRATION_LIMIT}).")
        calibration_source = check_folders([calibration_images], "--calibration_images")[0]
        if calibration_source in folders and calibration_source != SYNTHETIC:
            logger.warning("--calibration_images %s is also a --check_images folder: the int8 check then runs on "
                           "the images its layers were chosen on and overstates the agreement.", calibration_source)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise UsageError("--exporter dynamo needs onnxscript: pip install onnxscript.") from None

    wrapped, processor = load_checkpoint(str(model), attn_implementation)
    wrapper = ExportableClassifier(wrapped, attention_maps=attention_maps).eval()
    config = wrapped.config
    sources = {
        str(folder): synthetic_test_images()[:check_limit] if folder == SYNTHETIC else load_photos(folder, check_limit)
        for folder in folders
    }
    pixels = {name: preprocess(processor, photos) for name, photos in sources.items()}

    results: dict[str, Any] = {
        "model": str(model), "exporter": exporter, "opset": opset,
        "attn_implementation": config._attn_implementation or "sdpa",
        "patch_embedding_type": getattr(config, "patch_embedding_type", "standard"),
        "outputs": wrapper.spec.names, "tolerance": tolerance, "checks": {},
        "parameters": sum(p.numel() for p in wrapped.parameters()),
    }
    reported = reported_results(model)
    if reported:
        results["reported_results"] = reported
    import onnxruntime

    results["onnxruntime"] = onnxruntime.__version__
    results["torch"] = torch.__version__
    with staged_folder(output_dir, overwrite=overwrite) as staging:
        fp32_path = staging / MODEL_FILE
        started = time.perf_counter()
        export_graph(wrapper, fp32_path, next(iter(pixels.values()))[:2], opset, exporter)
        results["export_seconds"] = round(time.perf_counter() - started, 2)
        sessions = {"fp32": ort_session(fp32_path)}
        if quantize == "dynamic":
            calibration = (synthetic_calibration_images(calibration_limit) if calibration_source == SYNTHETIC
                           else load_photos(Path(calibration_source), calibration_limit))
            results["int8"] = quantize_with_sensitivity(
                fp32_path, staging / INT8_FILE, wrapper.spec, preprocess(processor, calibration).numpy(),
                int8_min_agreement)
            results["int8"]["calibration_source"] = str(calibration_source)
            sessions["int8"] = ort_session(staging / INT8_FILE)
        failures = []
        for source, pixel_values in pixels.items():
            reference, candidates = run_both(wrapper, sessions, pixel_values)
            checks = {"images": len(pixel_values)}
            for precision, outputs in candidates.items():
                checks[precision] = compare(wrapper.spec, reference, outputs)
            results["checks"][source] = checks
            fp32 = checks["fp32"]
            worst = max(fp32["max_abs_difference"].items(), key=lambda item: item[1])
            if worst[1] > tolerance:
                failures.append(f"{source}: ONNX Runtime fp32 output {worst[0]!r} differs from PyTorch by "
                                f"{worst[1]:.3g} > {tolerance:g}")
            disagreeing = {name: share for name, share in fp32["top1_agreement"].items() if share < 1.0}
            if disagreeing:
                failures.append(f"{source}: fp32 top-1 differs from PyTorch on some images ({disagreeing})")
            if "int8" in checks:
                agreement = min(checks["int8"]["top1_agreement"].values())
                if agreement < int8_min_agreement:
                    failures.append(f"{source}: int8 top-1 agrees with PyTorch on {agreement:.1%} of "
                                    f"{len(pixel_values)} images < {int8_min_agreement:.0%} with "
                                    f"{len(results['int8']['fp32_layers'])} of {results['int8']['layers']} layers "
                                    "kept fp32 (near-tied logits flip in int8; choose the layers on photos like "
                                    "these with --calibration_images, or lower --int8_min_agreement to export it "
                                    "anyway)")
        if failures:
            raise UsageError("the exported model does not match PyTorch; nothing was written. " + "; ".join(failures))
        for name, path in (("fp32", fp32_path), ("int8", staging / INT8_FILE)):
            if path.exists():
                results.setdefault("megabytes", {})[name] = round(path.stat().st_size / 2**20, 3)
        config.save_pretrained(staging)
        processor.save_pretrained(staging)
        atomic_write(staging / LABELS_FILE, json.dumps(labels_document(config, wrapper.spec), indent=2) + "\n")
        atomic_write(staging / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return results


def decoding_nodes(graph: Any) -> list[str]:
    """The MatMul/Gemm nodes of ``tree_probabilities``: products with a 0/1 child -> parent matrix, which sum
    children's probabilities into their parents'. Exact in fp32, they are bookkeeping, not learned weights, and
    never get quantised."""
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    constants |= {node.output[0]: attribute.t for node in graph.node if node.op_type == "Constant"
                  for attribute in node.attribute if attribute.name == "value"}

    def is_parent_matrix(name: str) -> bool:
        return name in constants and bool(np.isin(numpy_helper.to_array(constants[name]), (0, 1)).all())

    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(map(is_parent_matrix, node.input))]


def weight_nodes(graph: Any) -> list[str]:
    """The network's MatMul/Gemm nodes with a constant weight (what dynamic quantisation turns into int8), in
    graph order, without the tree decoding's products."""
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    decoding = set(decoding_nodes(graph))
    return [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")
            and node.name not in decoding and any(name in constants for name in node.input)]


def quantize_dynamic_int8(source: Path, target: Path, nodes: Sequence[str] | None = None) -> None:
    """ONNX Runtime's dynamic quantisation of ``nodes`` (default: every weight MatMul/Gemm, nearly all of a ViT's
    FLOPs): int8 weights, activations quantised per batch at run time. Convolutions stay fp32 (ConvInteger has no
    fast CPU kernel and the patch embedding is a small share of the time), and so do the tree decoding's products
    (``decoding_nodes``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if nodes is None:
        nodes = weight_nodes(onnx.load(str(source)).graph)
    root = logging.getLogger()
    level = root.level
    # The quantiser warns on the root logger, at every call, that the model could be pre-processed (shape
    # inference; it changes nothing for a graph whose MatMul shapes torch's exporter already wrote).
    root.setLevel(logging.ERROR)
    try:
        # The quantiser turns a Gemm into a MatMul named ``<name>_MatMul`` (and an Add) before it quantises.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_quantize=[*nodes, *(f"{name}_MatMul" for name in nodes)])
    finally:
        root.setLevel(level)


def logits_outputs(session: Any, spec: OutputSpec, pixel_values: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Every ``logits`` output of ``session`` on ``pixel_values``, in ``spec``'s order."""
    names = [name for name, kind in zip(spec.names, spec.kinds, strict=True) if kind == "logits"]
    parts = [session.run(names, {INPUT_NAME: pixel_values[start:start + batch_size]})
             for start in range(0, len(pixel_values), batch_size)]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def top1_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """The smallest share, over the logits outputs, of images whose top-1 the candidate keeps."""
    return min(float((ref.argmax(-1) == got.argmax(-1)).mean()) for ref, got in zip(reference, candidate, strict=True))


def quantize_with_sensitivity(
    source: Path, target: Path, spec: OutputSpec, pixel_values: np.ndarray, min_agreement: float,
    max_fp32_share: float = 0.5,
) -> dict[str, Any]:
    """Dynamic int8 with the layers whose quantisation changes the answers most left in fp32 (mixed precision).

    ONNX Runtime's quantiser quantises what it is told to; choosing what not to quantise is the one part done here.
    The agreement aimed at is halfway between ``min_agreement`` and 100 % (99.5 % for 99 %): the checks run on other
    images, whose share varies by about that much. On the calibration images (``pixel_values``, never the images the
    checks then run on): quantise every weight layer; if the int8 top-1 agrees with fp32 on less than the aim, rank
    the layers by the mean squared change of the logits when each alone is quantised, and keep the worst in fp32 one
    at a time until the aim is reached or ``max_fp32_share`` of the layers are fp32. Returns what was chosen and
    measured.

    Why (README, Deploy): on the 30-epoch out-of-the-box vit-pico, 8-bit weights alone (no activation quantisation)
    move the logits by 0.01-0.05 while 3 % of real photos have their two best classes closer than 0.05, so every
    all-int8 scheme tried (dynamic, static QDQ with MinMax/percentile/entropy calibration, per-channel, weight-only
    8-bit blocks) flipped 1-3 % of the top-1s; the first block is the most sensitive.
    """
    import onnx
    from tqdm.auto import tqdm

    nodes = weight_nodes(onnx.load(str(source)).graph)
    reference = logits_outputs(ort_session(source), spec, pixel_values)

    def agreement(path: Path) -> float:
        return top1_agreement(reference, logits_outputs(ort_session(path), spec, pixel_values))

    quantize_dynamic_int8(source, target, nodes)
    first = agreement(target)
    aim = 1 - (1 - min_agreement) / 2
    result: dict[str, Any] = {"calibration_images": len(pixel_values), "layers": len(nodes), "fp32_layers": [],
                              "calibration_aim": aim, "calibration_agreement_all_int8": first,
                              "calibration_agreement": first}
    if first >= aim:
        return result
    damage = {}
    sample = pixel_values[:RANKING_IMAGES]  # a squared error is steady on fewer images than a share of flips
    sample_reference = [logits[:RANKING_IMAGES] for logits in reference]
    for node in tqdm(nodes, desc="Ranking layers by int8 damage", unit="layer", leave=False):
        quantize_dynamic_int8(source, target, [node])
        got = logits_outputs(ort_session(target), spec, sample)
        damage[node] = float(np.mean([((g - r) ** 2).mean() for g, r in zip(got, sample_reference, strict=True)]))
    ranked = sorted(nodes, key=lambda node: -damage[node])
    for count in range(1, int(max_fp32_share * len(nodes)) + 1):
        kept = ranked[:count]
        quantize_dynamic_int8(source, target, [node for node in nodes if node not in kept])
        share = agreement(target)
        result.update(fp32_layers=kept, calibration_agreement=share)
        logger.info("int8 with %d layer(s) in fp32: %.2f%% top-1 agreement on the calibration images", count,
                    100 * share)
        if share >= aim:
            break
    return result


# --------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_yoga.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a train.py output folder or a Hub id (ViTYoga)")
    parser.add_argument("--output_dir", required=True, type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--quantize", choices=["dynamic"], default=None, help="also write model_int8.onnx")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset, 17 to 23 (default 17; 18 with --exporter dynamo)")
    parser.add_argument("--check_images", nargs="+", default=None, metavar="DIR",
                        help="folders of photos the checks run on; 'synthetic' (the default) is the synthetic "
                        "poses' test split (drawn offline)")
    parser.add_argument("--check_limit", type=int, default=None, help="at most this many photos per folder")
    parser.add_argument("--attn_implementation", choices=EXPORTABLE_ATTENTION, default=None,
                        help="attention to export (default: the checkpoint's)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torch.onnx.export's TorchScript exporter (default) or dynamo")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest fp32 output difference accepted")
    parser.add_argument("--int8_min_agreement", type=float, default=0.99,
                        help="smallest share of images whose int8 top-1 must equal PyTorch's")
    parser.add_argument("--calibration_images", default=SYNTHETIC, metavar="DIR",
                        help="with --quantize: photos on which the layers kept in fp32 are chosen ('synthetic', the "
                        "default: the synthetic poses' validation split; best: your own validation photos)")
    parser.add_argument("--calibration_limit", type=int, default=CALIBRATION_LIMIT,
                        help=f"at most this many calibration photos (default {CALIBRATION_LIMIT})")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--attention_maps", action="store_true",
                        help="also output every layer's attention weights (attentions_<i>; eager attention), so that "
                        "the demo (app.py --onnx) can draw its attention rollout map")
    return parser.parse_args(argv)


def summary_lines(results: dict[str, Any]) -> Iterable[str]:
    for source, checks in results["checks"].items():
        fp32 = checks["fp32"]
        yield (f"{source} ({checks['images']} images): fp32 max |ONNX - PyTorch| "
               f"{max(fp32['max_abs_difference'].values()):.2g}, top-1 agreement "
               f"{min(fp32['top1_agreement'].values()):.1%}")
        if "int8" in checks:
            yield f"    int8 top-1 agreement with PyTorch {min(checks['int8']['top1_agreement'].values()):.1%}"
    if "int8" in results:
        int8 = results["int8"]
        yield (f"int8: {int8['layers'] - len(int8['fp32_layers'])} of {int8['layers']} layers int8, "
               f"{len(int8['fp32_layers'])} kept fp32 ({', '.join(int8['fp32_layers']) or 'none'}); chosen on "
               f"{int8['calibration_images']} calibration images ({int8['calibration_source']}): agreement "
               f"{int8['calibration_agreement_all_int8']:.1%} all-int8 -> {int8['calibration_agreement']:.1%}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our progress at INFO; the quantiser logs every tensor it skips at INFO on the root logger.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("vit_yoga").setLevel(logging.INFO)
    try:
        results = export_onnx(
            args.model, args.output_dir, quantize=args.quantize, opset=args.opset, check_images=args.check_images,
            check_limit=args.check_limit, attn_implementation=args.attn_implementation, exporter=args.exporter,
            tolerance=args.tolerance, int8_min_agreement=args.int8_min_agreement,
            calibration_images=args.calibration_images, calibration_limit=args.calibration_limit,
            overwrite=args.overwrite, attention_maps=args.attention_maps,
        )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(results):
        print(line)
    sizes = ", ".join(f"{k} {v:.2f} MB" for k, v in results.get("megabytes", {}).items())
    print(f"wrote {args.output_dir} (outputs: {', '.join(results['outputs'])}; {sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
