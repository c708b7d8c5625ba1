"""The vit-yoga demo: drop a photo, see every level of the label tree, the path through it, and where the model looks.

    python app.py --model runs/all            # a train.py output folder, or a Hub id; opens http://127.0.0.1:7860
    python app.py --model runs/all --write_space spaces/vit-yoga   # a folder to push as a Hugging Face Space

The Hugging Face Spaces convention for a Gradio app: one file at the top of the repository. It is self-contained (torch,
transformers, gradio, Pillow, numpy, and the checkpoint's own code through ``trust_remote_code``; never the
``vit_yoga`` package), so the same file runs in a Space. ``--write_space`` writes what a Space needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
SPACE_MODEL_FILE = "space_model.txt"  # in a Space written by --write_space: the model to serve (a folder or Hub id)
GRADIO_REQUIREMENT = "gradio>=5.0,<7"  # as setup.cfg's [demo] extra
INSTALL_HINT = 'pip install -e ".[demo]"  (or: pip install "gradio>=5.0,<7")'
DEFAULT_MAX_MEGAPIXELS = 32.0
DISPLAY_SIZE = 512  # the overlay's longest side: enough to see, small enough to send back fast
LEVEL_TITLES = {"label_6": "Body position", "label_20": "Variation", "label_82": "Pose"}
# Files of a train.py output folder that a Space needs to serve it (checkpoints, plots and pickles stay home).
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
               "test_results.json", "eval_results.json")


class DemoUsageError(ValueError):
    """Something the person running the demo can fix (a flag, a folder); main prints it and exits 2."""


class PhotoError(ValueError):
    """A photo the demo cannot read; its message is shown on the page."""


# ------------------------------------------------------------------------------------------------- the model


@dataclass
class Classifier:
    """A checkpoint ready to answer: the model (eager attention, so that one forward returns the maps), its image
    processor, and the checkpoint's own tree functions (``tree_probabilities``, ``describe_tree_prediction``)."""

    model: torch.nn.Module
    processor: Any
    name: str
    levels: list[str]
    tree_probabilities: Any
    describe: Any
    info: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def run_model(self, pixel_values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """One forward: each level's tree-consistent probabilities, and every layer's attention maps. The one place
        the model is called (an ONNX backend would replace this function)."""
        outputs = self.model(pixel_values=pixel_values, output_attentions=True)
        level_logits = getattr(outputs, "level_logits", None)
        logits = outputs.logits if level_logits is None else level_logits
        return self.tree_probabilities(self.model.config, logits), outputs.attentions

    def answer(self, photo: Image.Image, top_k: int = 5) -> tuple[dict[str, Any], np.ndarray]:
        """The hierarchical prediction (``describe_tree_prediction``'s dict) and the attention rollout map over the
        patch grid, values in [0, 1]."""
        pixel_values = self.processor(images=photo, return_tensors="pt")["pixel_values"]
        probabilities, attentions = self.run_model(pixel_values)
        (prediction,) = self.describe(self.model.config, probabilities, top_k=top_k)
        grid = (pixel_values.shape[-2] // self.model.config.patch_size,
                pixel_values.shape[-1] // self.model.config.patch_size)
        heat = attention_rollout(attentions)[0].reshape(grid)
        return prediction, (heat / heat.max().clamp_min(1e-12)).numpy()


def load_classifier(model_ref: str) -> Classifier:
    """A train.py output folder or a Hub id, with the code it ships (``trust_remote_code``)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(
            model_ref, trust_remote_code=True, attn_implementation="eager"
        ).eval()
        processor = AutoImageProcessor.from_pretrained(model_ref)
    except (OSError, ValueError) as error:
        raise DemoUsageError(
            f"--model {model_ref}: cannot load it ({error}). Give an output folder of train.py (e.g. runs/all) or a "
            "Hub model id."
        ) from None
    tree_probabilities, describe, levels = tree_functions(model, model_ref)
    return Classifier(model, processor, model_ref.rstrip("/"), levels, tree_probabilities, describe,
                      model_info(model, model_ref, levels))


def tree_functions(model: torch.nn.Module, model_ref: str) -> tuple[Any, Any, list[str]]:
    """The checkpoint's own ``tree_probabilities`` (its model code) and ``describe_tree_prediction`` (its shipped
    ``pipeline_vit_yoga.py``), so the demo answers exactly as the hierarchical pipeline does for that checkpoint."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.utils import cached_file

    modeling = sys.modules[type(model).__module__]
    if not (hasattr(modeling, "tree_probabilities") and cached_file(
            model_ref, "pipeline_vit_yoga.py", _raise_exceptions_for_missing_entries=False)):
        raise DemoUsageError(
            f"--model {model_ref} predates the hierarchical pipeline (no pipeline_vit_yoga.py, or model code without "
            "tree_probabilities); retrain it with this version of train.py, or, in a clone of vit-yoga, copy this "
            "version's configuration_vit_yoga.py and modeling_vit_yoga.py into the folder and run `python -c \"from "
            f"vit_yoga.models import save_hierarchical_pipeline as s; s('{model_ref}')\"`."
        )
    describe = get_class_from_dynamic_module("pipeline_vit_yoga.describe_tree_prediction", model_ref)
    return modeling.tree_probabilities, describe, list(modeling.predicted_levels(model.config))


def attention_rollout(attentions: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020): how much each patch feeds the class token through all layers.

    Each layer's attention, averaged over heads, is mixed with the identity for the residual connection
    (``residual * I + (1 - residual) * A``, rows renormalised); the rollout is their product, last layer first to
    first layer last, and its class-token row is returned without the class token itself: (batch, patches). Only
    that row is needed, so it is carried as a vector through the layers (tokens^2 work per layer, not tokens^3).
    Written here because no library computes it for a model of its own: a few lines over the eager attention maps
    the forward already returned.
    """
    row = None
    for layer in reversed(attentions):
        mixed = layer.float().mean(dim=1)  # (batch, tokens, tokens)
        mixed = residual * torch.eye(mixed.shape[-1]) + (1 - residual) * mixed
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        row = mixed[:, 0] if row is None else (row.unsqueeze(1) @ mixed).squeeze(1)
    return row[:, 1:]


def model_info(model: torch.nn.Module, model_ref: str, levels: Sequence[str]) -> dict[str, Any]:
    """What a person should know about the model they try: its name, size, and the accuracy its run reported."""
    from transformers.utils import cached_file

    config = model.config
    info: dict[str, Any] = {
        "name": model_ref.rstrip("/"),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": config.image_size, "patch_size": config.patch_size, "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size, "stem": getattr(config, "patch_embedding_type", "standard"),
        "levels": list(levels), "label_level": config.label_level,
    }
    for name in ("test_results.json", "all_results.json", "eval_results.json"):
        path = cached_file(model_ref, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            results = json.loads(Path(path).read_text())
            split = "test" if any(k.startswith("test_") for k in results) else "eval"
            info["split"] = split
            info["accuracy"] = {key[len(split) + 1:]: value for key, value in results.items()
                                if key.startswith(f"{split}_") and key.endswith("accuracy")
                                and not isinstance(value, dict)}
            break
    return info


def describe_model(info: dict[str, Any]) -> str:
    """One Markdown paragraph: name, architecture, size, and the accuracy the run reported."""
    size = f"{info['parameters'] / 1e6:.1f} M parameters" if info["parameters"] >= 1e5 else \
        f"{info['parameters'] / 1e3:.0f} k parameters"
    stem = ", conv stem" if info["stem"] == "conv_stem" else ""
    text = (f"**Model:** `{info['name']}` ({info['architecture']}, {size}; {info['image_size']} px, patch "
            f"{info['patch_size']}, {info['layers']} layers x {info['hidden_size']}{stem}).")
    accuracy = info.get("accuracy") or {}
    # A joint model reports each level's top-1 (label_6_accuracy, ...); a one-head model its own level's (accuracy).
    top1 = {level: accuracy[f"{level}_accuracy"] for level in info["levels"] if f"{level}_accuracy" in accuracy}
    if not top1 and "accuracy" in accuracy:
        top1 = {info["label_level"] or "top-1": accuracy["accuracy"]}
    if top1:
        where = "test set" if info.get("split") == "test" else "validation set"
        text += f" Top-1 accuracy its run reported on the {where}: " + ", ".join(
            f"{level} {value:.1%}" for level, value in top1.items()) + "."
    else:
        text += " No accuracy reported with this checkpoint (an untrained or unevaluated model)."
    return text


# ------------------------------------------------------------------------------------------------- the photo


def read_photo(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """The photo upright and in RGB, as ``pipeline("image-classification")`` reads it (``load_image``: EXIF
    orientation, RGB); a file that is not a readable photo raises ``PhotoError`` with what to do instead."""
    from transformers.image_utils import load_image

    name = Path(path).name
    try:
        with Image.open(path) as probe:  # the header only: refuse a huge photo before decoding it
            width, height = probe.size
    except Image.DecompressionBombError:
        raise PhotoError(f"{name} is too large to decode safely; resize it below {max_megapixels:g} megapixels.") \
            from None
    except (UnidentifiedImageError, OSError):
        raise PhotoError(f"{name} is not an image (or not a format Pillow reads); upload a JPEG, PNG or WebP photo.") \
            from None
    if width * height > max_megapixels * 1e6:
        raise PhotoError(f"{name} is {width * height / 1e6:.1f} megapixels ({width}x{height}); this demo takes photos "
                         f"up to {max_megapixels:g} megapixels: resize it (the model sees it at a few hundred pixels "
                         "anyway).")
    try:
        return load_image(str(path))
    except (OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{name} could not be decoded ({error}): the file is damaged or truncated; upload it again "
                         "or try another photo.") from None


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


def level_title(level: str, size: int) -> str:
    return f"{LEVEL_TITLES.get(level, level)} ({level}, {size} classes): top 5"


def path_markdown(prediction: dict[str, Any]) -> str:
    steps = " → ".join(f"**{node['label']}** ({node['score']:.1%})" for node in prediction["path"])
    return f"Most probable path: {steps}"


def build_demo(classifier: Classifier, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               examples_dir: Path = EXAMPLES_DIR) -> Any:
    """The page: a photo in; each level's top 5, the path, and the attention map with an opacity slider out."""
    import gradio as gr

    sizes = {level: len(names) for level, names in zip(classifier.levels, level_names(classifier), strict=True)}

    def classify(photo_path: str | None, opacity: float) -> list[Any]:
        empty = [None] * len(classifier.levels)
        if photo_path is None:
            return [*empty, "", None, "", None]
        try:
            photo = read_photo(photo_path, max_megapixels)
        except PhotoError as error:
            return [*empty, "", None, f"⚠️ {error}", None]
        prediction, heat = classifier.answer(photo)
        labels = [{c["label"]: c["score"] for c in prediction["levels"][level]} for level in classifier.levels]
        shown = photo.copy()
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        return [*labels, path_markdown(prediction), overlay(shown, heat, opacity), "", (shown, heat)]

    def reblend(state: tuple[Image.Image, np.ndarray] | None, opacity: float) -> Image.Image | None:
        return None if state is None else overlay(state[0], state[1], opacity)

    with gr.Blocks(title=f"vit-yoga: {classifier.name}") as demo:
        gr.Markdown("# vit-yoga: which yoga pose is this?\nDrop, paste or take a photo, or click an example. The "
                    "model answers on every level of Yoga-82's tree (body position → variation → pose), with "
                    "probabilities that add up along the tree, and shows where it looks (attention rollout).")
        gr.Markdown(describe_model(classifier.info), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Photo",
                                 elem_id="photo")
                photo.preprocess = undecoded_upload(photo)
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Attention map opacity", elem_id="opacity")
                examples = sorted(str(p) for p in examples_dir.glob("*.jpg")) if examples_dir.is_dir() else []
                if examples:
                    gr.Examples(examples, inputs=photo, label="Examples (MIT licence, see examples/LICENSE)")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                path = gr.Markdown(elem_id="path")
                heatmap = gr.Image(type="pil", label="Where the model looks (attention rollout)", elem_id="overlay",
                                   interactive=False, format="jpeg")
        with gr.Row():
            outputs = [gr.Label(num_top_classes=5, label=level_title(level, sizes[level]), elem_id=f"level-{level}")
                       for level in classifier.levels]
        state = gr.State()
        photo.change(classify, [photo, opacity], [*outputs, path, heatmap, message, state], api_name="classify")
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


def level_names(classifier: Classifier) -> list[list[str]]:
    config = classifier.model.config
    if config.hierarchy_levels and classifier.levels[0] in config.hierarchy_levels:
        return [config.hierarchy_class_names[config.hierarchy_levels.index(level)] for level in classifier.levels]
    return [[config.id2label[i] for i in range(config.num_labels)]]


# ----------------------------------------------------------------------------------------- choosing a model


def newest_run(runs_dir: Path) -> Path | None:
    """The newest finished train.py output under ``runs_dir`` (top-level weights and results are written last)."""
    finished = [weights.parent for weights in runs_dir.glob("**/model.safetensors")
                if not any(part.startswith("checkpoint-") for part in weights.parent.parts)
                and (weights.parent / "config.json").is_file()
                and (weights.parent / "all_results.json").is_file()]
    return max(finished, key=lambda folder: (folder / "model.safetensors").stat().st_mtime, default=None)


def default_model(runs_dirs: Sequence[Path] | None = None) -> str:
    """A Space's own model (``space_model.txt`` beside this file), else the newest finished run under ``runs_dirs``
    (default: runs/ here and beside this file)."""
    space_model = HERE / SPACE_MODEL_FILE
    if space_model.is_file():
        ref = space_model.read_text().strip()
        return str(HERE / ref) if (HERE / ref).is_dir() else ref
    for runs in dict.fromkeys(runs_dirs or (Path.cwd() / "runs", HERE / "runs")):
        found = newest_run(runs) if runs.is_dir() else None
        if found:
            return str(found)
    raise DemoUsageError(
        "no model to serve: pass --model FOLDER_OR_HUB_ID, or train one first, e.g. `python train.py --label_level all`"
        " (about 6 minutes on a laptop CPU; it writes runs/all, which `python app.py` then finds by itself)."
    )


# ------------------------------------------------------------------------------------------------ the Space


def write_space(model_ref: str, space_dir: Path, overwrite: bool = False) -> Path:
    """A folder to push as a Hugging Face Space: this app, its requirements, a README with the Space's front matter,
    the examples with their licence, and the model (its files when ``model_ref`` is a folder; its id otherwise)."""
    from importlib.metadata import version

    from huggingface_hub import SpaceCard, SpaceCardData

    try:  # the clone's atomic folder writer; a Space running this file never writes Spaces
        from yoga_common.files import staged_folder
    except ImportError:
        raise DemoUsageError("--write_space runs from a clone of vit-yoga (it needs yoga_common).") from None
    local = Path(model_ref).is_dir()
    if local and not (Path(model_ref) / "model.safetensors").is_file():
        raise DemoUsageError(f"--model {model_ref} has no model.safetensors: give a finished train.py output folder.")
    try:
        with staged_folder(space_dir, overwrite=overwrite) as staging:
            shutil.copy2(Path(__file__), staging / "app.py")
            (staging / "examples").mkdir()
            for example in sorted(EXAMPLES_DIR.glob("*")):
                shutil.copy2(example, staging / "examples" / example.name)
            if local:
                (staging / "model").mkdir()
                for name in sorted({*MODEL_FILES, *(p.name for p in Path(model_ref).glob("*.py"))}):
                    if (Path(model_ref) / name).is_file():
                        shutil.copy2(Path(model_ref) / name, staging / "model" / name)
            (staging / SPACE_MODEL_FILE).write_text(("model" if local else model_ref) + "\n")
            (staging / "requirements.txt").write_text(
                "torch>=2.4\ntransformers>=5.0,<6\n"  # as setup.cfg's install_requires
                f"{GRADIO_REQUIREMENT}\npillow>=10.0\nnumpy>=1.24\n"
            )
            shown_name = Path(model_ref).name if local else model_ref
            data = SpaceCardData(
                title=f"vit-yoga: {shown_name}", emoji="🧘", colorFrom="indigo",
                colorTo="green", sdk="gradio", sdk_version=version("gradio"), app_file="app.py", pinned=False,
                license="apache-2.0", models=None if local else [model_ref], short_description="Yoga-82 poses: "
                "three levels, the path, and where the model looks",
            )
            body = (f"# vit-yoga demo\n\nServes `{shown_name}` (a ViTYoga checkpoint: 6 body positions → 20 "
                    "variations → 82 poses). Upload a photo to see each level's top 5, the most probable path and "
                    "the attention rollout map. Run it locally with `pip install -r requirements.txt && python "
                    "app.py`.\n\nExample photos: MIT licence, see `examples/LICENSE` and `examples/README.md`.\n")
            SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(staging / "README.md")
    except FileExistsError:
        raise DemoUsageError(f"--write_space {space_dir} already exists and is not empty: pass --overwrite to replace "
                             "it, or choose another folder.") from None
    return space_dir


# --------------------------------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="a train.py output folder or a Hub model id (default: the Space's model, "
                        "else the newest finished run under runs/)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on ($GRADIO_SERVER_NAME; 0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=int(os.environ["GRADIO_SERVER_PORT"])
                        if os.environ.get("GRADIO_SERVER_PORT") else None,
                        help="port ($GRADIO_SERVER_PORT; default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max_megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                        help="larger photos get a message instead of an answer")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--write_space", type=Path, metavar="DIR",
                        help="write a Hugging Face Space for --model into DIR and exit (no server)")
    parser.add_argument("--overwrite", action="store_true", help="let --write_space replace a non-empty DIR")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: the demo needs Gradio, which the core install leaves out: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        model_ref = args.model or default_model()
        if args.write_space:
            write_space(model_ref, args.write_space, overwrite=args.overwrite)
            print(f"Wrote a Space to {args.write_space}; push it with: hf upload --repo-type space YOU/NAME "
                  f"{args.write_space} .")
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        classifier = load_classifier(model_ref)
    except DemoUsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Loaded {model_ref} in {time.perf_counter() - start:.1f} s; levels {classifier.levels}.", flush=True)
    demo = build_demo(classifier, args.max_megapixels)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
