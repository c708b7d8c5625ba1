"""The vit-yoga demo: drop a photo, see every level of the label tree, the path through it, and where the model looks.

    python app.py --model runs/all            # a train.py output folder, or a Hub id; opens http://127.0.0.1:7860
    python app.py --onnx runs/all-onnx [--int8]   # a folder python -m vit_yoga.export wrote: ONNX Runtime, no torch
    python app.py --model runs/all --write_space spaces/vit-yoga   # a folder to push as a Hugging Face Space
                                                                   # (with --onnx: a Space without torch)

This file is the page and its command line. The answers come from the package's inference core, the code that
``python -m vit_yoga.predict`` runs too: ``vit_yoga.torch_runtime`` (the checkpoint's own code, as its hierarchical
pipeline answers) or, with ``--onnx``, ``vit_yoga.onnx_runtime`` (numpy, Pillow and ONNX Runtime: neither torch nor
transformers is imported). ``--write_space`` copies this file and the modules it imports into a Space folder
(``SPACE_MODULES``), with requirements and a card from ``vit_yoga/space_template``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vit_yoga.inference import HierarchicalClassifier, PhotoError, load_photo
from yoga_common.errors import UsageError

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
SPACE_TEMPLATE = HERE / "vit_yoga" / "space_template"
SPACE_FILE = "space.json"  # in a Space written by --write_space: {"model": folder or Hub id, "onnx": ..., "int8": ...}
# What a Space copies of this repository: this file imports them (and nothing else of it); a PyTorch Space also
# vit_yoga/torch_runtime.py. tests/test_app.py runs a written Space in a process that cannot see the repository.
SPACE_MODULES = ("answers_vit_yoga.py", "vit_yoga/__init__.py", "vit_yoga/inference.py", "vit_yoga/onnx_runtime.py",
                 "yoga_common/__init__.py", "yoga_common/errors.py")
INSTALL_HINT = 'pip install -e ".[demo]"  (or: pip install "gradio>=5.0,<7")'
DEFAULT_MAX_MEGAPIXELS = 32.0
DISPLAY_SIZE = 512  # the overlay's longest side: enough to see, small enough to send back fast
LEVEL_TITLES = {"label_6": "Body position", "label_20": "Variation", "label_82": "Pose"}
# Files of a train.py output folder that a Space needs to serve it (checkpoints, plots and pickles stay home).
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
               "test_results.json", "eval_results.json")
EXPORT_COMMAND = "python -m vit_yoga.export --model CHECKPOINT --output_dir DIR --attention_maps"


# ------------------------------------------------------------------------------------------------- the model


def load_served(model: str | None, onnx: Path | None, int8: bool = False, threads: int | None = None
                ) -> HierarchicalClassifier:
    """The classifier the page serves: an export (ONNX Runtime, its threads asleep between requests) or a
    checkpoint (PyTorch, eager attention so that one forward also returns the maps)."""
    if onnx:
        from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier

        return OnnxHierarchicalClassifier(onnx, int8=int8, threads=threads, spinning=False)
    from vit_yoga.torch_runtime import load_checkpoint_classifier

    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_checkpoint_classifier(model, device="cpu", bf16=False, attn_implementation="eager")


def answer(classifier: HierarchicalClassifier, photo: Image.Image, top_k: int = 5
           ) -> tuple[dict[str, Any], np.ndarray | None]:
    """The hierarchical pipeline's dict for ``photo`` and the attention rollout over the patch grid (values in [0, 1];
    None for an export without attention outputs)."""
    pixels = classifier.prepare([photo])
    probabilities, attentions = classifier.run_model(pixels, attentions=True)
    (prediction,) = classifier.describe(probabilities, top_k=top_k)
    if attentions is None:
        return prediction, None
    patch = classifier.info["patch_size"]
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    return prediction, heat_map(attention_rollout(attentions)[0], grid)


def attention_rollout(attentions: Sequence[Any], residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, ACL 2020): how much each patch feeds the class token through all layers.

    Each layer's attention (batch, heads, tokens, tokens), averaged over heads, is mixed with the identity for the
    residual connection (``residual * I + (1 - residual) * A``, rows renormalised); the rollout is their product, last
    layer first to first layer last, and its class-token row is returned without the class token itself: (batch,
    patches), float32. Only that row is needed, so it is carried as a vector through the layers (tokens^2 work per
    layer, not tokens^3). Written here because no library computes it for a model of its own: a few lines over the
    attention maps the model returned (PyTorch's eager attention, or the exported graph's ``attentions_<i>``).
    """
    row = None
    for layer in reversed(attentions):
        mixed = np.asarray(layer, dtype=np.float32).mean(axis=1)  # (batch, tokens, tokens)
        mixed = residual * np.eye(mixed.shape[-1], dtype=np.float32) + (1 - residual) * mixed
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        row = mixed[:, 0] if row is None else (row[:, None, :] @ mixed)[:, 0]
    return row[:, 1:]


