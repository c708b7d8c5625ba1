"""A ViTYoga checkpoint as an ONNX model that ONNX Runtime runs with no code of ours (``python -m vit_yoga.export``).

    python -m vit_yoga.export --model runs/level3 --output_dir runs/level3-onnx [--quantize dynamic] [--opset 17]
        [--check_images DIR|synthetic [...]] [--calibration_images DIR|synthetic] [--attention_maps]
        [--attn_implementation eager|sdpa] [--exporter torchscript|dynamo]

The folder it writes:

- ``model.onnx``: input ``pixel_values`` (batch, 3, H, W), a dynamic batch axis; outputs ``logits`` (the finest
  level's, as the PyTorch model's ``logits``), for a joint model every level's ``logits_<level>``, and
  ``probabilities_<level>`` for every level of the checkpoint's ``predicted_levels``: tree-consistent probabilities,
  each coarse one the sum of its children's. With ``--attention_maps``, also ``attentions_<i>`` for every layer i
  (batch, heads, tokens, tokens): the softmaxed attention weights the demo's rollout map is computed from, exported
  with eager attention (sdpa returns none). The graph: vit_yoga/onnx_graph.py.
- ``model_int8.onnx`` with ``--quantize dynamic``: ONNX Runtime's dynamic quantisation (int8 weights of the
  MatMul/Gemm layers, activations quantised on the fly), mixed precision: the layers whose int8 changes the top-1
  most on the calibration images stay fp32 until the int8 model agrees with fp32 there (vit_yoga/int8.py).
- ``config.json`` (the checkpoint's: label names, tree, decoding rule), ``preprocessor_config.json`` (how to prepare
  an image), ``labels.json`` (levels, names, parents and which output holds which level: all a program with ONNX
  Runtime alone needs; ``attention_maps`` lists the attention outputs) and ``export_results.json`` (what the checks
  measured, the parameter count, and the accuracy the checkpoint's run reported, for the demo's model line).

Before anything is written, each graph is checked against the PyTorch model on photos prepared as the
image-classification pipeline prepares them: fp32 within ``--tolerance`` (1e-4) on every output (attention maps
included) and the same top-1 on every image, else nothing is written (exit status 2); int8 at least
``--int8_min_agreement`` (99 %) top-1 agreement with PyTorch, else the folder is written with the fp32 model alone,
``export_results.json`` says what int8 measured, and the command exits with status 1. The folder is built under a
temporary name and appears complete, or not at all.

The photos, by default those of the data set the checkpoint's run recorded (train.py writes where its images came
from into all_results.json: ``vit_yoga.data.data_record``): the checks run on its test split (at most
``DATASET_CHECK_LIMIT``, spread over the split), the int8 layers are chosen on its validation split; for a run on the
built-in synthetic poses, on their test and validation splits, drawn offline. ``--check_images`` and
``--calibration_images`` name folders of photos (or ``synthetic``) instead, and are needed for a checkpoint that
records no loadable data set (a Hub id, a converted checkpoint, a data set on the Hub while offline).

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
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yoga_common.errors import UsageError
from yoga_common.files import atomic_write, staged_folder

from .inference import IMAGE_SUFFIXES, RESULT_FILES, PhotoError, load_photo, training_data
from .int8 import quantize_with_sensitivity
from .onnx_graph import (
    DEFAULT_OPSET,
    DYNAMO_OPSET,
    EXPORTABLE_ATTENTION,
    EXPORTERS,
    ExportableClassifier,
    compare,
    export_graph,
    labels_document,
    load_checkpoint,
    require_onnx,
    run_both,
)
from .onnx_runtime import INT8_FILE, LABELS_FILE, MODEL_FILE, RESULTS_FILE, ort_session

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"  # the built-in synthetic poses: their test split (checks), validation split (calibration)
DATASET_CHECK_LIMIT = 1000  # images of a recorded test split the checks take by default, spread over the split
CALIBRATION_LIMIT = 512  # calibration images for the int8 layer choice
PREPARE_CHUNK = 64  # photos decoded and prepared at a time (a data set split is not held decoded in memory)
EXIT_INT8_SHORT = 1  # the command's status when int8 fell short of --int8_min_agreement (fp32 written)
USAGE_EXIT = 2


# --------------------------------------------------------------------------------------------------------------
# Where the photos come from
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSplit:
    """A split of the data set the checkpoint's run recorded, named ``<data set>[<split>]``."""

    name: str
    rows: Any = field(compare=False)  # a datasets.Dataset
    image_column: str = field(compare=False)

    def __str__(self) -> str:
        return self.name

    def photos(self, limit: int | None) -> Iterator[Any]:
        """At most ``limit`` photos, spread evenly over the split (a split is often ordered by class)."""
        count = len(self.rows) if limit is None else min(limit, len(self.rows))
        for index in np.linspace(0, len(self.rows) - 1, num=count).round().astype(int).tolist():
            try:
                yield load_photo(self.rows[index][self.image_column])
            except (PhotoError, OSError) as error:  # a damaged file in the data set: skip it, say which
                logger.warning("skipping row %d of %s: %s", index, self.name, error)


