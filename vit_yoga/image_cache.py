"""Decode once: images much larger than the model needs, decoded and resized a single time into a cache that every
later epoch and every later run reads instead of the original files.

A web photo of several megapixels costs far more to decode than the few hundred pixels a side the model sees, and
training reads each image once per epoch (pretraining, several times per epoch). The cache is ``datasets``' own: a
``Dataset.map`` whose result datasets stores beside the data set's Arrow files under a fingerprint of its input, the
function and its arguments. What was verified with datasets 5.2 (``tests/test_image_cache.py`` pins it): a later
run with the same data reuses the stored result; for an image folder the data files' fingerprint includes each file's
modification time, so a changed file (new content, new mtime) makes a new fingerprint and the cache is rebuilt (the
whole split: the key is the split, not the file). A file rewritten with its old mtime kept is not noticed.
"""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import PIL
from PIL import Image
from transformers import TrainingArguments

from yoga82.images import shorter_side_size
from yoga_common.errors import UsageError

from .transforms import CROP_RATIO, open_image

logger = logging.getLogger(__name__)

DECODE_CACHE_MODES = ("auto", "off")
CACHED_SPLITS = ("train", "validation")
# "Much larger than needed": the sampled images hold more than this many times the pixels the cache keeps of them,
# i.e. more than 1.5x per side on average (weighted by area, as decoding time is: a few large photos among many
# small ones are most of the decoding work, which the median size would not show).
PIXEL_RATIO_THRESHOLD = 1.5**2
HEADER_SAMPLE = 256  # images whose headers are read to decide (a few milliseconds; enough for a stable estimate)
# Part of the cache's key: datasets fingerprints a module-level function by its name, not its code, so a change to
# what is stored (or to Pillow's resampling) must change an argument instead.
CACHE_FORMAT = 1
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 encodes 3-4x faster than 6 for files 10% larger


def cache_size(image_size: int) -> int:
    """The shorter side the cache keeps: 256 px (what ``python -m yoga82 prepare`` stores), or 8/7 of the model's
    size for models larger than 224 px, so that random crops still cut from more pixels than they keep."""
    return max(256, round(image_size * CROP_RATIO))


def decode_once(
    dataset: datasets.DatasetDict,
    image_column: str,
    image_size: int,
    training_args: TrainingArguments,
    mode: str = "auto",
    *,
    splits: Sequence[str] = CACHED_SPLITS,
) -> datasets.DatasetDict:
    """``dataset`` with the images of ``splits`` (default: train and validation) decoded and resized once, when
    ``mode`` is "auto" and a sample of their headers shows images much larger than the model needs; "off" returns it
    unchanged. Logs one line saying what it did and where the cache lives, or why it did nothing.

    In a cached split, each image whose shorter side exceeds ``cache_size(image_size)`` is stored as the lossless PNG
    of what a fresh read gives (``vit_yoga.transforms.open_image``: EXIF orientation applied, RGB, as transformers'
    ``load_image``; JPEGs decoded in draft mode at that size), resized to that shorter side as ``python -m yoga82
    prepare`` resizes (bicubic); smaller images are kept as they are, byte for byte. The image column keeps its
    feature (a decoding ``Image`` stays one). The test split is left out by default: it is read once, at the end,
    where a cache saves nothing, and read from the original files its accuracy is what ``pipeline()`` users get.
    The main process builds the cache first; the others then find it (``training_args.main_process_first``).
    """
    if mode not in DECODE_CACHE_MODES:
        raise ValueError(f"decode_once mode {mode!r} is unknown; choose one of {DECODE_CACHE_MODES}.")
    size = cache_size(image_size)
    present = [split for split in splits if split in dataset]
    if mode == "off" or not present:
        logger.info("Decode once: off; the images are decoded from the data set at every read." if present else
                    f"Decode once: nothing to do (no {' or '.join(splits)} split).")
        return dataset
    if not isinstance(dataset[present[0]].features.get(image_column), datasets.Image):
        logger.info(f"Decode once: nothing to do ({image_column!r} is not an Image column).")
        return dataset
    ratios = {split: pixel_ratio(dataset[split], image_column, size) for split in present}
    chosen = [split for split in present if ratios[split] > PIXEL_RATIO_THRESHOLD]
    measured = ", ".join(f"{split} {ratio:.1f}x" for split, ratio in ratios.items())
    if not chosen:
        logger.info(f"Decode once: not needed; the images hold at most {PIXEL_RATIO_THRESHOLD:.2f}x the pixels of a "
                    f"{size} px shorter side ({measured}, from sampled headers), so they are decoded from the data "
                    "set at every read.")
        return dataset

    result = datasets.DatasetDict(dataset)
    folders, built = set(), False
    with training_args.main_process_first(desc="decode once"):
        for split in chosen:
            before = _cache_listing(dataset[split])
            result[split] = _cached_split(dataset[split], image_column, size)
            files = [Path(f["filename"]) for f in result[split].cache_files]
            folders.update(str(f.parent) for f in files)
            built = built or not files or any(f.name not in before for f in files)
    if not folders or not datasets.is_caching_enabled():
        where = "kept in memory for this run only (the data set has no cache folder, or datasets' caching is off)"
    else:
        megabytes = sum(os.path.getsize(f["filename"]) for s in chosen for f in result[s].cache_files) / 2**20
        where = (f"in {', '.join(sorted(folders))} ({megabytes:.0f} MB, {'built now' if built else 'reused'}; rebuilt "
                 "when the data files change)")
    left = [split for split in dataset if split not in chosen]
    logger.info(f"Decode once: {_and(chosen)} images larger than a {size} px shorter side are read resized to it, "
                f"as lossless PNGs {where}; sampled headers: {measured} the pixels kept."
                + (f" {_and(left).capitalize()} images are read as they are." if left else ""))
    return result


