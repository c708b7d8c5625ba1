"""What every front end shares between a photo and an answer, with no torch and no transformers.

- ``load_photo``: a path, URL or PIL image, upright and in RGB, as transformers' ``load_image`` (which the pipelines
  use) reads it, with a size limit and messages a person can act on (``PhotoError``).
- ``prepare_pixels``: ``pixel_values`` from a folder's ``preprocessor_config.json`` alone, pixel-equal to the image
  processor (tests/test_inference.py compares them on real photos of many sizes).
- ``HierarchicalClassifier``: what a classifier answers with, whatever runs the model: ``__call__`` takes what
  ``pipeline("hierarchical-image-classification")`` takes and returns its dicts (built by
  ``answers_vit_yoga.LabelTree``). ``vit_yoga.onnx_runtime`` runs an export with ONNX Runtime;
  ``vit_yoga.torch_runtime`` runs a checkpoint with its own code.

Imports numpy and Pillow only, so that a Space serving an export needs neither torch nor transformers.
"""

from __future__ import annotations

import io
import math
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from answers_vit_yoga import LabelTree, config_value

DEFAULT_MAX_MEGAPIXELS = 89.0  # Pillow's own decompression-bomb limit
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}  # what a folder of photos holds
RESULT_FILES = ("test_results.json", "all_results.json", "eval_results.json")  # what a run reports, in this order


class PhotoError(ValueError):
    """A photo that cannot be read; the message says why and what to do instead."""


# ------------------------------------------------------------------------------------------------- the photo


def load_photo(image: Any, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, timeout: float | None = 10.0
               ) -> Image.Image:
    """The photo upright and in RGB, as ``transformers.image_utils.load_image`` reads it (``PIL.Image.open``, EXIF
    orientation, RGB): ``image`` is a path, an http(s) URL or a PIL image. A photo larger than ``max_megapixels`` is
    refused from its header, before it is decoded. Raises ``PhotoError`` naming the problem."""
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    source = str(image)
    name = source.rsplit("/", 1)[-1] or source
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                opened: Any = io.BytesIO(response.read())
        except OSError as error:
            raise PhotoError(f"{source} could not be downloaded ({error}).") from None
    else:
        opened = Path(source)
        if not opened.is_file():
            raise PhotoError(f"{source} is not a file.")
    try:
        with Image.open(opened) as probe:  # the header only
            width, height = probe.size
    except Image.DecompressionBombError:
        raise PhotoError(f"{name} is too large to decode safely; resize it below {max_megapixels:g} megapixels.") \
            from None
    except (UnidentifiedImageError, OSError):
        raise PhotoError(f"{name} is not an image (or not a format Pillow reads); use a JPEG, PNG or WebP photo.") \
            from None
    if width * height > max_megapixels * 1e6:
        raise PhotoError(f"{name} is {width * height / 1e6:.1f} megapixels ({width}x{height}); photos up to "
                         f"{max_megapixels:g} megapixels are read: resize it (the model sees it at a few hundred "
                         "pixels anyway).")
    if isinstance(opened, io.BytesIO):
        opened.seek(0)
    try:
        with Image.open(opened) as photo:
            return ImageOps.exif_transpose(photo).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{name} could not be decoded ({error}): the file is damaged or truncated; try it again "
                         "or another photo.") from None


# ---------------------------------------------------------------------------------------- its pixel values

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


def preprocessing_problems(config: dict[str, Any]) -> list[str]:
    """What in a preprocessor_config.json ``prepare_pixels`` does not do (it does a ViT image processor's work:
    resize to a fixed size with BILINEAR or BICUBIC, rescale, normalise); empty when it does all of it."""
    size = config.get("size") or {}
    problems = []
    if config.get("do_resize", True) and not {"height", "width"} <= set(size):
        problems.append(f"size {size} (a fixed height and width is implemented)")
    if config.get("do_resize", True) and config.get("resample", 2) not in RESAMPLE_FILTERS:
        problems.append(f"resample {RESAMPLE_NAMES.get(config.get('resample'), config.get('resample'))} (BILINEAR "
                        "and BICUBIC are implemented)")
    if config.get("do_center_crop") or config.get("do_pad"):
        problems.append("a crop or padding")
    return problems