Source = Path | str | DatasetSplit  # a folder of photos, SYNTHETIC, or a recorded split


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_folders(folders: Sequence[str | Path], option: str = "--check_images") -> list[Path | str]:
    """The sources the user named, each folder checked to hold images (before any long work); the word
    ``synthetic`` stands for the synthetic poses."""
    result: list[Path | str] = []
    for folder in folders:
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


def recorded_sources(model: str | Path, wanted: Sequence[str]) -> dict[str, Source]:
    """The ``wanted`` splits ("test": the checks', "validation": the calibration's) of the data set the run that
    wrote ``model`` recorded: ``SYNTHETIC`` for the built-in synthetic poses, else loaded. Raises a UsageError naming
    the flags to pass instead when the run recorded none, or it cannot be loaded (a local data set moved away, a Hub
    data set while offline)."""
    import datasets

    from .data import DATA_RECORD_KEY, find_image_column, load_recorded_dataset, read_data_record, recorded_source

    flags = " and ".join({"test": "--check_images DIR", "validation": "--calibration_images DIR"}[s] for s in wanted)
    instead = (f"pass {flags} (folders of photos like those the model will classify; 'synthetic': the built-in "
               "synthetic poses)")
    record = read_data_record(model) if Path(model).is_dir() else None
    if record is None:
        where = "is not a local folder" if not Path(model).is_dir() else (
            f"records no data set (train.py writes {DATA_RECORD_KEY!r} into all_results.json; this checkpoint was "
            "written by another program or an older train.py)")
        raise UsageError(f"--model {model} {where}, so the photos to check the export on are unknown; {instead}.")
    source = recorded_source(record)
    if source.synthetic:
        return {split: SYNTHETIC for split in wanted}
    local = [value for value in (source.train_dir, source.validation_dir, source.test_dir, source.dataset_name)
             if value and os.path.isabs(value)]
    location = source.train_dir or source.dataset_name
    trained_on = f"--model {model}'s run was trained on"
    gone = [value for value in local if not Path(value).exists()]
    if gone:
        raise UsageError(f"{trained_on} {gone[0]}, which is not there any more; {instead}.")
    offline = getattr(datasets.config, "HF_HUB_OFFLINE", False) or any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE",
                                                                                 "HF_DATASETS_OFFLINE"))
    if not local and offline:
        raise UsageError(f"{trained_on} the Hub data set {location}, which cannot be loaded offline; {instead}.")
    try:
        dataset = load_recorded_dataset(record)
        column = find_image_column(dataset["train"].features, source.image_column)
    except Exception as error:  # datasets raises many types (missing files, no network, a changed data set)
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"{trained_on} {location}, which cannot be loaded ({type(error).__name__}: {reason}); "
                         f"{instead}.") from None
    missing = [split for split in wanted if split not in dataset or not len(dataset[split])]
    if missing:
        raise UsageError(f"{trained_on} {location}, which has no {missing[0]} split; {instead}.")
    names = {split: f"{location}[{split}]" for split in wanted}
    if source.train_dir:  # image folders: the test split is --test_dir, validation --validation_dir or held out
        names.update({split: folder for split, folder in (("test", source.test_dir),
                                                          ("validation", source.validation_dir)) if folder})
    return {split: DatasetSplit(names[split], dataset[split], column) for split in wanted}


