"""The inference core (vit_yoga/inference.py, onnx_runtime.py, torch_runtime.py): one way from a photo to the answer.

The numpy preparation gives the image processor's pixels exactly; the ONNX Runtime runner answers with the
hierarchical pipeline's dicts (within 1e-4) without importing torch or transformers; the PyTorch runner answers with
the checkpoint's own code, equal to its pipeline; predict writes the same rows through either; the README's ONNX
example runs as printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, save_tiny_checkpoint
from PIL import Image

from vit_yoga.inference import PhotoError, load_photo, prepare_pixels
from yoga_common.errors import UsageError

REAL_PHOTOS = PROJECT_ROOT.parent / "shared" / "real-photos" / "images"
EXAMPLES = PROJECT_ROOT / "examples"


def preparation_photos() -> list[Path]:
    """The example photos, and five real web photos spread over the sizes when ../shared is there: from the smallest
    (126 x 160, enlarged to 224) to the largest (2322 x 2902)."""
    if not REAL_PHOTOS.is_dir():
        return sorted(EXAMPLES.glob("*.jpg"))

    def pixels(path: Path) -> tuple[int, str]:
        with Image.open(path) as image:  # the header only
            return image.width * image.height, path.name

    shared = sorted((p for p in REAL_PHOTOS.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}), key=pixels)
    return sorted(EXAMPLES.glob("*.jpg")) + [shared[round(q * (len(shared) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]


def labels_of(answer: dict) -> list:
    return [[c["label"] for c in classes] for classes in answer["levels"].values()] + [
        [node["label"] for node in answer["path"]]]


def scores_of(answer: dict) -> list[float]:
    return [c["score"] for classes in answer["levels"].values() for c in classes] + [
        node["score"] for node in answer["path"]] + [answer["path_score"]]


# ------------------------------------------------------------------------------------------------ the photo


@pytest.mark.parametrize(("height", "width", "resample"), [(32, 32, 2), (224, 224, 2), (64, 48, 3)])
def test_preparation_gives_the_image_processors_pixels(height, width, resample):
    """prepare_pixels (Pillow and numpy, from preprocessor_config.json alone) against transformers' ViTImageProcessor
    on real photos of many sizes, enlarged and shrunk: the same float32 pixels (Pillow's own resize would be off by
    0.008 on most photos)."""
    from transformers import ViTImageProcessor
    from transformers.image_utils import load_image

    processor = ViTImageProcessor(size={"height": height, "width": width}, resample=resample,
                                  image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    config = processor.to_dict()
    for photo_path in preparation_photos():
        photo = load_photo(photo_path)
        assert np.array_equal(np.asarray(photo), np.asarray(load_image(str(photo_path)))), photo_path.name
        expected = processor(images=photo, return_tensors="np")["pixel_values"]
        got = prepare_pixels([photo], config)
        assert got.shape == expected.shape == (1, 3, height, width) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected, err_msg=photo_path.name)


def test_unreadable_photos_are_refused_with_what_to_do(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n" * 20)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES / "warrior_ii.jpg").read_bytes()[:3000])
    huge = tmp_path / "huge.png"  # 40 megapixels, a few kB: a bilevel PNG of one colour
    Image.new("1", (8000, 5000)).save(huge)
    for path, words in ((text, "is not an image"), (truncated, "damaged or truncated"),
                        (tmp_path / "missing.jpg", "is not a file")):
        with pytest.raises(PhotoError, match=words):
            load_photo(path)
    with pytest.raises(PhotoError, match="40.0 megapixels"):
        load_photo(huge, max_megapixels=32)
    rotated = tmp_path / "rotated.jpg"  # EXIF orientation 6: the camera was turned; the photo is shown upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 20), "red").save(rotated, exif=exif)
    assert load_photo(rotated).size == (20, 60) and load_photo(rotated).mode == "RGB"


# ------------------------------------------------------------------------------------------------ the runners


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained joint checkpoint (every level), with the test results a trained run writes."""
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("inference") / "joint", seed=3)
    (folder / "test_results.json").write_text(json.dumps({"test_label_6_accuracy": 0.9, "test_loss": 1.0}))
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="the ONNX runner needs onnxruntime: pip install -e '.[onnx]'")
    pytest.importorskip("onnx", reason="the ONNX export needs onnx: pip install -e '.[onnx]'")
    from vit_yoga.export import export_onnx

    folder = tmp_path_factory.mktemp("inference") / "onnx"
    export_onnx(checkpoint, folder, check_images=[EXAMPLES], attention_maps=True)
    return folder


