"""Decode once (vit_yoga.image_cache): images much larger than the model needs are decoded and resized a single time
into a cache; it holds exactly what a fresh read of the file gives, later runs reuse it, a changed file is read again,
and small images (or --decode_cache off) are left as they are."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import TrainingArguments

from vit_yoga import image_cache
from vit_yoga.arguments import parse_arguments
from vit_yoga.image_cache import decode_once, pixel_ratio

IMAGE_SIZE = 64  # vit-pico's: the cache keeps a 256 px shorter side


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus noise, so that resampling and decoding differences show, as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(9 * x + seed), np.cos(7 * y - seed), np.sin(5 * (x + y))], axis=-1)
    return Image.fromarray((127 + 100 * base + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8))


def write_large(folder: Path, seed: int = 0) -> dict[str, Path]:
    """A 1200x900 JPEG taken sideways (EXIF orientation 6: upright it is 900x1200), a 1200x900 PNG and a small JPEG."""
    (folder / "crane").mkdir(parents=True)
    (folder / "tree").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {"rotated": folder / "crane" / "rotated.jpg", "png": folder / "tree" / "large.png",
             "small": folder / "tree" / "small.jpg"}
    photo(1200, 900, seed).save(files["rotated"], exif=exif.tobytes(), quality=92)
    photo(1200, 900, seed + 1).save(files["png"])
    photo(120, 90, seed + 2).save(files["small"], quality=92)
    return files


def write_small(folder: Path) -> None:
    for label, seed in (("crane", 0), ("tree", 1)):
        (folder / label).mkdir(parents=True)
        photo(64, 48, seed).save(folder / label / "a.jpg")
        photo(300, 200, seed).save(folder / label / "b.png")


def load(folder: Path, cache: Path, test_folder: Path | None = None) -> datasets.DatasetDict:
    """What train.py's --train_dir [--test_dir] loads (datasets' imagefolder), with its Arrow cache under ``cache``."""
    data_files = {"train": str(folder / "**")}
    if test_folder:
        data_files["test"] = str(test_folder / "**")
    return datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=str(cache))


def fresh_read(path: Path) -> np.ndarray:
    """Independently of the cache's code: what a read of the file gives (a JPEG in draft mode at the cache's size),
    upright (EXIF orientation applied) in RGB, resized to a 256 px shorter side as `python -m yoga82 prepare` does."""
    image = Image.open(path)
    if image.format == "JPEG":
        image.draft("RGB", (256, 256))
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    size = (256, round(height * 256 / width)) if width <= height else (round(width * 256 / height), 256)
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


@pytest.fixture(scope="module")
def training_args(tmp_path_factory) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path_factory.mktemp("out")), report_to="none")


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every image the cache decodes (datasets' map runs in this process for a few images)."""
    decoded: list[str] = []
    original = image_cache.open_image

    def counting(record, *args, **kwargs):
        decoded.append(record["path"])
        return original(record, *args, **kwargs)

    monkeypatch.setattr(image_cache, "open_image", counting)
    return decoded


def rows_by_file(split: datasets.Dataset) -> dict[str, dict]:
    records = split.cast_column("image", datasets.Image(decode=False))["image"]
    return {Path(record["path"]).name: record for record in records}


def test_the_cache_holds_what_a_fresh_read_of_each_file_gives(tmp_path, training_args, reads, caplog):
    files = write_large(tmp_path / "images")
    write_large(tmp_path / "test-images", seed=10)
    dataset = load(tmp_path / "images", tmp_path / "hf", test_folder=tmp_path / "test-images")
    dataset["validation"] = dataset["train"]
    with caplog.at_level(logging.INFO, logger="vit_yoga.image_cache"):
        cached = decode_once(dataset, "image", IMAGE_SIZE, training_args)

    stored = rows_by_file(cached["train"])
    for name in ("rotated", "png"):
        record = stored[files[name].name]
        assert record["bytes"][:8] == b"\x89PNG\r\n\x1a\n", name  # lossless
        assert record["path"] == str(files[name])
        pixels = np.asarray(Image.open(io.BytesIO(record["bytes"])))
        expected = fresh_read(files[name])
        assert pixels.shape == expected.shape == ((341, 256, 3) if name == "rotated" else (256, 341, 3)), name
        np.testing.assert_array_equal(pixels, expected, err_msg=name)
    # The small image is kept as it is (a reference to the file), not re-encoded.
    assert stored["small.jpg"] == {"bytes": None, "path": str(files["small"])}
    # Decoded once: validation (the same rows here) finds what train stored.
    assert sorted(Path(p).name for p in reads) == ["large.png", "rotated.jpg"]

    # The split keeps its decoding Image feature; the test split is read from the files (not a cache).
    assert cached["train"].features["image"] == datasets.Image()
    assert cached["train"][0]["image"].mode == "RGB"
    assert cached["test"] is dataset["test"]  # read once, at the end, as pipeline() users read the files
    folder = Path(cached["train"].cache_files[0]["filename"]).parent
    assert folder.is_relative_to(tmp_path / "hf")
    assert any(str(folder) in r.message and "built now" in r.message for r in caplog.records), caplog.text


