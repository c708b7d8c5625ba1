"""app.py, the demo: attention rollout, reading photos, the answer, the Space it writes, the same answers from an ONNX
export without torch (--onnx); then the page itself in a real headless Chromium and through gradio_client (slow: one
app launch for the module)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, load_script
from PIL import Image

import yoga82

app = load_script("app.py")
HIERARCHY = yoga82.hierarchy()
LEVELS = HIERARCHY["hierarchy_levels"]
NAMES = dict(zip(LEVELS, HIERARCHY["hierarchy_class_names"], strict=True))
REAL_PHOTOS = PROJECT_ROOT.parent / "shared" / "real-photos" / "images"
EXAMPLES = PROJECT_ROOT / "examples"


def real_photo() -> Path:
    """A full-size web photo when ../shared is there (a user's clone has the small examples only)."""
    shared = REAL_PHOTOS / "Warrior_II_Pose_or_Virabhadrasana_II_" / "006c55122633.jpg"
    return shared if shared.is_file() else PROJECT_ROOT / "examples" / "warrior_ii.jpg"


def bad_photos(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files a person may drop that are not usable photos, and the words the page must answer with."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.jpg"
    text.write_text("not a photo\n" * 20)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(real_photo().read_bytes()[:3000])
    huge = folder / "huge.png"  # 40 megapixels, a few kB: a bilevel PNG of one colour
    Image.new("1", (8000, 5000)).save(huge)
    return {"text": (text, "is not an image"), "truncated": (truncated, "damaged or truncated"),
            "huge": (huge, "40.0 megapixels")}


def assert_path_in_tree(path: list[tuple[str, str]]) -> None:
    """(level, name) pairs, coarsest first: every name is a class of its level and each is the child of the one
    before it."""
    assert [level for level, _ in path] == LEVELS
    ids = [NAMES[level].index(name) for level, name in path]
    for depth in range(1, len(ids)):
        assert HIERARCHY["hierarchy_parents"][depth - 1][ids[depth]] == ids[depth - 1], path


# ------------------------------------------------------------------------------------------- attention rollout


def test_rollout_of_uniform_attention_is_uniform_over_patches():
    """L layers of uniform attention over T tokens: each is 0.5 I + 0.5 U (U = all 1/T, U @ U = U), so the product is
    0.5^L I + (1 - 0.5^L) U and every patch gets (1 - 0.5^L) / T."""
    tokens, layers = 5, 3
    uniform = np.full((2, 3, tokens, tokens), 1 / tokens, dtype=np.float32)  # (batch, heads, tokens, tokens)
    rollout = app["attention_rollout"]([uniform] * layers)
    assert rollout.shape == (2, tokens - 1) and rollout.dtype == np.float32
    np.testing.assert_allclose(rollout, np.full((2, tokens - 1), (1 - 0.5**layers) / tokens), rtol=1e-6)


def test_rollout_follows_attention_through_layers():
    """The class token attends only to patch 2 in the last layer, patch 2 attended only to patch 3 in the first: the
    rollout credits patch 3 (0.5 x 0.5) as much as patch 2, and no other patch."""
    tokens = 5
    first, last = np.eye(tokens, dtype=np.float32), np.eye(tokens, dtype=np.float32)
    first[2] = np.eye(tokens)[3]
    last[0] = np.eye(tokens)[2]
    rollout = app["attention_rollout"]([first[None, None], last[None, None]])[0]
    np.testing.assert_allclose(rollout, [0.0, 0.25, 0.25, 0.0], atol=1e-7)


def torch_rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """The rollout as app.py computed it in torch before the ONNX path existed: the reference for the numpy one."""
    row = None
    for layer in reversed(attentions):
        mixed = layer.float().mean(dim=1)
        mixed = residual * torch.eye(mixed.shape[-1]) + (1 - residual) * mixed
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        row = mixed[:, 0] if row is None else (row.unsqueeze(1) @ mixed).squeeze(1)
    return row[:, 1:]


def test_numpy_rollout_equals_the_torch_rollout():
    """12 layers of 3 heads over 65 tokens (vit-pico's), softmaxed random scores as torch tensors: the numpy rollout
    takes them as they come from the PyTorch model, and gives the torch computation's numbers."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 3, 65, 65, generator=generator).mul(3).softmax(-1) for _ in range(12)]
    np.testing.assert_allclose(app["attention_rollout"](maps), torch_rollout(maps).numpy(), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------------- the answer


@pytest.fixture(scope="module")
def classifier(tiny_checkpoint):
    return app["load_classifier"](str(tiny_checkpoint))


def test_demo_answers_as_the_hierarchical_pipeline_in_one_forward(classifier, tiny_checkpoint):
    """The page's numbers are the hierarchical pipeline's (the checkpoint's own code), and the attention map comes from
    the same forward: one model call per photo."""
    from transformers import pipeline

    calls = []
    hook = classifier.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        prediction, heat = classifier.answer(app["read_photo"](real_photo()))
    finally:
        hook.remove()
    assert len(calls) == 1
    expected = pipeline("hierarchical-image-classification", model=str(tiny_checkpoint), trust_remote_code=True)(
        str(real_photo()))
    assert [node["label"] for node in prediction["path"]] == [node["label"] for node in expected["path"]]
    for level in LEVELS:
        assert [c["label"] for c in prediction["levels"][level]] == [c["label"] for c in expected["levels"][level]]
        np.testing.assert_allclose([c["score"] for c in prediction["levels"][level]],
                                   [c["score"] for c in expected["levels"][level]], atol=1e-5)
    grid = classifier.model.config.image_size // classifier.model.config.patch_size
    assert heat.shape == (grid, grid) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)


def test_overlay_keeps_the_photos_shape_and_blends_by_opacity():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 900, 3), dtype=np.uint8))
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    plain, blended, heat_only = (app["overlay"](photo, heat, opacity) for opacity in (0.0, 0.5, 1.0))
    assert plain.size == (512, 171)  # the longest side shrunk to DISPLAY_SIZE, the aspect ratio kept
    shown = photo.resize(plain.size, Image.BICUBIC)
    assert np.abs(np.asarray(plain, float) - np.asarray(shown, float)).mean() < 8  # opacity 0: the photo
    middle = (np.asarray(plain, float) + np.asarray(heat_only, float)) / 2
    assert np.abs(np.asarray(blended, float) - middle).max() <= 1
    # the map's hot corner (bottom right) is brighter than its cold one once the photo is blended away
    assert np.asarray(heat_only)[-5:, -5:].mean() > np.asarray(heat_only)[:5, :5].mean() + 100


def test_unreadable_photos_get_a_message(tmp_path):
    for path, words in bad_photos(tmp_path).values():
        with pytest.raises(app["PhotoError"], match=words):
            app["read_photo"](path)
    photo = app["read_photo"](real_photo())
    assert photo.mode == "RGB"


def test_model_info_reports_the_runs_accuracy(tmp_path, tiny_checkpoint, classifier):
    assert "No accuracy reported" in app["describe_model"](classifier.info)
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "run")
    (folder / "test_results.json").write_text(json.dumps({  # as train.py writes a joint model's
        "test_accuracy": 0.755, "test_label_20_accuracy": 0.8, "test_label_20_top5_accuracy": 0.97,
        "test_label_6_accuracy": 0.9, "test_label_82_accuracy": 0.755, "test_label_82_implied_label_6_accuracy": 0.88,
        "test_loss": 1.0, "test_per_level": {"label_6": {"accuracy": 0.9}}}))
    text = app["describe_model"](app["load_classifier"](str(folder)).info)
    assert "test set: label_6 90.0%, label_20 80.0%, label_82 75.5%." in text and "60 k parameters" in text


# ----------------------------------------------------------------------------------------- choosing a model


def test_default_model_is_the_newest_finished_run(tmp_path, tiny_checkpoint):
    runs = tmp_path / "runs"
    with pytest.raises(app["DemoUsageError"], match="python train.py"):
        app["default_model"]([runs])
    old, new, unfinished = (shutil.copytree(tiny_checkpoint, runs / name) for name in ("old", "new", "unfinished"))
    for folder in (old, new):
        (folder / "all_results.json").write_text("{}")
    os.utime(old / "model.safetensors", (time.time() - 100, time.time() - 100))
    assert app["default_model"]([runs]) == str(new)
    os.utime(new / "model.safetensors", (time.time() - 200, time.time() - 200))
    assert app["default_model"]([runs]) == str(old)


def test_a_checkpoint_without_the_tree_api_is_refused_with_the_fix(tmp_path, tiny_checkpoint):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    (folder / "pipeline_vit_yoga.py").unlink()
    with pytest.raises(app["DemoUsageError"], match="save_hierarchical_pipeline"):
        app["load_classifier"](str(folder))


# ------------------------------------------------------------------------------------------------ the Space


def test_write_space_writes_a_space_that_serves_the_model(tmp_path, tiny_checkpoint):
    from huggingface_hub import SpaceCard

    space = tmp_path / "space"
    app["write_space"](str(tiny_checkpoint), space)
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert "gradio" in (space / "requirements.txt").read_text()
    assert (space / "examples" / "LICENSE").read_text().startswith("MIT License")
    assert len(list((space / "examples").glob("*.jpg"))) >= 3
    assert (space / "model" / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    # The Space's own app.py finds its model with no flag and answers.
    space_app = load_script_from(space / "app.py")
    served = space_app["load_classifier"](space_app["default_model"]())
    prediction, _ = served.answer(space_app["read_photo"](space / "examples" / "tree_pose.jpg"))
    assert [node["level"] for node in prediction["path"]] == LEVELS
    with pytest.raises(app["DemoUsageError"], match="overwrite"):
        app["write_space"](str(tiny_checkpoint), space)
    hub_space = app["write_space"]("someone/vit-yoga-all", tmp_path / "hub-space")
    assert (hub_space / "space_model.txt").read_text().strip() == "someone/vit-yoga-all"
    assert SpaceCard.load(hub_space / "README.md").data.models == ["someone/vit-yoga-all"]


def load_script_from(path: Path) -> dict:
    import runpy

    return runpy.run_path(str(path))


def test_app_imports_nothing_from_the_project_at_module_level():
    """A Space has app.py and the checkpoint only: app.py's imports are the libraries (yoga_common only inside
    write_space, which runs from a clone), and torch and transformers only inside the PyTorch path's functions (an
    ONNX Space has neither)."""
    tree = ast.parse((PROJECT_ROOT / "app.py").read_text())
    allowed = set(sys.stdlib_module_names) | {"numpy", "torch", "PIL", "transformers", "gradio", "huggingface_hub",
                                               "onnxruntime"}
    at_module_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not {(alias.name if isinstance(node, ast.Import) else node.module).split(".")[0]
                for node in at_module_level for alias in node.names} & {"torch", "transformers"}
    write_space = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "write_space")
    inside_write_space = {id(node) for node in ast.walk(write_space)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or (top == "yoga_common" and id(node) in inside_write_space), name


# ------------------------------------------------------------------------------------- the exported model (--onnx)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """The tiny joint checkpoint (with a test_results.json, as a trained run has) exported twice, once for the module:
    with attention maps ("maps") and without ("plain"); checked on the example photos."""
    pytest.importorskip("onnxruntime", reason="the ONNX path needs onnxruntime: pip install -e '.[onnx]'")
    pytest.importorskip("onnx", reason="the ONNX export needs onnx: pip install -e '.[onnx]'")
    from vit_yoga.export import export_onnx

    root = tmp_path_factory.mktemp("exports")
    checkpoint = shutil.copytree(tiny_checkpoint, root / "checkpoint")
    (checkpoint / "test_results.json").write_text(json.dumps({"test_label_6_accuracy": 0.9, "test_loss": 1.0}))
    for name, maps in (("maps", True), ("plain", False)):
        export_onnx(checkpoint, root / name, check_images=[EXAMPLES], attention_maps=maps)
    return {"maps": root / "maps", "plain": root / "plain"}


def probabilities_of(prediction: dict) -> dict[str, dict[str, float]]:
    return {level: {c["label"]: c["score"] for c in classes} for level, classes in prediction["levels"].items()}


def test_export_with_attention_maps_adds_every_layers_checked_against_pytorch(exports):
    labels = json.loads((exports["maps"] / "labels.json").read_text())
    assert labels["attention_maps"] == ["attentions_0", "attentions_1"]
    assert not set(labels["attention_maps"]) & set(labels["outputs"])  # "outputs" keeps to the levels' outputs
    assert json.loads((exports["plain"] / "labels.json").read_text())["attention_maps"] == []
    results = json.loads((exports["maps"] / "export_results.json").read_text())
    assert results["attn_implementation"] == "eager" and results["outputs"][-2:] == labels["attention_maps"]
    fp32 = results["checks"][str(EXAMPLES)]["fp32"]["max_abs_difference"]
    assert set(labels["attention_maps"]) <= set(fp32) and max(fp32.values()) <= 1e-4
    assert results["parameters"] == 59_976 and results["reported_results"]["file"] == "test_results.json"


def test_onnx_app_answers_as_the_pytorch_app(classifier, exports):
    """On every example photo: each level's probabilities (all of them) within 1e-4, the same path, the same rollout
    map within 1e-4; and the model line names the runtime and the accuracy the checkpoint's run reported."""
    onnx = app["OnnxClassifier"](exports["maps"])
    assert onnx.levels == classifier.levels and onnx.class_names == classifier.class_names and onnx.note == ""
    for photo_path in sorted(EXAMPLES.glob("*.jpg")):
        photo = app["read_photo"](photo_path)
        (expected, expected_heat), (got, heat) = classifier.answer(photo, top_k=100), onnx.answer(photo, top_k=100)
        expected_scores, scores = probabilities_of(expected), probabilities_of(got)
        for level in LEVELS:
            assert scores[level].keys() == expected_scores[level].keys() and len(scores[level]) == len(NAMES[level])
            assert max(abs(scores[level][k] - expected_scores[level][k]) for k in scores[level]) <= 1e-4, level
        assert [(n["level"], n["label"]) for n in got["path"]] == [(n["level"], n["label"]) for n in expected["path"]]
        assert [n["score"] for n in got["path"]] == pytest.approx([n["score"] for n in expected["path"]], abs=1e-4)
        assert got["path_score"] == pytest.approx(expected["path_score"], abs=1e-4)
        assert heat.shape == expected_heat.shape == (4, 4)
        np.testing.assert_allclose(heat, expected_heat, atol=1e-4, rtol=0, err_msg=photo_path.name)
        top5 = onnx.answer(photo)[0]  # the page's top 5, in the pipeline's order
        assert [[c["label"] for c in top5["levels"][level]] for level in LEVELS] == [
            [c["label"] for c in classes[:5]] for classes in expected["levels"].values()]
    text = app["describe_model"](onnx.info)
    assert "in ONNX Runtime, 60 k parameters" in text and "test set: label_6 90.0%" in text


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


@pytest.mark.parametrize(("height", "width", "resample"), [(32, 32, 2), (224, 224, 2), (64, 48, 3)])
def test_onnx_preparation_gives_the_image_processors_numbers(height, width, resample):
    """prepare_pixels (PIL and numpy, from preprocessor_config.json alone) against transformers' ViTImageProcessor
    on real photos: within 1e-4 (in fact equal: Pillow's own resize would be off by 0.008 on most photos)."""
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": height, "width": width}, resample=resample,
                                  image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    config = processor.to_dict()
    for photo_path in preparation_photos():
        photo = app["read_photo"](photo_path)
        expected = processor(images=photo, return_tensors="np")["pixel_values"]
        got = app["prepare_pixels"](photo, config)
        assert got.shape == expected.shape == (1, 3, height, width) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4, photo_path.name


ONNX_ONLY = """
import json, runpy, sys
app = runpy.run_path(sys.argv[1])
classifier = app["OnnxClassifier"](sys.argv[2])
photo = app["read_photo"](sys.argv[3])
prediction, heat = classifier.answer(photo)
app["overlay"](photo, heat, 0.5)
loaded = sorted({"torch", "transformers", "vit_yoga"} & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"loaded": loaded, "path": [node["label"] for node in prediction["path"]]}))
"""


def test_onnx_app_needs_neither_torch_nor_transformers(exports, tmp_path):
    """In a fresh process: building the ONNX classifier and answering a photo (map and overlay included) leaves torch
    and transformers unimported (Gradio imports neither)."""
    photo = EXAMPLES / "tree_pose.jpg"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", ONNX_ONLY, str(PROJECT_ROOT / "app.py"), str(exports["maps"]),
                             str(photo)], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == []
    expected = app["OnnxClassifier"](exports["maps"]).answer(app["read_photo"](photo))[0]
    assert answer["path"] == [node["label"] for node in expected["path"]]