def synthetic_test_images(limit: int | None = None) -> list[Any]:
    """The test split of the built-in synthetic poses (the data set train.py makes when given none: 40 per pose,
    64 px, seed 0, whose test split is each pose's first 8 images), drawn offline: 656 photos, pose by pose (the first
    ``limit``). Each image depends only on (seed, pose, index), so drawing 8 per pose with no held-out splits gives
    exactly those images, 5x faster than drawing all 40."""
    from yoga82 import build_synthetic
    from yoga82.synthetic import LABEL_82_NAMES

    poses = range(len(LABEL_82_NAMES) if limit is None else min(len(LABEL_82_NAMES), math.ceil(limit / 8)))
    drawn = build_synthetic(images_per_class=8, validation_fraction=0.0, test_fraction=0.0, progress=False,
                            labels=poses)
    return [load_photo(row["image"]) for row in drawn["train"]][:limit]


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


def load_photos(folder: Path, limit: int | None = None, option: str = "--check_images") -> list[Any]:
    """The photos of ``folder`` as the image-classification pipeline loads them (EXIF orientation, RGB)."""
    files = image_files(folder)[:limit]
    photos = []
    for path in files:
        try:
            photos.append(load_photo(path))
        except PhotoError as error:
            logger.warning("skipping %s: %s", path, error)
    if not photos:
        raise UsageError(f"{option} {folder}: none of its {len(files)} images could be read.")
    return photos


def photos_of(source: Source, limit: int | None, calibration: bool = False) -> Iterable[Any]:
    """The photos of a source: a check's (the test split) or, with ``calibration``, the int8 choice's."""
    if source == SYNTHETIC:
        return synthetic_calibration_images(limit) if calibration else synthetic_test_images(limit)
    if isinstance(source, DatasetSplit):
        return source.photos(limit or (None if calibration else DATASET_CHECK_LIMIT))
    return load_photos(Path(source), limit, "--calibration_images" if calibration else "--check_images")