def heat_map(rollout: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One image's rollout on the patch grid, scaled so that its hottest patch is 1."""
    heat = rollout.reshape(grid)
    return heat / max(float(heat.max()), 1e-12)


def describe_model(info: dict[str, Any]) -> str:
    """Markdown for the page's "About this model": name, architecture, size, training data and the accuracy its run
    reported."""
    parameters = info.get("parameters")
    size = "" if not parameters else f", {parameters / 1e6:.1f} M parameters" if parameters >= 1e5 else \
        f", {parameters / 1e3:.0f} k parameters"
    runtime = f" in {info['runtime']}" if info.get("runtime") else ""
    stem = ", conv stem" if info["stem"] == "conv_stem" else ""
    lines = [f"**Model:** `{model_title(info)}` ({info['architecture']}{runtime}{size}; {info['image_size']} px, patch "
             f"{info['patch_size']}, {info['layers']} layers x {info['hidden_size']}{stem})."]
    if info.get("data"):
        lines.append(f"**Trained on:** {info['data']}.")
    accuracy = info.get("accuracy") or {}
    # A joint model reports each level's top-1 (label_6_accuracy, ...); a one-head model its own level's (accuracy).
    top1 = {level: accuracy[f"{level}_accuracy"] for level in info["levels"] if f"{level}_accuracy" in accuracy}
    if not top1 and "accuracy" in accuracy:
        top1 = {info["label_level"] or "top-1": accuracy["accuracy"]}
    if top1:
        where = "test set" if info.get("split") == "test" else "validation set"
        lines.append(f"**Top-1 accuracy** its run reported on the {where}: " + ", ".join(
            f"{LEVEL_TITLES.get(level, level).lower()} {value:.1%}" for level, value in top1.items()) + ".")
    else:
        lines.append("No accuracy reported with this checkpoint (an untrained or unevaluated model).")
    return "\n\n".join(lines)


def model_title(info: dict[str, Any]) -> str:
    """The model's short name: a folder's own name (never the path to it), or a Hub id."""
    name = info["name"]
    return Path(name).name if Path(name).exists() else name


# Inferno-like colour stops (dark, violet, red, orange, pale yellow): hot areas stand out over any photo.
HEAT_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)


def overlay(photo: Image.Image, heat: np.ndarray, opacity: float) -> Image.Image:
    """The attention map stretched back over the photo (the processor squashed the photo to a square; this undoes
    it), coloured and blended at ``opacity`` (0: the photo only, 1: the map only). At most DISPLAY_SIZE pixels."""
    shown = photo.copy()
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    heat_image = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(shown.size, Image.BILINEAR)
    positions = np.asarray(heat_image, dtype=np.float32) / 255 * (len(HEAT_COLOURS) - 1)
    low = np.floor(positions).astype(int).clip(0, len(HEAT_COLOURS) - 2)
    weight = (positions - low)[..., None]
    colours = HEAT_COLOURS[low] * (1 - weight) + HEAT_COLOURS[low + 1] * weight
    return Image.blend(shown, Image.fromarray(colours.astype(np.uint8)), float(opacity))