def runner_photos() -> list[str]:
    photos = preparation_photos()
    return [str(p) for p in photos]


def test_the_onnx_runner_answers_as_the_hierarchical_pipeline(checkpoint, exported):
    """Every class of every level (top_k 82), both decisions, one photo and batches of 3: the pipeline's labels in
    its order, its probabilities within 1e-4, on the examples and real web photos of many sizes."""
    from transformers import pipeline

    from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier

    files = runner_photos()
    classify = pipeline("hierarchical-image-classification", model=str(checkpoint), trust_remote_code=True)
    runner = OnnxHierarchicalClassifier(exported)
    assert runner.levels == ["label_6", "label_20", "label_82"] and runner.has_attention_maps
    for decision in ("probability", "risk"):
        expected = classify(files, top_k=82, decision=decision)
        got = runner(files, top_k=82, decision=decision, batch_size=3)
        assert len(got) == len(expected) == len(files)
        for answer, reference, name in zip(got, expected, files, strict=True):
            assert [n["label"] for n in answer["path"]] == [n["label"] for n in reference["path"]], name
            for level, classes in reference["levels"].items():
                want = {c["label"]: c["score"] for c in classes}
                have = {c["label"]: c["score"] for c in answer["levels"][level]}
                assert have.keys() == want.keys()
                assert max(abs(have[k] - want[k]) for k in want) <= 1e-4, (name, level)
            assert answer["path_score"] == pytest.approx(reference["path_score"], abs=1e-4)
    single = runner(files[0], top_k=2)
    assert labels_of(single) == labels_of(classify(files[0], top_k=2))
    assert runner.info["runtime"] == "ONNX Runtime" and runner.info["accuracy"] == {"label_6_accuracy": 0.9}


@pytest.mark.slow  # another export
def test_a_one_head_model_answers_its_level_and_those_above_as_its_pipeline(tmp_path):
    from transformers import pipeline

    from vit_yoga.export import export_onnx
    from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier

    checkpoint = save_tiny_checkpoint(tmp_path / "label_20", label_level="label_20", seed=5)
    export_onnx(checkpoint, tmp_path / "onnx", check_images=[EXAMPLES])
    files = runner_photos()[:4]
    runner = OnnxHierarchicalClassifier(tmp_path / "onnx")
    assert runner.levels == ["label_6", "label_20"]
    expected = pipeline("hierarchical-image-classification", model=str(checkpoint), trust_remote_code=True)(
        files, top_k=20, decision="risk")
    for answer, reference in zip(runner(files, top_k=20, decision="risk"), expected, strict=True):
        assert labels_of(answer) == labels_of(reference)
        assert scores_of(answer) == pytest.approx(scores_of(reference), abs=1e-4)


def test_the_pytorch_runner_is_the_checkpoints_pipeline(checkpoint):
    """The checkpoint's own code answers: the same dicts as its pipeline, to the last digit photo by photo (the
    pipeline's batch of 1); in batches, to float rounding."""
    from transformers import pipeline

    from vit_yoga.torch_runtime import load_checkpoint_classifier

    files = runner_photos()[:4]
    classify = pipeline("hierarchical-image-classification", model=str(checkpoint), trust_remote_code=True)
    runner = load_checkpoint_classifier(str(checkpoint), device="cpu")
    for decision in ("probability", "risk"):
        expected = classify(files, top_k=5, decision=decision)
        assert runner(files, top_k=5, decision=decision, batch_size=1) == expected
        for answer, reference in zip(runner(files, top_k=5, decision=decision, batch_size=4), expected, strict=True):
            assert labels_of(answer) == labels_of(reference)
            assert scores_of(answer) == pytest.approx(scores_of(reference), abs=1e-5)
    assert runner.info["parameters"] == 59_976 and runner.info["split"] == "test"