def pixel_ratio(split: datasets.Dataset, image_column: str, size: int, sample: int = HEADER_SAMPLE) -> float:
    """How many times the pixels of a sample of the split's images exceed those the cache would keep (each image's
    shorter side brought down to ``size``, never up). Reads image headers only: no pixel is decoded."""
    if len(split) == 0:
        return 1.0
    rows = sorted(random.Random(0).sample(range(len(split)), min(sample, len(split))))
    records = split.select(rows).cast_column(image_column, datasets.Image(decode=False))[image_column]
    pixels = kept = 0
    for record in records:
        try:
            with Image.open(_source(record)) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError):  # an unreadable file is training's to report, not the sample's
            continue
        pixels += width * height
        kept += width * height * min(1.0, size / min(width, height)) ** 2
    return pixels / kept if kept else 1.0


def _cached_split(split: datasets.Dataset, image_column: str, size: int) -> datasets.Dataset:
    feature = split.features[image_column]
    undecoded = split.cast_column(image_column, datasets.Image(decode=False))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Worker processes pay off only on many images; the count is part of the cache files' names, so it depends on
    # the data and the machine only.
    workers = min(cpus, 8, len(split) // 500)
    cached = undecoded.map(
        _resize_batch, batched=True, batch_size=16, writer_batch_size=64, input_columns=[image_column],
        fn_kwargs={"image_column": image_column, "size": size, "cache_format": CACHE_FORMAT,
                   "pillow": PIL.__version__},
        num_proc=workers if workers > 1 else None, desc=f"Decode once: resizing to a {size} px shorter side",
    )
    return cached.cast_column(image_column, feature)


def _resize_batch(images: list[dict[str, Any]], image_column: str, size: int, cache_format: int,
                  pillow: str) -> dict[str, list[dict[str, Any]]]:
    """``Dataset.map`` function (``cache_format`` and ``pillow`` only key the cache)."""
    return {image_column: [resized_record(record, size) for record in images]}


def resized_record(record: dict[str, Any], size: int) -> dict[str, Any]:
    """An ``Image(decode=False)`` record as the cache stores it: the image read upright in RGB and resized to a
    ``size`` px shorter side, as PNG bytes (the original path kept for reference); the record itself when the image
    is no larger than that."""
    try:
        with Image.open(_source(record)) as header:
            small = min(header.size) <= size
        if small:
            return record
        image = open_image(record, draft_size=size)
        image = image.resize(shorter_side_size(image.size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UsageError(f"{record.get('path') or 'an image of the data set'} cannot be read as an image ({error}); "
                         "remove or replace it.") from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"bytes": buffer.getvalue(), "path": record.get("path")}


def _source(record: dict[str, Any]) -> io.BytesIO | str:
    return io.BytesIO(record["bytes"]) if record.get("bytes") is not None else record["path"]


def _cache_listing(split: datasets.Dataset) -> set[str]:
    folders = {Path(f["filename"]).parent for f in split.cache_files}
    return {path.name for folder in folders if folder.is_dir() for path in folder.iterdir()}


def _and(names: Sequence[str]) -> str:
    names = list(names)
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else (names[0] if names else "no")