# -------------------------------------------------------------------------------------------------- the page

UNSURE_BELOW = 0.5  # a path probability under this: the page says the model is unsure and shows the runners-up
PAGE_CSS = """
.level-box ol { list-style: none; padding-left: 0; margin: 0; }
.level-box h3 { margin: 0.2em 0 0.3em 0; }
.level-box li { display: grid; grid-template-columns: 1.4em 1fr 4.2em; column-gap: 0.3em; row-gap: 0.1em;
                padding: 0.05em 0; margin: 0; }
.level-box li .bar { grid-column: 2 / 4; height: 0.3em; background: #e5e7eb; border-radius: 0.2em; }
.level-box li .bar span { display: block; height: 100%; background: #6366f1; border-radius: 0.2em; }
.level-box li.on-path { font-weight: 600; }
.level-box li.on-path .bar span { background: #16a34a; }
.level-box .score { text-align: right; font-variant-numeric: tabular-nums; }
.level-box .gap { color: #6b7280; padding: 0.1em 0 0.1em 1.7em; }
"""


def no_map_note(classifier: HierarchicalClassifier) -> str:
    """What the page says in place of the map when the model gives none ("" when it does)."""
    if classifier.has_attention_maps:
        return ""
    return (f"No attention map: `{Path(classifier.name).name}` was exported without attention outputs; to see where "
            f"the model looks, export its checkpoint with them: `{EXPORT_COMMAND}`.")


def level_title(level: str, size: int) -> str:
    return f"{LEVEL_TITLES.get(level, level)} ({size} classes)"


def headline(prediction: dict[str, Any], tree: Any) -> str:
    """The decided path in the names people read, and its probability: "Standing › Standing: straight › Tree Pose
    (Vrksasana), 87 %"."""
    steps = " › ".join(tree.display(node["label"]) for node in prediction["path"])
    return f"## {steps}, {prediction['path_score']:.0%}"


def unsure_message(prediction: dict[str, Any], tree: Any) -> str:
    """When the path's probability is under UNSURE_BELOW: that the model is unsure, and the finest level's
    runners-up; "" otherwise."""
    if prediction["path_score"] >= UNSURE_BELOW:
        return ""
    finest = prediction["path"][-1]
    others = [c for c in prediction["levels"][finest["level"]] if c["label"] != finest["label"]][:3]
    runners = ", ".join(f"{tree.display(c['label'])} ({c['score']:.0%})" for c in others)
    return (f"**The model is unsure**: its best answer has a {prediction['path_score']:.0%} chance. "
            f"Runners-up: {runners}.")


def level_html(level: str, classes: list[dict[str, Any]], node: dict[str, Any], tree: Any, size: int) -> str:
    """One level's top classes, most probable first, with a bar each; the class on the decided path is marked (and
    listed after the others when it is not among them)."""
    from html import escape

    def row(entry: dict[str, Any], on_path: bool) -> str:
        mark = "●" if on_path else ""
        return (f'<li class="{"on-path" if on_path else ""}" data-label="{escape(entry["label"])}">'
                f'<span class="mark" title="on the decided path">{mark}</span>'
                f'<span class="name">{escape(tree.display(entry["label"]))}</span>'
                f'<span class="score">{entry["score"]:.1%}</span>'
                f'<span class="bar"><span style="width: {100 * entry["score"]:.1f}%"></span></span></li>')

    rows = [row(entry, entry["label"] == node["label"]) for entry in classes]
    if all(entry["label"] != node["label"] for entry in classes):
        rows.append(f'<li class="gap"><span></span><span>…</span></li>{row(node, True)}')
    return (f'<div class="level-box"><h3>{escape(level_title(level, size))}</h3><ol>{"".join(rows)}</ol></div>')