def test_a_folder_that_is_no_model_or_has_no_int8_graph_is_refused(tmp_path, exported):
    from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier
    from vit_yoga.torch_runtime import load_checkpoint_classifier

    with pytest.raises(UsageError, match="python -m vit_yoga.export"):
        OnnxHierarchicalClassifier(tmp_path)
    with pytest.raises(UsageError, match="--quantize dynamic"):
        OnnxHierarchicalClassifier(exported, int8=True)  # exported without --quantize
    with pytest.raises(UsageError, match="train.py output folder or a Hub model id"):
        load_checkpoint_classifier(str(tmp_path))


TORCH_FREE = """
import json, sys
from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier
answer = OnnxHierarchicalClassifier(sys.argv[1])(sys.argv[2], top_k=3)
loaded = sorted({"torch", "transformers"} & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"loaded": loaded, "answer": answer}))
"""


def test_the_onnx_runner_imports_neither_torch_nor_transformers(exported, tmp_path):
    """In a fresh process: loading the export and answering a photo leaves torch and transformers unimported, and
    gives the answer this process gets."""
    from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier

    photo = str(EXAMPLES / "tree_pose.jpg")
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(exported), photo], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["loaded"] == []
    expected = OnnxHierarchicalClassifier(exported)(photo, top_k=3)
    assert labels_of(printed["answer"]) == labels_of(expected)
    assert scores_of(printed["answer"]) == pytest.approx(scores_of(expected), abs=1e-6)


@pytest.mark.slow  # three predict runs and an int8 export
def test_predict_writes_the_same_rows_through_either_runner(checkpoint, tmp_path):
    from vit_yoga import predict
    from vit_yoga.export import export_onnx

    photos = tmp_path / "photos"
    shutil.copytree(EXAMPLES, photos, ignore=shutil.ignore_patterns("LICENSE", "*.md"))
    (photos / "broken.jpg").write_text("not a photo")
    onnx = tmp_path / "onnx"
    export_onnx(checkpoint, onnx, check_images=[photos], quantize="dynamic", int8_min_agreement=0.0,
                calibration_images=str(REAL_PHOTOS if REAL_PHOTOS.is_dir() else EXAMPLES), calibration_limit=16)
    rows = {}
    for backend, flags in {"torch": ["--model", str(checkpoint)], "onnx": ["--onnx", str(onnx)],
                           "int8": ["--onnx", str(onnx), "--int8"]}.items():
        output = tmp_path / f"{backend}.jsonl"
        assert predict.main([str(photos), *flags, "--output", str(output), "--num_workers", "0", "--top_k", "3",
                             "--batch_size", "3"]) == 0
        rows[backend] = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows["onnx"]) == len(rows["torch"]) == 5
    for got, expected in zip(rows["onnx"], rows["torch"], strict=True):
        assert got["file"] == expected["file"] and got["error"] == expected["error"]
        if expected["error"] is None:
            assert labels_of(got) == labels_of(expected)
            assert scores_of(got) == pytest.approx(scores_of(expected), abs=1e-4)
    assert [row["file"] for row in rows["int8"]] == [row["file"] for row in rows["torch"]]
    assert [row["error"] is not None for row in rows["torch"]] == [True, False, False, False, False]


def readme_example() -> str:
    """The README's ONNX Runtime example, exactly as printed there."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if "OnnxHierarchicalClassifier" in b]
    return block


@pytest.mark.slow
def test_the_readme_onnx_example_answers_without_torch(checkpoint, exported, tmp_path):
    """The README's example, in a fresh process (its folder names replaced by this test's), prints the pipeline's
    path and imports neither torch nor transformers."""
    from transformers import pipeline

    photo = str(EXAMPLES / "half_moon.jpg")
    code = readme_example().replace("runs/all-onnx", str(exported)).replace("photo.jpg", photo)
    guard = ("\nimport sys\nloaded = sorted({'torch', 'transformers'} & {n.split('.')[0] for n in sys.modules})\n"
             "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code + guard], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = pipeline("hierarchical-image-classification", model=str(checkpoint), trust_remote_code=True)(
        str(EXAMPLES / "half_moon.jpg"))
    for node in expected["path"]:
        assert node["label"] in result.stdout
