"""What train.py's evaluation computes is what users of the checkpoint get from pipeline("image-classification"), on
real-looking files: a large JPEG, an EXIF-rotated one, grayscale, CMYK, PNG with transparency, a palette GIF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from vit_yoga.transforms import EvaluationTransform, TrainingTransform

pytestmark = pytest.mark.slow  # the module's fixture trains a model end to end

train_main = load_script("train.py")["main"]
TINY = "image_size=32,patch_size=8,hidden_size=48,num_hidden_layers=2,num_attention_heads=3,intermediate_size=96"


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus noise: resampling differences show, as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(9 * x + seed), np.cos(7 * y - seed), np.sin(5 * (x + y))], axis=-1)
    pixels = (127 + 100 * base + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_images(folder: Path) -> dict[str, Path]:
    files = {}
    for label, seed in (("crane", 0), ("tree", 1)):
        (folder / label).mkdir(parents=True)
        big = photo(1600, 1200, seed)
        files[f"{label}/large.jpg"] = folder / label / "large.jpg"
        big.save(files[f"{label}/large.jpg"], quality=92)
        rotated = photo(300, 200, seed + 10)
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to view": a phone photo taken upright
        files[f"{label}/rotated.jpg"] = folder / label / "rotated.jpg"
        rotated.save(files[f"{label}/rotated.jpg"], exif=exif.tobytes(), quality=92)
        files[f"{label}/grey.jpg"] = folder / label / "grey.jpg"
        photo(240, 320, seed + 20).convert("L").save(files[f"{label}/grey.jpg"])
        files[f"{label}/cmyk.jpg"] = folder / label / "cmyk.jpg"
        photo(256, 256, seed + 30).convert("CMYK").save(files[f"{label}/cmyk.jpg"])
        rgba = photo(200, 150, seed + 40).convert("RGBA")
        rgba.putalpha(Image.fromarray((np.arange(200)[None, :].repeat(150, 0) % 256).astype(np.uint8)))
        files[f"{label}/alpha.png"] = folder / label / "alpha.png"
        rgba.save(files[f"{label}/alpha.png"])
        files[f"{label}/palette.gif"] = folder / label / "palette.gif"
        photo(120, 90, seed + 50).convert("P").save(files[f"{label}/palette.gif"])
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict[str, Path], dict]:
    root = tmp_path_factory.mktemp("parity")
    files = write_images(root / "images")
    out = root / "model"
    run = train_main(["--train_dir", str(root / "images"), "--validation_dir", str(root / "images"), "--test_dir",
                      str(root / "images"), "--label_column", "label", "--model_preset", "vit-pico",
                      "--config_overrides", TINY, "--max_steps", "2", "--per_device_train_batch_size", "4",
                      "--output_dir", str(out), "--dataloader_num_workers", "0", "--seed", "3",
                      "--rand_augment_ops", "1"])
    return root / "images", out, files, run


def evaluation_logits(run: dict) -> dict[str, torch.Tensor]:
    """Logits as train.py's own evaluation computes them: its trainer's predict (as evaluate_split calls it) on its
    test split, with the transform train.py set on that split; keyed by each row's file."""
    test = run["datasets"]["test"]
    prediction = run["trainer"].predict(test)
    records = test.with_format(None)["image"]  # the rows as stored (train.py reads the image column undecoded)
    names = ["/".join(Path(record["path"]).parts[-2:]) for record in records]
    return {name: torch.as_tensor(row) for name, row in zip(names, prediction.predictions, strict=True)}


def pipeline_logits(out: Path, files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Logits as users get them: pipeline("image-classification") on the files, raw scores for every label."""
    classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
    labels = [classify.model.config.id2label[i] for i in range(classify.model.config.num_labels)]
    logits = {}
    for name, path in files.items():
        scores = {p["label"]: p["score"] for p in classify(str(path), function_to_apply="none", top_k=None)}
        logits[name] = torch.tensor([scores[label] for label in labels])
    return logits


def test_evaluation_logits_equal_the_pipelines_image_for_image(trained):
    images, out, files, run = trained
    ours, theirs = evaluation_logits(run), pipeline_logits(out, files)
    assert set(ours) == set(theirs) == set(files)
    for name in files:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)
    # And the accuracy train.py reported is the pipeline's on the same images.
    results = json.loads((out / "test_results.json").read_text())
    names = json.loads((out / "config.json").read_text())["id2label"]
    hits = [names[str(int(theirs[name].argmax()))] == name.split("/")[0] for name in files]
    assert results["test_accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_training_decodes_upright_and_differs_from_serving_only_by_draft_mode(trained):
    """Training images are loaded upright too (EXIF applied). Their one difference from what serving sees, without
    augmentation, is JPEG draft-mode decoding (JPEGs at least twice the model's size are decoded at a reduced
    scale): at most a few of 255 levels per pixel, as the README states."""
    images, out, files, _ = trained
    processor = AutoImageProcessor.from_pretrained(out)
    train_view = TrainingTransform(32, processor.image_mean, processor.image_std)  # no augmentation
    serve_view = EvaluationTransform(processor)
    for name, path in files.items():
        record = {"bytes": path.read_bytes(), "path": None}
        levels = (train_view(record) - serve_view(record)).abs() * 255 * processor.image_std[0]  # in 0..255 levels
        if name.endswith(".jpg"):
            assert 0 < levels.mean() < 1.5 and levels.max() <= 4.01, (name, levels.mean(), levels.max())
        else:  # PNG and GIF have no draft mode: identical
            assert levels.max() < 1e-3, name