def build_demo(classifier: HierarchicalClassifier, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               examples_dir: Path = EXAMPLES_DIR) -> Any:
    """The page: a photo in; the decided path as the headline, each level's top 5 with the path's class marked, an
    unsure message when the path is improbable, and the attention map with an opacity slider (a model without
    attention maps: a note saying how to get them instead). The model's details sit in a collapsed section."""
    import gradio as gr

    tree = classifier.tree
    sizes = {level: len(names) for level, names in zip(classifier.levels, tree.names, strict=True)}
    note = no_map_note(classifier)
    has_map = not note

    def classify(photo_path: str | None, opacity: float) -> list[Any]:
        empty = [""] * len(classifier.levels)
        if photo_path is None:
            return ["", *empty, None, "", None]
        try:
            photo = load_photo(photo_path, max_megapixels)
        except PhotoError as error:
            return ["", *empty, None, f"⚠️ {error}", None]
        prediction, heat = answer(classifier, photo)
        levels = [level_html(node["level"], prediction["levels"][node["level"]], node, tree, sizes[node["level"]])
                  for node in prediction["path"]]
        top = [headline(prediction, tree), *levels]
        if heat is None:
            return [*top, None, unsure_message(prediction, tree), None]
        shown = photo.copy()
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        return [*top, overlay(shown, heat, opacity), unsure_message(prediction, tree), (shown, heat)]

    def reblend(state: tuple[Image.Image, np.ndarray] | None, opacity: float) -> Image.Image | None:
        return None if state is None else overlay(state[0], state[1], opacity)

    with gr.Blocks(title=f"vit-yoga: {model_title(classifier.info)}") as demo:
        gr.HTML(f"<style>{PAGE_CSS}</style>", padding=False)
        gr.Markdown("# Which yoga pose is this?\nDrop, paste or take a photo, or click an example. The model answers "
                    "on every level of Yoga-82's tree (body position › variation › pose), with probabilities that "
                    "add up along the tree" + (", and shows where it looks." if has_map else "."))
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Photo",
                                 elem_id="photo")
                photo.preprocess = undecoded_upload(photo)
                examples = sorted(str(p) for p in examples_dir.glob("*.jpg")) if examples_dir.is_dir() else []
                if examples:
                    gr.Examples(examples, inputs=photo, label="Examples (MIT licence, see examples/LICENSE)")
                heatmap = gr.Image(type="pil", label="Where the model looks (attention rollout)", elem_id="overlay",
                                   interactive=False, format="jpeg", visible=has_map)
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Attention map opacity", elem_id="opacity",
                                    visible=has_map)
                gr.Markdown(note, elem_id="note", visible=not has_map)
            with gr.Column():
                path = gr.Markdown(elem_id="headline")
                message = gr.Markdown(elem_id="message")
                boxes = [gr.HTML(elem_id=f"level-{level}") for level in classifier.levels]
                with gr.Accordion("About this model", open=False, elem_id="model-info"):
                    gr.Markdown(describe_model(classifier.info))
        state = gr.State()
        photo.change(classify, [photo, opacity], [path, *boxes, heatmap, message, state], api_name="classify")
        opacity.release(reblend, [state, opacity], heatmap, api_name="blend")
    return demo