def preprocess(processor: Any, photos: Iterable[Any]) -> torch.Tensor:
    """``pixel_values`` of the photos as the image processor prepares them, a chunk of photos at a time."""
    chunks, chunk = [], []
    for photo in photos:
        chunk.append(photo)
        if len(chunk) == PREPARE_CHUNK:
            chunks.append(processor(images=chunk, return_tensors="pt")["pixel_values"])
            chunk = []
    if chunk:
        chunks.append(processor(images=chunk, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


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


# --------------------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------------------
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
    calibration_images: str | Path | None = None,
    calibration_limit: int = CALIBRATION_LIMIT,
    overwrite: bool = False,
    attention_maps: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (a ViTYoga folder or Hub id) to ``output_dir`` after checking the graphs against PyTorch.

    ``check_images``: folders of photos, or ``"synthetic"`` (the synthetic poses' test split); default: the test
    split of the data set the checkpoint's run recorded. ``check_limit`` caps the photos taken from each. With
    ``quantize="dynamic"``, ``calibration_images`` (a folder, or ``"synthetic"``; default: the recorded data set's
    validation split) are where the layers kept in fp32 are chosen, at most ``calibration_limit`` of them.
    ``attention_maps``: also output every layer's attention weights (eager attention; int8 keeps them too).

    Returns what ``export_results.json`` holds. Raises ``UsageError`` for bad arguments or photos that cannot be
    found (before loading anything), a model that cannot export, or an fp32 graph that fails its check (nothing
    written then). An int8 graph that falls short of ``int8_min_agreement`` is not written, the rest is:
    ``results["int8"]["written"]`` is False and ``int8_shortfall_message(results)`` says what was measured.
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
    if not 0 <= int8_min_agreement <= 1:
        raise UsageError(f"--int8_min_agreement {int8_min_agreement}: give a share from 0 to 1 (default 0.99).")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise UsageError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite or pick another folder.")
    if attention_maps:
        if attn_implementation not in (None, "eager"):
            raise UsageError(f"--attention_maps --attn_implementation {attn_implementation}: only eager attention "
                             "returns its weights; drop --attn_implementation (eager is then used) or pass eager.")
        attn_implementation = "eager"
    if check_limit is not None and check_limit < 1:
        raise UsageError(f"--check_limit {check_limit}: give at least 1 (default: every photo of a folder).")
    if quantize and calibration_limit < 1:
        raise UsageError(f"--calibration_limit {calibration_limit}: give at least 1 (default {CALIBRATION_LIMIT}).")
    checks: list[Source] = check_folders(check_images) if check_images else []
    calibration: Source | None = None
    if quantize and calibration_images is not None:
        calibration = check_folders([calibration_images], "--calibration_images")[0]
    wanted = [] if checks else ["test"]  # the splits of the run's data set the defaults take
    if quantize and calibration is None:
        wanted.append("validation")
    if wanted:
        recorded = recorded_sources(model, wanted)
        checks = checks or [recorded["test"]]
        calibration = calibration if calibration is not None else recorded.get("validation")
    if calibration is not None and calibration != SYNTHETIC and calibration in checks:
        logger.warning("--calibration_images %s is also a --check_images folder: the int8 check then runs on the "
                       "images its layers were chosen on and overstates the agreement.", calibration)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise UsageError("--exporter dynamo needs onnxscript: pip install onnxscript.") from None

    wrapped, processor = load_checkpoint(str(model), attn_implementation)
    wrapper = ExportableClassifier(wrapped, attention_maps=attention_maps).eval()
    config = wrapped.config
    pixels = {str(source): preprocess(processor, photos_of(source, check_limit)) for source in checks}
    import onnxruntime

    results: dict[str, Any] = {
        "model": str(model), "exporter": exporter, "opset": opset,
        "attn_implementation": config._attn_implementation or "sdpa",
        "patch_embedding_type": config.patch_embedding_type,
        "outputs": wrapper.spec.names, "tolerance": tolerance, "checks": {},
        "parameters": sum(p.numel() for p in wrapped.parameters()),
        "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
    }
    all_results = Path(model) / "all_results.json"
    if all_results.is_file() and (data := training_data(json.loads(all_results.read_text()))):
        results["training_data"] = data  # for a program serving the export ("Trained on: ...")
    if reported := reported_results(model):
        results["reported_results"] = reported
    with staged_folder(output_dir, overwrite=overwrite) as staging:
        fp32_path, int8_path = staging / MODEL_FILE, staging / INT8_FILE
        started = time.perf_counter()
        export_graph(wrapper, fp32_path, next(iter(pixels.values()))[:2], opset, exporter)
        results["export_seconds"] = round(time.perf_counter() - started, 2)
        sessions = {"fp32": ort_session(fp32_path)}
        if quantize == "dynamic":
            calibration_pixels = preprocess(processor, photos_of(calibration, calibration_limit, calibration=True))
            results["int8"] = quantize_with_sensitivity(fp32_path, int8_path, wrapper.spec,
                                                        calibration_pixels.numpy(), int8_min_agreement)
            results["int8"].update(calibration_source=str(calibration), min_agreement=int8_min_agreement)
            sessions["int8"] = ort_session(int8_path)
        failures, shortfalls = check_against_pytorch(wrapper, sessions, pixels, results, tolerance,
                                                     int8_min_agreement)
        if failures:
            raise UsageError("the exported model does not match PyTorch; nothing was written. " + "; ".join(failures))
        if "int8" in results:
            results["int8"]["written"] = not shortfalls
            if shortfalls:  # fp32 matched PyTorch: it is written; int8 is not
                sessions.pop("int8")
                int8_path.unlink()
                results["int8"]["shortfalls"] = shortfalls
        results["megabytes"] = {name: round(path.stat().st_size / 2**20, 3)
                                for name, path in (("fp32", fp32_path), ("int8", int8_path)) if path.exists()}
        config.save_pretrained(staging)
        processor.save_pretrained(staging)
        atomic_write(staging / LABELS_FILE, json.dumps(labels_document(config, wrapper.spec), indent=2) + "\n")
        atomic_write(staging / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return results


def check_against_pytorch(
    wrapper: ExportableClassifier, sessions: dict[str, Any], pixels: dict[str, torch.Tensor], results: dict[str, Any],
    tolerance: float, int8_min_agreement: float,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each session against PyTorch on every source's pixels, recorded in ``results["checks"]``. Returns the fp32
    failures (what makes the export wrong) and, per source where int8 agrees too rarely, what it measured."""
    failures, shortfalls = [], []
    for source, pixel_values in pixels.items():
        reference, candidates = run_both(wrapper, sessions, pixel_values)
        checks: dict[str, Any] = {"images": len(pixel_values)}
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
        if "int8" in checks and (agreement := min(checks["int8"]["top1_agreement"].values())) < int8_min_agreement:
            shortfalls.append({"source": source, "images": len(pixel_values), "agreement": agreement})
    return failures, shortfalls


def int8_shortfall_message(results: dict[str, Any]) -> str:
    """What to tell the user when int8 fell short: what was measured, the usual cause, and the two flags."""
    int8 = results["int8"]
    measured = "; ".join(f"agreement {s['agreement']:.1%} of {s['images']} images of {s['source']}"
                         for s in int8["shortfalls"])
    lowest = min(s["agreement"] for s in int8["shortfalls"])
    return (
        f"int8 was not written: its top-1 agrees with PyTorch's on too few photos ({measured} < "
        f"{int8['min_agreement']:.0%} required), with {len(int8['fp32_layers'])} of {int8['layers']} layers kept fp32. "
        "The fp32 model matched PyTorch and was written. The usual cause is the near-tied answers of a weakly trained "
        "model, not a faulty export: int8 rounding flips the answers whose top two classes are nearly tied. To get "
        "int8, choose the fp32 layers on photos like yours with --calibration_images DIR, or accept this agreement "
        f"with --int8_min_agreement {math.floor(lowest * 100) / 100:g}."
    )


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
                        help="folders of photos the checks run on, or 'synthetic' (the synthetic poses' test split, "
                        "drawn offline); default: the test split of the data set the checkpoint's run recorded")
    parser.add_argument("--check_limit", type=int, default=None,
                        help=f"at most this many photos per source (default: all of a folder, {DATASET_CHECK_LIMIT} "
                        "of a recorded test split, spread over it)")
    parser.add_argument("--attn_implementation", choices=EXPORTABLE_ATTENTION, default=None,
                        help="attention to export (default: the checkpoint's)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torch.onnx.export's TorchScript exporter (default) or dynamo")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest fp32 output difference accepted")
    parser.add_argument("--int8_min_agreement", type=float, default=0.99,
                        help="smallest share of images whose int8 top-1 must equal PyTorch's; below it, int8 is not "
                        "written (the fp32 model is) and the command exits with status 1")
    parser.add_argument("--calibration_images", default=None, metavar="DIR",
                        help="with --quantize: photos on which the layers kept in fp32 are chosen, or 'synthetic' "
                        "(the synthetic poses' validation split); default: the validation split of the data set the "
                        "checkpoint's run recorded")
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
        yield (f"int8{'' if int8['written'] else ' (not written)'}: {int8['layers'] - len(int8['fp32_layers'])} of "
               f"{int8['layers']} layers int8, {len(int8['fp32_layers'])} kept fp32 "
               f"({', '.join(int8['fp32_layers']) or 'none'}); chosen on {int8['calibration_images']} calibration "
               f"images ({int8['calibration_source']}): agreement {int8['calibration_agreement_all_int8']:.1%} "
               f"all-int8 -> {int8['calibration_agreement']:.1%}")


def main(argv: list[str] | None = None) -> int:
    """0: written as asked; 1: written without the int8 model, which fell short of --int8_min_agreement; 2: nothing
    written (a usage error, or fp32 does not match PyTorch)."""
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
        return USAGE_EXIT
    for line in summary_lines(results):
        print(line)
    sizes = ", ".join(f"{k} {v:.2f} MB" for k, v in results["megabytes"].items())
    print(f"wrote {args.output_dir} (outputs: {', '.join(results['outputs'])}; {sizes})")
    if results.get("int8", {}).get("written") is False:
        print(f"error: {int8_shortfall_message(results)}", file=sys.stderr)
        return EXIT_INT8_SHORT
    return 0


if __name__ == "__main__":
    sys.exit(main())