def test_a_later_run_reuses_the_cache_and_a_changed_file_is_read_again(tmp_path, training_args, reads, caplog):
    files = write_large(tmp_path / "images")
    first = decode_once(load(tmp_path / "images", tmp_path / "hf"), "image", IMAGE_SIZE, training_args)
    assert len(reads) == 2

    # A later run: the same files, loaded afresh. Nothing is decoded; the same cache files are read.
    reads.clear()
    with caplog.at_level(logging.INFO, logger="vit_yoga.image_cache"):
        again = decode_once(load(tmp_path / "images", tmp_path / "hf"), "image", IMAGE_SIZE, training_args)
    assert reads == []
    assert again["train"].cache_files == first["train"].cache_files
    assert "reused" in caplog.text
    np.testing.assert_array_equal(np.asarray(again["train"][0]["image"]), np.asarray(first["train"][0]["image"]))

    # The PNG gets new content (and so a new modification time): the next run reads it again.
    reads.clear()
    photo(1200, 900, seed=7).save(files["png"])
    stat = files["png"].stat()
    os.utime(files["png"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # whatever the clock's grain
    changed = decode_once(load(tmp_path / "images", tmp_path / "hf"), "image", IMAGE_SIZE, training_args)
    assert str(files["png"]) in reads
    record = rows_by_file(changed["train"])[files["png"].name]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["bytes"]))), fresh_read(files["png"]))


def test_small_images_are_left_as_they_are(tmp_path, training_args, reads, caplog):
    write_small(tmp_path / "images")
    dataset = load(tmp_path / "images", tmp_path / "hf")
    with caplog.at_level(logging.INFO, logger="vit_yoga.image_cache"):
        result = decode_once(dataset, "image", IMAGE_SIZE, training_args)
    assert result["train"] is dataset["train"]
    assert reads == []
    assert "not needed" in caplog.text


def test_decode_cache_off_leaves_large_images_as_they_are(tmp_path, training_args, reads, caplog):
    write_large(tmp_path / "images")
    assert parse_arguments([]).data.decode_cache == "auto"
    data_args = parse_arguments(["--train_dir", str(tmp_path / "images"), "--decode_cache", "off"]).data
    dataset = load(tmp_path / "images", tmp_path / "hf")
    with caplog.at_level(logging.INFO, logger="vit_yoga.image_cache"):
        result = decode_once(dataset, "image", IMAGE_SIZE, training_args, mode=data_args.decode_cache)
    assert result["train"] is dataset["train"]
    assert reads == []
    assert "Decode once: off" in caplog.text
    with pytest.raises(ValueError, match="'on' is unknown"):
        decode_once(dataset, "image", IMAGE_SIZE, training_args, mode="on")


def test_multi_megapixel_images_are_detected_from_their_headers_alone(monkeypatch):
    """A 12-megapixel JPEG and PNG cut after their first 2 KB: their headers say how large they are; decoding them
    would fail. The decision reads headers only."""
    def cut(image_format: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (4000, 3000), (90, 120, 200)).save(buffer, format=image_format)
        return buffer.getvalue()[:2048]

    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": cut("JPEG"), "path": None}, {"bytes": cut("PNG"), "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    # 12 megapixels against the 256 x 341 the cache would keep of each.
    assert pixel_ratio(split, "image", 256) == pytest.approx(4000 * 3000 / (341.33 * 256), rel=1e-3)
    assert pixel_ratio(split, "image", 3000) == 1.0
