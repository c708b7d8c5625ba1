"""An export of ``python -m vit_yoga.export`` run by ONNX Runtime, answering as the hierarchical pipeline does.

    classify = OnnxHierarchicalClassifier("runs/all-onnx")        # int8=True for model_int8.onnx
    classify("pose.jpg", top_k=3)   # {"levels": {...}, "path": [...], "path_score": ...}, the dict
                                    # pipeline("hierarchical-image-classification") answers for the checkpoint

No torch and no transformers: numpy, Pillow and onnxruntime (``python -m vit_yoga.predict --onnx``, ``app.py
--onnx`` and the ONNX Space run on it). The graph computes each level's tree-consistent probabilities
(``probabilities_<level>``, the checkpoint's own ``tree_probabilities``) and, exported with ``--attention_maps``,
every layer's attention weights (``attentions_<i>``); the photo is prepared by ``vit_yoga.inference.prepare_pixels``
from the folder's ``preprocessor_config.json`` and the answer built by ``answers_vit_yoga.LabelTree``, the code the
pipeline uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from answers_vit_yoga import LabelTree
from yoga_common.errors import UsageError

from .inference import HierarchicalClassifier, model_info, prepare_pixels, preprocessing_problems

# The files of an export folder (python -m vit_yoga.export writes them, this module reads them).
INPUT_NAME = "pixel_values"
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
LABELS_FILE = "labels.json"
RESULTS_FILE = "export_results.json"
PROBABILITIES_PREFIX = "probabilities_"  # one output per predicted level, coarsest first
ATTENTION_PREFIX = "attentions_"  # --attention_maps: one output per layer, attentions_0 first
EXPORT_FILES = ("config.json", "preprocessor_config.json", LABELS_FILE, RESULTS_FILE)
ONNXRUNTIME_REQUIREMENT = "onnxruntime>=1.18"  # as setup.cfg's [onnx] extra
EXPORT_COMMAND = "python -m vit_yoga.export --model CHECKPOINT --output_dir DIR --attention_maps"


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session. ``spinning=False``: its threads sleep between runs instead of spinning (the
    default spins, which takes CPU from a server's other threads)."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"running an export needs ONNX Runtime: pip install '{ONNXRUNTIME_REQUIREMENT}' (or pip "
                         "install -e \".[onnx]\").") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_export(folder: str | Path, int8: bool = False) -> tuple[Path, dict[str, Any]]:
    """The graph file and the JSON files of an export (``{"config.json": {...}, ...}``); a folder that is not one
    raises ``UsageError`` naming the fix. Files only: cheap enough to check before anything slow is imported."""
    folder = Path(folder)
    fix = f"export a checkpoint with `{EXPORT_COMMAND}`"
    if not folder.is_dir():
        raise UsageError(f"--onnx {folder} is not a folder; {fix}.")
    model_file = folder / (INT8_FILE if int8 else MODEL_FILE)
    missing = [name for name in (model_file.name, *EXPORT_FILES[:3]) if not (folder / name).is_file()]
    if int8 and missing == [INT8_FILE]:
        try:
            int8_check = json.loads((folder / RESULTS_FILE).read_text()).get("int8") or {}
        except (OSError, ValueError):
            int8_check = {}
        if int8_check.get("written") is False:
            lowest = min(s["agreement"] for s in int8_check.get("shortfalls") or [{"agreement": 0.0}])
            raise UsageError(f"--onnx {folder} --int8: its int8 graph was not written, because it agreed with PyTorch "
                             f"on only {lowest:.1%} of the check images ({RESULTS_FILE}); drop --int8 to use "
                             f"{MODEL_FILE}, or export again with --int8_min_agreement or --calibration_images.")
        raise UsageError(f"--onnx {folder} --int8: the export has no {INT8_FILE}; export it with --quantize dynamic "
                         f"as well, or drop --int8 to use {MODEL_FILE}.")
    if missing:
        raise UsageError(f"--onnx {folder} is not an export of python -m vit_yoga.export (no {', '.join(missing)}); "
                         f"{fix}.")
    documents = {}
    for name in EXPORT_FILES:
        try:
            documents[name] = json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
        except (OSError, ValueError) as error:
            raise UsageError(f"--onnx {folder}: {name} cannot be read ({error}); export the checkpoint again into a "
                             "new folder.") from None
    problems = preprocessing_problems(documents["preprocessor_config.json"])
    if problems:
        raise UsageError(f"--onnx {folder}: its preprocessor_config.json asks for {'; '.join(problems)}, which "
                         "vit_yoga.inference.prepare_pixels does not reproduce; run the checkpoint with --model.")
    return model_file, documents


class OnnxHierarchicalClassifier(HierarchicalClassifier):
    """Classify photos with an export folder; ``__call__`` takes what the hierarchical pipeline takes.

    ``threads``: ONNX Runtime's intra-op threads (default: its own choice); ``spinning=False`` for a server."""

    def __init__(self, folder: str | Path, *, int8: bool = False, threads: int | None = None,
                 spinning: bool = True) -> None:
        self.folder = Path(folder)
        model_file, documents = read_export(self.folder, int8)
        self.config = documents["config.json"]
        self.preprocessing = documents["preprocessor_config.json"]
        try:
            self.session = ort_session(model_file, threads, spinning)
        except UsageError:
            raise
        except Exception as error:  # ONNX Runtime raises its own types for a damaged or foreign graph
            reason = (str(error).strip().splitlines() or [""])[0][:300]
            raise UsageError(f"--onnx {self.folder}: ONNX Runtime cannot load {model_file.name} "
                             f"({type(error).__name__}: {reason}); export the checkpoint again: {EXPORT_COMMAND}."
                             ) from None
        outputs = [output.name for output in self.session.get_outputs()]
        self.probability_outputs = [name for name in outputs if name.startswith(PROBABILITIES_PREFIX)]
        self.attention_outputs = [name for name in outputs if name.startswith(ATTENTION_PREFIX)]
        levels = [name.removeprefix(PROBABILITIES_PREFIX) for name in self.probability_outputs]
        self.tree = LabelTree.from_config(self.config, levels)
        self.name = str(folder).rstrip("/")
        results = documents[RESULTS_FILE]
        self.info = model_info(self.name, (self.config.get("architectures") or ["ViTYoga"])[0],
                               results.get("parameters"), self.config, levels,
                               (results.get("reported_results") or {}).get("metrics"),
                               runtime="ONNX Runtime, int8" if int8 else "ONNX Runtime",
                               data=results.get("training_data"))

    @property
    def has_attention_maps(self) -> bool:
        return bool(self.attention_outputs)

    def prepare(self, photos: Sequence[Any]) -> np.ndarray:
        return prepare_pixels(photos, self.preprocessing)

    def run_model(self, pixel_values: Any, attentions: bool = False
                  ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Each level's tree-consistent probabilities for a batch (coarsest first), computed by the graph, and with
        ``attentions`` every layer's attention weights (None for an export without them)."""
        names = self.probability_outputs + (self.attention_outputs if attentions else [])
        pixels = np.ascontiguousarray(np.asarray(pixel_values), dtype=np.float32)
        outputs = self.session.run(names, {INPUT_NAME: pixels})
        probabilities = list(outputs[:len(self.probability_outputs)])
        maps = list(outputs[len(self.probability_outputs):]) if attentions and self.attention_outputs else None
        return probabilities, maps


__all__ = ["OnnxHierarchicalClassifier", "ort_session", "read_export"]