def undecoded_upload(component: Any) -> Any:
    """gr.Image's preprocess, except that an uploaded file reaches the app undecoded, so that an unreadable photo gets
    the app's own message on the page (gr.Image would fail inside gradio with a generic error). Set on the instance:
    a gr.Image subclass would make gradio write an ``app.pyi`` beside this file."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is None or (payload.url or "").startswith("data:"):
            return original(payload)
        return payload.path

    return preprocess


# ----------------------------------------------------------------------------------------- choosing a model


def newest_run(runs_dir: Path) -> Path | None:
    """The newest finished train.py output under ``runs_dir`` (top-level weights and results are written last)."""
    finished = [weights.parent for weights in runs_dir.glob("**/model.safetensors")
                if not any(part.startswith("checkpoint-") for part in weights.parent.parts)
                and (weights.parent / "config.json").is_file()
                and (weights.parent / "all_results.json").is_file()]
    return max(finished, key=lambda folder: (folder / "model.safetensors").stat().st_mtime, default=None)


def default_source(runs_dirs: Sequence[Path] | None = None) -> tuple[str, bool, bool]:
    """(model, onnx, int8) to serve when none is named: a Space's own (``space.json`` beside this file), else the
    newest finished run under ``runs_dirs`` (default: runs/ here and beside this file)."""
    space = HERE / SPACE_FILE
    if space.is_file():
        served = json.loads(space.read_text())
        ref = served["model"]
        return (str(HERE / ref) if (HERE / ref).is_dir() else ref), bool(served.get("onnx")), bool(served.get("int8"))
    for runs in dict.fromkeys(runs_dirs or (Path.cwd() / "runs", HERE / "runs")):
        found = newest_run(runs) if runs.is_dir() else None
        if found:
            return str(found), False, False
    raise UsageError(
        "no model to serve: pass --model FOLDER_OR_HUB_ID, or train one first, e.g. `python train.py --label_level all`"
        " (about 6 minutes on a laptop CPU; it writes runs/all, which `python app.py` then finds by itself)."
    )


# ------------------------------------------------------------------------------------------------ the Space


def write_space(model_ref: str, space_dir: Path, overwrite: bool = False, onnx: bool = False,
                int8: bool = False) -> Path:
    """A folder to push as a Hugging Face Space, from ``vit_yoga/space_template``: this app and the modules it imports
    (``SPACE_MODULES``, and for a checkpoint ``vit_yoga/torch_runtime.py``), requirements (onnxruntime for an
    export, torch and transformers for a checkpoint; gradio, numpy and Pillow for both), a README with the Space's
    front matter, the examples with their licence, and the model (its files when ``model_ref`` is a folder; its id
    otherwise). ``onnx``: ``model_ref`` is an export folder; ``int8``: serve its model_int8.onnx."""
    from importlib.metadata import version

    from huggingface_hub import SpaceCard, SpaceCardData

    from yoga_common.files import staged_folder

    local = Path(model_ref).is_dir()
    if onnx:
        from vit_yoga.onnx_runtime import EXPORT_FILES, read_export

        model_file = read_export(model_ref, int8)[0]
        model_files = [model_file.name, *EXPORT_FILES]
        has_map = bool(json.loads((Path(model_ref) / EXPORT_FILES[2]).read_text()).get("attention_maps"))
        modules, runtime = SPACE_MODULES, "onnx"
    else:
        if local and not (Path(model_ref) / "model.safetensors").is_file():
            raise UsageError(f"--model {model_ref} has no model.safetensors: give a finished train.py output folder.")
        model_files = sorted({*MODEL_FILES, *(p.name for p in Path(model_ref).glob("*.py"))})
        has_map = True
        modules, runtime = (*SPACE_MODULES, "vit_yoga/torch_runtime.py"), "torch"
    shown_name = Path(model_ref).name if local else model_ref
    what = (f"an ONNX export of a ViTYoga checkpoint, run by ONNX Runtime{' in int8' * int8} without PyTorch" if onnx
            else "a ViTYoga checkpoint")
    shown = (", the most probable path and the attention rollout map" if has_map else
             " and the most probable path (it was exported without attention maps)")
    try:
        with staged_folder(space_dir, overwrite=overwrite) as staging:
            for name in ("app.py", *modules):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(HERE / name, staging / name)
            shutil.copytree(EXAMPLES_DIR, staging / "examples")
            if local:
                (staging / "model").mkdir()
                for name in model_files:
                    if (Path(model_ref) / name).is_file():
                        shutil.copy2(Path(model_ref) / name, staging / "model" / name)
            served = {"model": "model" if local else model_ref, "onnx": onnx, "int8": int8}
            (staging / SPACE_FILE).write_text(json.dumps(served) + "\n")
            shutil.copy2(SPACE_TEMPLATE / f"requirements-{runtime}.txt", staging / "requirements.txt")
            data = SpaceCardData(
                title=f"vit-yoga: {shown_name}", emoji="🧘", colorFrom="indigo", colorTo="green", sdk="gradio",
                sdk_version=version("gradio"), app_file="app.py", pinned=False, license="apache-2.0",
                models=None if local else [model_ref],
                short_description="Yoga-82 poses: three levels, the path, and where the model looks",
            )
            body = (SPACE_TEMPLATE / "README.md").read_text().format(name=shown_name, what=what, shown=shown)
            SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(staging / "README.md")
    except FileExistsError:
        raise UsageError(f"--write_space {space_dir} already exists and is not empty: pass --overwrite to replace "
                         "it, or choose another folder.") from None
    return space_dir


def wait_until_served(url: str, process: Any, timeout: float = 120.0) -> None:
    """Wait until the page at ``url`` answers, for a program that started ``python app.py`` in ``process`` (a
    ``subprocess.Popen``: the tests, benchmarks/bench_demo.py, docs/demo_screenshot.py); RuntimeError when the
    process ends first or ``timeout`` seconds pass."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not serve {url} (exit status {process.poll()})") from None
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="a train.py output folder or a Hub model id (default: the Space's model, "
                        "else the newest finished run under runs/)")
    parser.add_argument("--onnx", type=Path, metavar="DIR",
                        help="serve an export of python -m vit_yoga.export instead, with ONNX Runtime and without "
                        "torch (its attention map needs an export with --attention_maps)")
    parser.add_argument("--int8", action="store_true", help="with --onnx: serve model_int8.onnx (--quantize dynamic)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on ($GRADIO_SERVER_NAME; 0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=int(os.environ["GRADIO_SERVER_PORT"])
                        if os.environ.get("GRADIO_SERVER_PORT") else None,
                        help="port ($GRADIO_SERVER_PORT; default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max_megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                        help="larger photos get a message instead of an answer")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch or ONNX Runtime (default: theirs)")
    parser.add_argument("--write_space", type=Path, metavar="DIR",
                        help="write a Hugging Face Space for --model (or --onnx) into DIR and exit (no server)")
    parser.add_argument("--overwrite", action="store_true", help="let --write_space replace a non-empty DIR")
    return parser.parse_args(argv)


