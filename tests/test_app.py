"""app.py, the demo: attention rollout, the answer, the Spaces it writes (each run in a fresh process that cannot see
this repository), the same answers from an ONNX export (--onnx); then the page itself in a real headless Chromium and
through gradio_client (slow: one app launch for the module)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, load_script, save_checkpoint_as_train_py, save_tiny_checkpoint
from PIL import Image

import yoga82
from vit_yoga.inference import load_photo
from yoga82.labels import display_names
from yoga_common.errors import UsageError

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
    return app["load_served"](str(tiny_checkpoint), None)


def test_demo_answers_as_the_hierarchical_pipeline_in_one_forward(classifier, tiny_checkpoint):
    """The page's numbers are the hierarchical pipeline's (the checkpoint's own code), and the attention map comes from
    the same forward: one model call per photo."""
    from transformers import pipeline

    calls = []
    hook = classifier.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        prediction, heat = app["answer"](classifier, load_photo(real_photo()))
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


def test_model_info_reports_the_runs_accuracy(tmp_path, tiny_checkpoint, classifier):
    assert "No accuracy reported" in app["describe_model"](classifier.info)
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "run")
    (folder / "test_results.json").write_text(json.dumps({  # as train.py writes a joint model's
        "test_accuracy": 0.755, "test_label_20_accuracy": 0.8, "test_label_20_top5_accuracy": 0.97,
        "test_label_6_accuracy": 0.9, "test_label_82_accuracy": 0.755, "test_label_82_implied_label_6_accuracy": 0.88,
        "test_loss": 1.0, "test_per_level": {"label_6": {"accuracy": 0.9}}}))
    (folder / "all_results.json").write_text(json.dumps({"train_samples": 249, "train_data": {
        "dataset_name": str(tmp_path / "data" / "real-photos"), "train_dir": None}}))
    info = app["load_served"](str(folder), None).info
    text = app["describe_model"](info)
    assert "test set: body position 90.0%, variation 80.0%, pose 75.5%." in text and "60 k parameters" in text
    assert "**Trained on:** real-photos (249 training images)." in text and str(tmp_path) not in text
    assert app["model_title"](info) == "run"  # a folder by its name, never the path to it


def prediction_of(tree, finest: list[float], top_k: int = 5) -> dict:
    """The hierarchical answer of a model whose finest level has these probabilities (the coarse ones summed)."""
    probabilities = [np.asarray([finest], dtype=np.float64)]
    for parents, coarse in zip(reversed(tree.parents), reversed(tree.names[:-1]), strict=True):
        above = np.zeros((1, len(coarse)))
        np.add.at(above[0], list(parents), probabilities[0][0])
        probabilities.insert(0, above)
    return tree.describe(probabilities, top_k=top_k)[0]


def test_the_page_marks_the_path_in_every_level_even_outside_the_top_5(classifier):
    """Six poses of one variation at 10% each and one pose elsewhere at 14%: the path ends at the 14% pose, while its
    body position is not the most probable one. The headline is the path, each level marks the path's class (listed
    after the top 5 when it is not among them), and at 14% the page says the model is unsure."""
    tree = classifier.tree
    finest = np.full(82, 0.0)
    lonely = NAMES["label_82"].index("Tree_Pose_or_Vrksasana_")
    crowd = [i for i, parent in enumerate(HIERARCHY["hierarchy_parents"][1]) if parent == 13][:6]  # Reclining: up
    finest[crowd] = 0.1
    finest[lonely] = 0.14
    finest[[i for i in range(82) if i not in crowd and i != lonely]] = (1 - 0.74) / 75
    prediction = prediction_of(tree, list(finest))
    assert prediction["path"][-1]["label"] == "Tree_Pose_or_Vrksasana_"
    assert prediction["levels"]["label_6"][0]["label"] == "Reclining"  # the level's own top contradicts the path
    headline = app["headline"](prediction, tree)
    assert headline == "## Standing › Standing: straight › Tree Pose (Vrksasana), 14%"
    for node in prediction["path"]:
        html = app["level_html"](node["level"], prediction["levels"][node["level"]], node, tree, 82)
        marked = re.findall(r'class="on-path" data-label="([^"]+)"', html)
        assert marked == [node["label"]], node
        assert tree.display(node["label"]) in html
    message = app["unsure_message"](prediction, tree)
    assert message.startswith("**The model is unsure**: its best answer has a 14% chance.")
    sure = prediction_of(tree, [0.9 if i == lonely else 0.1 / 81 for i in range(82)])
    assert app["unsure_message"](sure, tree) == ""


# ----------------------------------------------------------------------------------------- choosing a model


def test_default_model_is_the_newest_finished_run(tmp_path, tiny_checkpoint):
    runs = tmp_path / "runs"
    with pytest.raises(UsageError, match="python train.py"):
        app["default_source"]([runs])
    old, new, unfinished = (shutil.copytree(tiny_checkpoint, runs / name) for name in ("old", "new", "unfinished"))
    for folder in (old, new):
        (folder / "all_results.json").write_text("{}")
    os.utime(old / "model.safetensors", (time.time() - 100, time.time() - 100))
    assert app["default_source"]([runs]) == (str(new), False, False)
    os.utime(new / "model.safetensors", (time.time() - 200, time.time() - 200))
    assert app["default_source"]([runs]) == (str(old), False, False)


# ------------------------------------------------------------------------------------------------ the Space

SPACE_RUN = """
import json, sys
from pathlib import Path

