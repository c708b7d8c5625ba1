"""app.py, the demo: attention rollout, reading photos, the answer, the Space it writes; then the page itself in a real
headless Chromium and through gradio_client (slow: one app launch for the module)."""

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
    uniform = torch.full((2, 3, tokens, tokens), 1 / tokens)  # (batch, heads, tokens, tokens)
    rollout = app["attention_rollout"]([uniform] * layers)
    assert rollout.shape == (2, tokens - 1)
    torch.testing.assert_close(rollout, torch.full((2, tokens - 1), (1 - 0.5**layers) / tokens))


def test_rollout_follows_attention_through_layers():
    """The class token attends only to patch 2 in the last layer, patch 2 attended only to patch 3 in the first: the
    rollout credits patch 3 (0.5 x 0.5) as much as patch 2, and no other patch."""
    tokens = 5
    first, last = torch.eye(tokens), torch.eye(tokens)
    first[2] = torch.nn.functional.one_hot(torch.tensor(3), tokens)
    last[0] = torch.nn.functional.one_hot(torch.tensor(2), tokens)
    rollout = app["attention_rollout"]([first[None, None], last[None, None]])[0]
    torch.testing.assert_close(rollout, torch.tensor([0.0, 0.25, 0.25, 0.0]))


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
    write_space, which runs from a clone)."""
    tree = ast.parse((PROJECT_ROOT / "app.py").read_text())
    allowed = set(sys.stdlib_module_names) | {"numpy", "torch", "PIL", "transformers", "gradio", "huggingface_hub"}
    write_space = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "write_space")
    inside_write_space = {id(node) for node in ast.walk(write_space)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or (top == "yoga_common" and id(node) in inside_write_space), name


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