def test_onnx_export_without_maps_answers_with_no_map_and_says_how_to_get_one(exports):
    plain, maps = app["OnnxClassifier"](exports["plain"]), app["OnnxClassifier"](exports["maps"])
    photo = app["read_photo"](EXAMPLES / "half_moon.jpg")
    prediction, heat = plain.answer(photo)
    assert heat is None
    with_maps = maps.answer(photo)[0]  # the same weights (sdpa here, eager there): the same answer, to float rounding
    assert [n["label"] for n in prediction["path"]] == [n["label"] for n in with_maps["path"]]
    for level, scores in probabilities_of(prediction).items():
        assert scores == pytest.approx(probabilities_of(with_maps)[level], abs=1e-5)
    assert "\n" not in plain.note and "No attention map" in plain.note
    assert "python -m vit_yoga.export" in plain.note and "--attention_maps" in plain.note


def test_onnx_folder_that_is_not_an_export_is_refused_before_gradio(exports, tmp_path, monkeypatch, capsys):
    """Exit 2 and one `error:` line naming the fix, before Gradio is even imported (here it cannot be)."""
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` would raise: main must return before it
    (tmp_path / "model.onnx").write_bytes(b"")  # a graph alone is no export
    cases = [(["--onnx", str(tmp_path)], "not an export of python -m vit_yoga.export (no config.json"),
             (["--onnx", str(tmp_path / "nowhere")], "is not a folder"),
             (["--onnx", str(exports["plain"]), "--int8"], "--quantize dynamic"),
             (["--onnx", str(exports["plain"]), "--model", "runs/all"], "not both"),
             (["--int8"], "with --onnx DIR")]
    for argv, words in cases:
        capsys.readouterr()
        assert app["main"](argv) == 2, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and words in error[0], (argv, error)
        if argv == ["--onnx", str(tmp_path)]:
            assert "--attention_maps" in error[0]  # the export command to run


def test_write_space_with_onnx_writes_a_space_without_torch(exports, tmp_path):
    space = app["write_space"](str(exports["maps"]), tmp_path / "space", onnx=True)
    requirements = (space / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "gradio" in requirements
    assert "torch" not in requirements and "transformers" not in requirements
    assert sorted(p.name for p in (space / "model").iterdir()) == sorted(
        ["model.onnx", "config.json", "preprocessor_config.json", "labels.json", "export_results.json"])
    assert not (space / "space_model.txt").exists()
    # The Space's own app.py finds its export with no flag and answers, map included.
    space_app = load_script_from(space / "app.py")
    folder, int8 = space_app["onnx_source"](space_app["parse_args"]([]))
    assert folder == space / "model" and not int8
    prediction, heat = space_app["OnnxClassifier"](folder).answer(space_app["read_photo"](EXAMPLES / "tree_pose.jpg"))
    assert [node["level"] for node in prediction["path"]] == LEVELS and heat is not None


# ------------------------------------------------------------------------------------- the page, for real


@pytest.mark.slow
def test_without_gradio_the_app_says_how_to_install_it(tmp_path):
    (tmp_path / "gradio.py").write_text("raise ImportError('No module named gradio')\n")
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "app.py"), "--model", "whatever"],
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert 'pip install -e ".[demo]"' in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, tiny_checkpoint):
    """app.py launched as a user launches it, on 127.0.0.1 and a free port; stopped after the module."""
    pytest.importorskip("gradio", reason="the demo's extra is not installed (pip install -e '.[demo]')")
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}  # the Gradio variable, as a user sets it
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--model", str(tiny_checkpoint),
                                    "--threads", "1"], env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"app.py did not serve {url}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless Chromium through its chromedriver (Selenium; nothing downloaded)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1300", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def upload(browser, url: str, photo: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))


def wait_for_text(browser, element_id: str, words: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda b: words in b.find_element(By.ID, element_id).text)
    return browser.find_element(By.ID, element_id).text


def parse_path(text: str) -> list[tuple[str, str]]:
    """'Most probable path: Standing (57.0%) → ...' -> [(level, name), ...] with the levels in order."""
    nodes = re.findall(r"(?:: | → )(.+?) \((\d+\.\d)%\)", text.replace("**", ""))  # the API gets Markdown
    return [(level, name) for level, (name, _) in zip(LEVELS, nodes, strict=True)]


@pytest.mark.slow
def test_page_shows_every_level_the_path_and_where_the_model_looks(served_app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    photo = real_photo()
    upload(browser, served_app, photo)
    path_text = wait_for_text(browser, "path", "Most probable path")
    assert_path_in_tree(parse_path(path_text))
    for level in LEVELS:
        block = browser.find_element(By.ID, f"level-{level}")
        assert f"{len(NAMES[level])} classes" in block.text
        rows = block.find_elements(By.CSS_SELECTOR, ".confidence-set")
        assert len(rows) == 5
        labels = [row.find_element(By.CSS_SELECTOR, "dt").text for row in rows]
        scores = [float(row.find_element(By.CSS_SELECTOR, "meter").get_attribute("value")) for row in rows]
        assert set(labels) <= set(NAMES[level])
        assert all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-6
        assert scores == sorted(scores, reverse=True)
    overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
    width, height = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay)
    photo_width, photo_height = app["read_photo"](photo).size
    assert width > 0 and abs(width / height - photo_width / photo_height) < 0.02
    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("VIT_YOGA_DEMO_SCREENSHOT"):  # how docs/demo.png is made
        shutil.copy(shot, os.environ["VIT_YOGA_DEMO_SCREENSHOT"])


@pytest.mark.slow
def test_page_says_what_is_wrong_with_a_bad_photo_and_keeps_serving(served_app, browser, tmp_path):
    for path, words in bad_photos(tmp_path).values():
        upload(browser, served_app, path)
        wait_for_text(browser, "message", words)
    upload(browser, served_app, PROJECT_ROOT / "examples" / "tree_pose.jpg")
    assert_path_in_tree(parse_path(wait_for_text(browser, "path", "Most probable path")))


@pytest.mark.slow
def test_api_through_gradio_client(served_app, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served_app, verbose=False)
    photo = real_photo()
    *labels, path_text, overlay_file, message, = client.predict(
        gradio_client.handle_file(str(photo)), 0.5, api_name="/classify")
    assert message == ""
    assert len(labels) == len(LEVELS)
    for level, label in zip(LEVELS, labels, strict=True):
        scores = [c["confidence"] for c in label["confidences"]]
        assert {c["label"] for c in label["confidences"]} <= set(NAMES[level]) and len(scores) == 5
        assert all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-6
    assert_path_in_tree(parse_path(path_text))
    photo_width, photo_height = app["read_photo"](photo).size
    with Image.open(overlay_file) as overlay:
        assert abs(overlay.width / overlay.height - photo_width / photo_height) < 0.02
    bad, words = bad_photos(tmp_path)["truncated"]
    *_, message = client.predict(gradio_client.handle_file(str(bad)), 0.5, api_name="/classify")
    assert words in message


@pytest.mark.slow
def test_bench_demo_smoke(tmp_path):
    """benchmarks/bench_demo.py at its tiniest: the in-process ways and the whole request through gradio_client."""
    pytest.importorskip("gradio_client")
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import bench_demo

    out = tmp_path / "bench.json"
    assert bench_demo.main(["--presets", "vit-pico", "--photos", "2", "--rounds", "1", "--threads", "1",
                            "--photo_dir", str(PROJECT_ROOT / "examples"), "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())["models"]["vit-pico"]
    assert len(numbers["milliseconds"]) == 6 and all(ms > 0 for ms in numbers["milliseconds"].values())
    assert "attention_map_extra_over_request" in numbers