# What the Space has and nothing more: this repository's editable install is taken out of the import system.
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in getattr(finder, "__module__", "")]
repository = Path(sys.argv[1]).resolve()
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != repository]


def ours(file):  # a file of this repository (not of an environment installed inside it)
    path = Path(file or "/").resolve()
    return path.is_relative_to(repository) and "site-packages" not in path.parts


import app

model, onnx, int8 = app.default_source()
classifier = app.load_served(None if onnx else model, Path(model) if onnx else None, int8)
prediction, heat = app.answer(classifier, app.load_photo("examples/tree_pose.jpg"))
app.build_demo(classifier)
from_repository = sorted(name for name, module in list(sys.modules.items()) if ours(getattr(module, "__file__", None)))
loaded = sorted({"torch", "transformers"} & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"prediction": prediction, "map": heat is not None, "from_repository": from_repository,
                  "loaded": loaded}))
"""


def run_space(space: Path) -> dict:
    """The Space's app in a fresh process whose only code of this project is what the Space holds: it finds its
    model with no flag, answers an example photo and builds its page."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SPACE_RUN, str(PROJECT_ROOT)], cwd=space, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh process that imports torch, transformers and gradio
def test_write_space_writes_a_space_that_serves_the_model_alone(tmp_path, tiny_checkpoint):
    from huggingface_hub import SpaceCard
    from transformers import pipeline

    space = tmp_path / "space"
    app["write_space"](str(tiny_checkpoint), space)
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    requirements = (space / "requirements.txt").read_text().split()
    assert {"torch>=2.4", "transformers>=5.0,<6", "gradio>=5.0,<7"} <= set(requirements)
    assert (space / "examples" / "LICENSE").read_text().startswith("MIT License")
    assert len(list((space / "examples").glob("*.jpg"))) >= 3
    assert (space / "model" / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    ran = run_space(space)
    assert ran["from_repository"] == [] and ran["map"]
    expected = pipeline("hierarchical-image-classification", model=str(tiny_checkpoint), trust_remote_code=True)(
        str(EXAMPLES / "tree_pose.jpg"))
    assert [n["label"] for n in ran["prediction"]["path"]] == [n["label"] for n in expected["path"]]
    assert ran["prediction"]["path_score"] == pytest.approx(expected["path_score"], abs=1e-5)
    with pytest.raises(UsageError, match="overwrite"):
        app["write_space"](str(tiny_checkpoint), space)
    hub_space = app["write_space"]("someone/vit-yoga-all", tmp_path / "hub-space")
    assert json.loads((hub_space / "space.json").read_text()) == {"model": "someone/vit-yoga-all", "onnx": False,
                                                                   "int8": False}
    assert SpaceCard.load(hub_space / "README.md").data.models == ["someone/vit-yoga-all"]


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
    (checkpoint / "all_results.json").write_text(json.dumps({"train_samples": 164, "train_data": {
        "dataset_name": "synthetic"}}))
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
    onnx = app["load_served"](None, exports["maps"])
    assert onnx.levels == classifier.levels and onnx.tree == classifier.tree and app["no_map_note"](onnx) == ""
    for photo_path in sorted(EXAMPLES.glob("*.jpg")):
        photo = load_photo(photo_path)
        (expected, expected_heat), (got, heat) = (app["answer"](m, photo, top_k=100) for m in (classifier, onnx))
        expected_scores, scores = probabilities_of(expected), probabilities_of(got)
        for level in LEVELS:
            assert scores[level].keys() == expected_scores[level].keys() and len(scores[level]) == len(NAMES[level])
            assert max(abs(scores[level][k] - expected_scores[level][k]) for k in scores[level]) <= 1e-4, level
        assert [(n["level"], n["label"]) for n in got["path"]] == [(n["level"], n["label"]) for n in expected["path"]]
        assert [n["score"] for n in got["path"]] == pytest.approx([n["score"] for n in expected["path"]], abs=1e-4)
        assert got["path_score"] == pytest.approx(expected["path_score"], abs=1e-4)
        assert heat.shape == expected_heat.shape == (4, 4)
        np.testing.assert_allclose(heat, expected_heat, atol=1e-4, rtol=0, err_msg=photo_path.name)
        top5 = app["answer"](onnx, photo)[0]  # the page's top 5, in the pipeline's order
        assert [[c["label"] for c in top5["levels"][level]] for level in LEVELS] == [
            [c["label"] for c in classes[:5]] for classes in expected["levels"].values()]
    text = app["describe_model"](onnx.info)
    assert "in ONNX Runtime, 60 k parameters" in text and "test set: body position 90.0%" in text
    assert "**Trained on:** the built-in synthetic poses (164 training images)." in text


def test_onnx_export_without_maps_answers_with_no_map_and_says_how_to_get_one(exports):
    plain, maps = app["load_served"](None, exports["plain"]), app["load_served"](None, exports["maps"])
    photo = load_photo(EXAMPLES / "half_moon.jpg")
    prediction, heat = app["answer"](plain, photo)
    assert heat is None
    with_maps = app["answer"](maps, photo)[0]  # the same weights (sdpa here, eager there): the same answer, to rounding
    assert [n["label"] for n in prediction["path"]] == [n["label"] for n in with_maps["path"]]
    for level, scores in probabilities_of(prediction).items():
        assert scores == pytest.approx(probabilities_of(with_maps)[level], abs=1e-5)
    note = app["no_map_note"](plain)
    assert "\n" not in note and "No attention map" in note
    assert "python -m vit_yoga.export" in note and "--attention_maps" in note


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


@pytest.mark.slow  # a fresh process that imports gradio
def test_write_space_with_onnx_writes_a_space_that_runs_without_torch(exports, tmp_path):
    space = app["write_space"](str(exports["maps"]), tmp_path / "space", onnx=True)
    requirements = (space / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "gradio" in requirements
    assert "torch" not in requirements and "transformers" not in requirements
    assert sorted(p.name for p in (space / "model").iterdir()) == sorted(
        ["model.onnx", "config.json", "preprocessor_config.json", "labels.json", "export_results.json"])
    assert not (space / "vit_yoga" / "torch_runtime.py").exists()
    ran = run_space(space)
    assert ran["from_repository"] == [] and ran["loaded"] == [] and ran["map"]
    expected = app["answer"](app["load_served"](None, exports["maps"]), load_photo(EXAMPLES / "tree_pose.jpg"))[0]
    assert ran["prediction"] == expected


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
        try:
            app["wait_until_served"](url, process)
        except RuntimeError as error:
            pytest.fail(f"{error}:\n{log.read_text()[-3000:]}")
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


DISPLAY = display_names([name for level in HIERARCHY["hierarchy_class_names"] for name in level])


def assert_headline_is_the_path(headline: str, browser=None) -> list[str]:
    """The headline reads the decided path in display names with its probability; returns the path's labels (from
    the level boxes' marks when a browser is given)."""
    steps, _, percent = headline.replace("#", "").strip().rpartition(", ")
    assert re.fullmatch(r"\d{1,3}%", percent), headline
    names = steps.split(" › ")
    assert len(names) == len(LEVELS)
    labels = [next(label for label in NAMES[level] if DISPLAY[label] == name) for level, name in zip(LEVELS, names,
                                                                                                     strict=True)]
    assert_path_in_tree(list(zip(LEVELS, labels, strict=True)))
    return labels


@pytest.mark.slow
def test_page_shows_the_path_as_headline_marked_in_every_level_and_where_the_model_looks(served_app, browser,
                                                                                          tmp_path):
    from selenium.webdriver.common.by import By

    photo = real_photo()
    upload(browser, served_app, photo)
    labels = assert_headline_is_the_path(wait_for_text(browser, "headline", "%"))
    for level, on_path in zip(LEVELS, labels, strict=True):
        block = browser.find_element(By.ID, f"level-{level}")
        assert f"({len(NAMES[level])} classes)" in block.text
        rows = block.find_elements(By.CSS_SELECTOR, "li[data-label]")
        assert 5 <= len(rows) <= 6  # the top 5, and the path's class after them when it is not among them
        marked = [row.get_attribute("data-label") for row in rows if "on-path" in row.get_attribute("class")]
        assert marked == [on_path]  # exactly the path's class is marked, at every level
        for row in rows:  # each class by the name a person reads
            assert row.find_element(By.CSS_SELECTOR, ".name").text == DISPLAY[row.get_attribute("data-label")]
        scores = [float(row.find_element(By.CSS_SELECTOR, ".score").text.rstrip("%")) for row in rows[:5]]
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 100 + 1e-6
    # An untrained model is near-uniform: the page says it is unsure and names the runners-up.
    message = wait_for_text(browser, "message", "unsure")
    assert "Runners-up:" in message and DISPLAY[labels[-1]] not in message.split("Runners-up:")[1]
    info = browser.find_element(By.ID, "model-info")
    assert "About this model" in info.text and "tmp" not in info.text  # collapsed: its details are not shown
    overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
    width, height = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay)
    photo_width, photo_height = load_photo(photo).size
    assert width > 0 and abs(width / height - photo_width / photo_height) < 0.02


@pytest.mark.slow
def test_page_says_what_is_wrong_with_a_bad_photo_and_keeps_serving(served_app, browser, tmp_path):
    for path, words in bad_photos(tmp_path).values():
        upload(browser, served_app, path)
        wait_for_text(browser, "message", words)
    upload(browser, served_app, PROJECT_ROOT / "examples" / "tree_pose.jpg")
    assert_headline_is_the_path(wait_for_text(browser, "headline", "%"))


@pytest.mark.slow
def test_api_through_gradio_client(served_app, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served_app, verbose=False)
    photo = real_photo()
    headline, *boxes, overlay_file, message = client.predict(
        gradio_client.handle_file(str(photo)), 0.5, api_name="/classify")
    assert "unsure" in message  # an untrained model
    labels = assert_headline_is_the_path(headline)
    assert len(boxes) == len(LEVELS)
    for box, label in zip(boxes, labels, strict=True):
        assert re.findall(r'class="on-path" data-label="([^"]+)"', box) == [label.replace("'", "&#x27;")]
    photo_width, photo_height = load_photo(photo).size
    with Image.open(overlay_file) as overlay:
        assert abs(overlay.width / overlay.height - photo_width / photo_height) < 0.02
    bad, words = bad_photos(tmp_path)["truncated"]
    *_, message = client.predict(gradio_client.handle_file(str(bad)), 0.5, api_name="/classify")
    assert words in message


@pytest.mark.slow  # builds the Gradio page three times
@pytest.mark.parametrize("kind", ["label_6", "label_82", "flat"])
def test_the_page_answers_for_every_checkpoint_kind(kind, tmp_path):
    """A coarse or fine one-head model and a model without a hierarchy: the headline is the path of the levels it
    predicts, each level's box marks the path's class, and the page builds."""
    from configuration_vit_yoga import ViTYogaConfig

    if kind == "flat":
        names = ["tree", "crow_pose_or_bakasana", "plank"]
        config = ViTYogaConfig.from_preset("vit-pico", image_size=32, id2label=dict(enumerate(names)),
                                           label2id={n: i for i, n in enumerate(names)},
                                           display_names=display_names(names))
        folder = save_checkpoint_as_train_py(tmp_path / kind, config)
    else:
        folder = save_tiny_checkpoint(tmp_path / kind, label_level=kind)
    classifier = app["load_served"](str(folder), None)
    prediction, heat = app["answer"](classifier, load_photo(EXAMPLES / "tree_pose.jpg"))
    expected_levels = {"label_6": ["label_6"], "label_82": LEVELS, "flat": ["label"]}[kind]
    assert [node["level"] for node in prediction["path"]] == expected_levels and heat is not None
    headline = app["headline"](prediction, classifier.tree)
    assert headline.startswith("## " + " › ".join(classifier.tree.display(n["label"]) for n in prediction["path"]))
    for node in prediction["path"]:
        html = app["level_html"](node["level"], prediction["levels"][node["level"]], node, classifier.tree, 3)
        assert re.findall(r'class="on-path" data-label="([^"]+)"', html) == [node["label"]]
    if kind == "flat":
        assert "crow pose (bakasana)" in app["level_html"](
            "label", prediction["levels"]["label"], prediction["path"][0], classifier.tree, 3)
    app["build_demo"](classifier)
