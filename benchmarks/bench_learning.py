"""How well train.py learns from little data, side by side with a plain reference, on 2 CPU cores.

    python benchmarks/bench_learning.py                       # everything (about 30 minutes on 2 cores)
    python benchmarks/bench_learning.py --tasks digits        # scikit-learn's digits only (a few minutes)
    python benchmarks/bench_learning.py --tasks synthetic --synthetic_epochs 10   # a smaller budget
    python benchmarks/bench_learning.py --smoke               # a few steps of each row (digits: 200 of them)
    python benchmarks/bench_learning.py --tasks real-photos --real_photos data/real-photos   # the real photos

Three tasks, one table:

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8 grey, upscaled to 32 px RGB PNGs, one subfolder per
  class, a fixed stratified 80/20 split), the small real data set a new user would try. A plain 30-line loop on
  transformers' ``ViTForImageClassification`` (4 layers, 96 wide, 3 heads, MLP 384, patch 4; AdamW lr 1e-3, batch
  64, 30 epochs, no augmentation) against ``train.py`` with the same model size, optimiser and schedule length,
  ``--hflip 0`` (digits are not mirror-symmetric) and every other default; then ``train.py`` with ``--recipe``
  choices.
- ``synthetic``: the built-in synthetic poses at their default size (40 images per pose, 64 px): ``train.py
  --label_level 3`` out of the box; level 1 then level 3 fine-tuned from it, at the same total budget; and the
  joint three-head model (``--label_level all``), read at level 3.
- ``real-photos``: the 415 real web photos of 7 Yoga-82 poses in ``../shared/real-photos`` (prepared with ``python -m
  yoga82 prepare``, or given with ``--real_photos``), at level 3, scored on their test split (103 photos): the plain
  loop on transformers' ViT of vit-pico's size at 64 px (82 outputs, the data set's classes), against ``train.py
  --model_preset vit-pico`` with each recipe (the default ``small-data``, ``report``, ``deit``) at the same batch size
  and number of epochs (``REAL_PHOTOS_SCHEDULE``); and level 1 then level 3 fine-tuned from it at the same total
  budget, against level 3 from scratch (the default row).

Every ``train.py`` row runs the script as a user does (a subprocess) and reads its ``*_results.json``; wall times
are the training's (``train_runtime``), whole runs' in brackets. The machine and the library versions head the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, finish, machine_summary, run_script, work_folder  # noqa: E402

TRAIN = PROJECT / "train.py"
DIGITS_MODEL = "image_size=32,patch_size=4"  # vit-pico's 4 x 96, 3 heads, MLP 384, at 32 px with patch 4
DIGITS_SCHEDULE = ["--num_train_epochs", "30", "--learning_rate", "1e-3", "--per_device_train_batch_size", "64"]
# 249 training photos: batches of 32 give 8 steps an epoch (the recipes' 256 would give one).
REAL_PHOTOS_EPOCHS = 40
REAL_PHOTOS_SCHEDULE = ["--model_preset", "vit-pico", "--per_device_train_batch_size", "32"]
REAL_PHOTOS_RELEASE = PROJECT.parent / "shared" / "real-photos"
SMOKE_DIGITS = 200  # --smoke: the digits' first 200 (every class), 160 to train on


# ------------------------------------------------------------------------------------------------------------ data
def write_digits(folder: Path, count: int | None = None) -> Path:
    """scikit-learn's digits as an image folder: train/<digit>/*.png and validation/<digit>/*.png (once). ``count``:
    only the first that many digits (every class: the data set cycles through them), still split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if (folder / "validation").is_dir():
        return folder
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    ids = np.arange(len(images))[:count]
    train, validation = train_test_split(ids, test_size=0.2, random_state=0, stratify=digits.target[ids])
    for split, ids in (("train", train), ("validation", validation)):
        for i in ids:
            target = folder / split / str(digits.target[i]) / f"{i:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB").save(target)
    return folder