def served_source(args: argparse.Namespace) -> tuple[str, bool, bool]:
    """(model, onnx, int8): what the flags name, else the Space's own or the newest run. Checks the flags and an
    export's files: cheap, so it runs before Gradio is imported."""
    if args.onnx and args.model:
        raise UsageError("give --model (a checkpoint, PyTorch) or --onnx (an export, ONNX Runtime), not both.")
    if args.int8 and not args.onnx:
        raise UsageError("--int8 serves an export's model_int8.onnx: use it with --onnx DIR.")
    source = (str(args.onnx), True, args.int8) if args.onnx else (args.model, False, False) if args.model else \
        default_source()
    if source[1]:
        from vit_yoga.onnx_runtime import read_export

        read_export(source[0], source[2])
    return source


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        model_ref, onnx, int8 = served_source(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: the demo needs Gradio, which the core install leaves out: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        if args.write_space:
            write_space(model_ref, args.write_space, overwrite=args.overwrite, onnx=onnx, int8=int8)
            print(f"Wrote a Space to {args.write_space}; push it with: hf upload --repo-type space YOU/NAME "
                  f"{args.write_space} .")
            return 0
        start = time.perf_counter()
        classifier = load_served(None if onnx else model_ref, Path(model_ref) if onnx else None, int8, args.threads)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    note = no_map_note(classifier)
    print(f"Loaded {model_ref}{' (ONNX Runtime)' if onnx else ''} in {time.perf_counter() - start:.1f} s; levels "
          f"{classifier.levels}.{' ' + note if note else ''}", flush=True)
    demo = build_demo(classifier, args.max_megapixels)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