def prepare_pixels(photos: Sequence[Image.Image], config: dict[str, Any]) -> np.ndarray:
    """(batch, 3, height, width) float32 ``pixel_values`` from RGB photos, as the image processor prepares them
    (``ViTImageProcessor`` of transformers 5: torchvision resizes the uint8 image, then rescale and normalise are
    one float32 step), from preprocessor_config.json's numbers alone. The resize is torch's antialiased uint8
    kernel written out in numpy (``resize_like_torch``): Pillow's own resize rounds differently, a level of 255 on
    many pixels (0.008 after normalisation), while this one gives the processor's pixels exactly."""
    scale = float(config.get("rescale_factor", 1 / 255))
    mean = np.asarray(config.get("image_mean", [0.5] * 3), dtype=np.float32)
    std = np.asarray(config.get("image_std", [0.5] * 3), dtype=np.float32)
    batch = []
    for photo in photos:
        photo = photo if photo.mode == "RGB" else photo.convert("RGB")
        if config.get("do_resize", True):
            pixels = resize_like_torch(photo, config["size"]["height"], config["size"]["width"],
                                       config.get("resample", 2))
        else:
            pixels = np.asarray(photo)
        values = pixels.astype(np.float32)
        if config.get("do_rescale", True) and config.get("do_normalize", True):
            values = (values - mean * np.float32(1 / scale)) / (std * np.float32(1 / scale))  # the fused step
        elif config.get("do_rescale", True):
            values = values * np.float32(scale)
        elif config.get("do_normalize", True):
            values = (values - mean) / std
        batch.append(values.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch))


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


# ---------------------------------------------------------------------------------------------- the answer


class HierarchicalClassifier:
    """A model ready to answer, whatever runs it. A subclass sets ``tree`` (the ``LabelTree`` of the levels it
    predicts), ``name`` and ``info`` (``model_info``) and implements ``prepare`` (photos -> pixel values) and
    ``run_model`` (pixel values -> each level's tree-consistent probabilities, and with ``attentions=True`` every
    layer's attention weights, or None when the model cannot give them)."""

    tree: LabelTree
    name: str
    info: dict[str, Any]

    @property
    def levels(self) -> list[str]:
        return list(self.tree.levels)

    def prepare(self, photos: Sequence[Image.Image]) -> Any:
        raise NotImplementedError

    def run_model(self, pixel_values: Any, attentions: bool = False
                  ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        raise NotImplementedError

    def describe(self, probabilities: Sequence[np.ndarray], top_k: int = 5, decision: str = "probability"
                 ) -> list[dict[str, Any]]:
        return self.tree.describe(probabilities, top_k=top_k, decision=decision)

    def __call__(self, images: Any, top_k: int = 5, decision: str = "probability", batch_size: int = 32
                 ) -> dict[str, Any] | list[dict[str, Any]]:
        """What ``pipeline("hierarchical-image-classification")`` answers: a dict for one image (a path, URL or PIL
        image), a list of them for a list."""
        single = isinstance(images, (str, Path, Image.Image))
        batch = [images] if single else list(images)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(batch), batch_size):
            photos = [load_photo(image) for image in batch[start:start + batch_size]]
            probabilities, _ = self.run_model(self.prepare(photos))
            answers += self.describe(probabilities, top_k=top_k, decision=decision)
        return answers[0] if single else answers


def training_data(all_results: dict[str, Any] | None) -> str | None:
    """What a run trained on, in a few words, from its all_results.json (train.py records the data set as
    ``train_data`` and the number of training images as ``train_samples``): "real-photos (249 training images)"."""
    record = (all_results or {}).get("train_data")
    if not isinstance(record, dict):
        return None
    source = record.get("dataset_name") or record.get("train_dir")
    if source in (None, "synthetic"):
        what = "the built-in synthetic poses"
    else:
        what = Path(source).name if source.startswith("/") else source  # a folder by its name, a Hub id as it is
    count = (all_results or {}).get("train_samples")
    return f"{what} ({count} training images)" if count else what


def model_info(name: str, architecture: str, parameters: int | None, config: Any, levels: Sequence[str],
               reported: dict[str, Any] | None, runtime: str = "", data: str | None = None) -> dict[str, Any]:
    """What a person should know about the model they try: its name, size, training data (``training_data``) and
    the accuracy its run reported (``reported``: the metrics of one of ``RESULT_FILES``). ``config``: a ViTYoga config
    or config.json as a dict."""
    def read(name: str, default: Any = None) -> Any:  # a config object or config.json's dict
        return config_value(config, name, default)

    info: dict[str, Any] = {
        "name": name, "architecture": architecture, "runtime": runtime, "parameters": parameters,
        "image_size": read("image_size"), "patch_size": read("patch_size"), "layers": read("num_hidden_layers"),
        "hidden_size": read("hidden_size"), "stem": read("patch_embedding_type", "standard"), "levels": list(levels),
        "label_level": read("label_level"), "data": data,
    }
    if reported:
        split = "test" if any(key.startswith("test_") for key in reported) else "eval"
        info["split"] = split
        info["accuracy"] = {key[len(split) + 1:]: value for key, value in reported.items()
                            if key.startswith(f"{split}_") and key.endswith("accuracy")
                            and not isinstance(value, dict)}
    return info


__all__ = ["IMAGE_SUFFIXES", "HierarchicalClassifier", "PhotoError", "load_photo", "model_info", "prepare_pixels",
           "preprocessing_problems", "training_data"]