def digits_folder(work: Path, smoke: bool) -> Path:
    """The digits under ``work``: all 1,797, or with ``--smoke`` the first SMOKE_DIGITS (a folder of their own)."""
    return write_digits(work / "digits-smoke", count=SMOKE_DIGITS) if smoke else write_digits(work / "digits")


def load_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = [], []
    for class_folder in sorted(folder.iterdir()):
        for path in sorted(class_folder.glob("*.png")):
            pixels.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(int(class_folder.name))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5, torch.tensor(labels)


# ------------------------------------------------------------------------------------------------------- the rows
def reference_loop(digits: Path, epochs: int, seed: int = 0) -> dict[str, Any]:
    """The plain loop: transformers' ViT, AdamW lr 1e-3, batch 64, no augmentation, no schedule."""
    return plain_loop(load_folder(digits / "train"), load_folder(digits / "validation"), dict(
        image_size=32, patch_size=4, hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
        num_labels=10), epochs, batch_size=64, seed=seed)


def plain_loop(train: tuple[torch.Tensor, torch.Tensor], evaluation: tuple[torch.Tensor, torch.Tensor],
               vit_config: dict[str, Any], epochs: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """transformers' ViTForImageClassification in a 10-line loop: AdamW lr 1e-3, no augmentation, no schedule."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    (xt, yt), (xv, yv) = train, evaluation
    model = ViTForImageClassification(ViTConfig(**vit_config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(xt)).split(batch_size):
            loss = model(pixel_values=xt[batch], labels=yt[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    wall = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        accuracy = (model(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()
    return {"accuracy": accuracy, "train_s": wall, "wall_s": wall}


def announce(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Add a row, and say so at once (a whole benchmark takes half an hour)."""
    rows.append(row)
    print(f"[{row['task']}] {row['run']}: top-1 {row['accuracy']:.3f}, {row['train_s']:.0f} s of training",
          file=sys.stderr, flush=True)


def run_train(args: list[str], output_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """train.py in a subprocess, as a user runs it; its results files."""
    out = run_script(TRAIN, args, output_dir, env)
    return {"train": out["train_results"], "eval": out["eval_results"], "test": out.get("test_results"),
            "wall_s": out["wall_s"]}


def digits_rows(work: Path, env: dict[str, str], smoke: bool, recipes: list[str]) -> list[dict[str, Any]]:
    digits = digits_folder(work, smoke)
    data = ["--train_dir", str(digits / "train"), "--validation_dir", str(digits / "validation"), "--label_column",
            "label", "--model_preset", "vit-pico", "--config_overrides", DIGITS_MODEL, "--hflip", "0",
            "--dataloader_num_workers", "0"]
    schedule = ["--max_steps", "3"] if smoke else DIGITS_SCHEDULE
    rows = []
    reference = reference_loop(digits, epochs=1 if smoke else 30)
    announce(rows, dict(task="digits", run="plain loop, transformers ViT (no augmentation)", **reference))
    variants = [("train.py, defaults (--hflip 0)", []),
                ("train.py, defaults, no crop (--hflip 0 --train_crop none)", ["--train_crop", "none"])] + [
        (f"train.py --recipe {recipe} (--hflip 0)", ["--recipe", recipe]) for recipe in recipes
    ]
    for name, extra in variants:
        out = run_train([*data, *schedule, *extra], work / "runs" / f"digits-{len(rows)}", env)
        announce(rows, dict(task="digits", run=name, accuracy=out["eval"]["eval_accuracy"],
                            train_s=out["train"]["train_runtime"], wall_s=out["wall_s"]))
    return rows


def synthetic_rows(work: Path, env: dict[str, str], smoke: bool, epochs: float | None) -> list[dict[str, Any]]:
    """Level 3 from scratch; level 1 then 3 at the same total budget; the joint model. ``epochs``: the budget of
    each (None: the out-of-the-box number)."""
    budget = epochs or read_default_epochs()
    short = ["--max_steps", "3"] if smoke else ([] if epochs is None else ["--num_train_epochs", str(budget)])
    half = ["--max_steps", "3"] if smoke else ["--num_train_epochs", str(budget / 2)]
    runs = work / "runs"
    rows = []

    def level3(out: dict[str, Any], name: str, seconds: float, wall: float, column: str = "") -> dict[str, Any]:
        test = out["test"]
        prefix = f"test_{column}_" if column else "test_"
        return dict(task="synthetic", run=name, accuracy=test[f"{prefix}accuracy"],
                    top5=test[f"{prefix}top5_accuracy"], train_s=seconds, wall_s=wall)

    scratch = run_train(["--label_level", "3", *short], runs / "level3", env)
    name = "level 3 from scratch" + (" (out of the box)" if epochs is None else f", {budget:g} epochs")
    announce(rows, level3(scratch, name, scratch["train"]["train_runtime"], scratch["wall_s"]))
    first = run_train(["--label_level", "1", *half], runs / "level1", env)
    then = run_train(["--label_level", "3", "--init_from", str(runs / "level1"), *half], runs / "level1to3", env)
    announce(rows, level3(then, f"level 1 ({budget / 2:g} epochs), then level 3 from it ({budget / 2:g} epochs)",
                          first["train"]["train_runtime"] + then["train"]["train_runtime"],
                          first["wall_s"] + then["wall_s"]))
    joint = run_train(["--label_level", "all", *short], runs / "joint", env)
    announce(rows, level3(joint, "joint: one model, three heads (--label_level all)", joint["train"]["train_runtime"],
                          joint["wall_s"], column="label_82"))
    return rows


def real_photos_folder(work: Path, given: Path | None) -> Path:
    """The prepared real photos: ``given``, or ``python -m yoga82 prepare`` of ../shared/real-photos into ``work``."""
    if given is not None:
        return given
    folder = work / "real-photos"
    if not (folder / "README.md").is_file():
        sys.path.insert(0, str(PROJECT))
        from yoga82 import prepare

        prepare(REAL_PHOTOS_RELEASE, REAL_PHOTOS_RELEASE / "images", folder)
    return folder


def load_photos(folder: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared split's photos as the checkpoints' processor prepares them (transformers' ViTImageProcessor:
    resized to a square, scaled to [-1, 1]) and their pose ids."""
    import datasets
    from transformers import ViTImageProcessor

    dataset = datasets.load_dataset(str(folder), split=split)
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    pixels = processor(images=[image.convert("RGB") for image in dataset["image"]], return_tensors="pt")
    return pixels["pixel_values"], torch.tensor(dataset["label_82"])


def real_photos_rows(work: Path, env: dict[str, str], smoke: bool, recipes: list[str],
                     folder: Path | None, epochs: int | None = None) -> list[dict[str, Any]]:
    """The recipes against the plain loop, and level 1 -> 3 against scratch, on the real photos (test split), each
    for ``epochs`` (default REAL_PHOTOS_EPOCHS)."""
    folder = real_photos_folder(work, folder)
    epochs = 1 if smoke else (epochs or REAL_PHOTOS_EPOCHS)
    schedule = [*REAL_PHOTOS_SCHEDULE, *(["--max_steps", "3"] if smoke else ["--num_train_epochs", str(epochs)])]
    half = [*REAL_PHOTOS_SCHEDULE, *(["--max_steps", "3"] if smoke else ["--num_train_epochs", str(epochs / 2)])]
    data = ["--dataset_name", str(folder), "--label_level", "3"]
    runs = work / "runs"
    rows = []
    reference = plain_loop(load_photos(folder, "train", 64), load_photos(folder, "test", 64), dict(
        image_size=64, patch_size=8, hidden_size=96, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=384, num_labels=82), epochs, batch_size=32)
    announce(rows, dict(task="real photos", run="plain loop, transformers ViT (no augmentation)", **reference))

    def row(out: dict[str, Any], name: str, *earlier: dict[str, Any]) -> dict[str, Any]:
        return dict(task="real photos", run=name, accuracy=out["test"]["test_accuracy"],
                    top5=out["test"]["test_top5_accuracy"],
                    train_s=sum(o["train"]["train_runtime"] for o in (*earlier, out)),
                    wall_s=sum(o["wall_s"] for o in (*earlier, out)))

    for name, extra in [("train.py, defaults (small-data recipe)", [])] + [
            (f"train.py --recipe {recipe}", ["--recipe", recipe]) for recipe in recipes]:
        out = run_train([*data, *schedule, *extra], runs / f"real-{len(rows)}", env)
        announce(rows, row(out, name))
    first = run_train(["--dataset_name", str(folder), "--label_level", "1", *half], runs / "real-level1", env)
    then = run_train([*data, *half, "--init_from", str(runs / "real-level1")], runs / "real-level1to3", env)
    announce(rows, row(then, f"train.py, level 1 ({epochs / 2:g} epochs), then level 3 from it ({epochs / 2:g})",
                       first))
    return rows


def read_default_epochs() -> float:
    """The out-of-the-box epochs, from the one place defaults live."""
    sys.path.insert(0, str(PROJECT))
    from vit_yoga.recipes import run_defaults

    defaults, _, _ = run_defaults(synthetic=True, init_from=None, label_level="3", label_column=None, world_size=1,
                                  recipe=None)
    return float(defaults["num_train_epochs"])


# ----------------------------------------------------------------------------------------------------------- table
def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | run | top-1 | train time (whole run) |", "|---|---|---|---|"]
    for row in rows:
        top5 = f" (top-5 {row['top5']:.3f})" if "top5" in row else ""
        lines.append(f"| {row['task']} | {row['run']} | {row['accuracy']:.3f}{top5} | "
                     f"{row['train_s'] / 60:.1f} min ({row['wall_s'] / 60:.1f} min) |")
    return "\n".join(lines)


def task_parser(description: str, tasks: list[str], smoke: str) -> argparse.ArgumentParser:
    """The flags this script and bench_pretraining.py share: ``--tasks`` (default: ``tasks`` in that order, the real
    photos only where ../shared/real-photos is), ``--real_photos``, ``--synthetic_epochs``, ``--smoke`` (its help
    starts with ``smoke``), ``--work_dir``, ``--json``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=["digits", "synthetic", "real-photos"],
                        default=[task for task in tasks if task != "real-photos" or REAL_PHOTOS_RELEASE.is_dir()])
    parser.add_argument("--real_photos", type=Path, default=None,
                        help="the prepared real photos (default: prepare ../shared/real-photos into the work folder)")
    parser.add_argument("--synthetic_epochs", type=float, default=None,
                        help="train.py's budget on the synthetic poses (default: its out-of-the-box number)")
    parser.add_argument("--smoke", action="store_true", help=f"{smoke}: checks the script, not learning")
    parser.add_argument("--work_dir", type=Path, default=None, help="keep the data and runs here")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = task_parser(__doc__, ["digits", "synthetic", "real-photos"], "a few steps per row (digits: 200 of them)")
    parser.add_argument("--recipes", nargs="*", default=["report", "deit"],
                        help="train.py --recipe rows on digits and the real photos")
    parser.add_argument("--real_photos_epochs", type=int, default=None,
                        help=f"the real-photo rows' budget in epochs (default: {REAL_PHOTOS_EPOCHS})")
    args = parser.parse_args(argv)
    with work_folder("vit-yoga-bench-learning-", args.work_dir) as (work, env):
        jobs: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "digits": lambda: digits_rows(work, env, args.smoke, args.recipes),
            "synthetic": lambda: synthetic_rows(work, env, args.smoke, args.synthetic_epochs),
            "real-photos": lambda: real_photos_rows(work, env, args.smoke, args.recipes, args.real_photos,
                                                    args.real_photos_epochs),
        }
        rows = [row for task in args.tasks for row in jobs[task]()]
    report = {"machine": machine_summary(), "rows": rows}
    return finish(report, args.json, f"Machine: {report['machine']}\n\n{format_table(rows)}")


if __name__ == "__main__":
    sys.exit(main())
