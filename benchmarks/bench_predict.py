"""Classifying a folder of photos: ``python -m vit_yoga.predict`` against a loop over
``pipeline("image-classification")`` (one call per photo, and one call with ``batch_size=16``) and against the model
alone on ready tensors (the limit).

All four run in one process on the same photos and the same checkpoint (an untrained ViT-Yoga of the preset with
Yoga-82's hierarchy: speed does not depend on the weights), in interleaved rounds; each number is the median over
rounds and each ratio the median of the per-round ratios. predict's time covers everything its command does after
loading the model: listing, decoding in DataLoader workers, preprocessing, the model, the tree, the rows, the CSV.

    python benchmarks/bench_predict.py --preset vit-ti16 --photos 128 --threads 2 --json runs/bench_predict.json

Photos: real web photos from ../shared/real-photos when it is there (``--photo_dir`` to choose), else generated
web-like JPEGs (bench_data's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import finish, machine_description  # noqa: E402

REAL_PHOTOS = REPO_ROOT.parent / "shared" / "real-photos" / "images"


def make_checkpoint(preset: str, folder: Path, image_size: int | None = None) -> Path:
    """An untrained ViT-Yoga of ``preset`` (conv stem, the default recipe's) for Yoga-82's 82 poses, with its
    hierarchy, saved as train.py saves a run: weights, config, model code, image processor, the hierarchical pipeline.
    One head (``--label_level 3``, the out-of-the-box run of docs/training.md); its tree gives all three levels."""
    import yoga82
    from configuration_vit_yoga import ViTYogaConfig
    from modeling_vit_yoga import ViTYogaForImageClassification, vit_yoga_image_processor
    from vit_yoga.models import save_hierarchical_pipeline

    hierarchy = yoga82.hierarchy()
    names = hierarchy["hierarchy_class_names"][-1]
    overrides = {"image_size": image_size} if image_size else {}
    config = ViTYogaConfig.from_preset(preset, **hierarchy, patch_embedding_type="conv_stem", **overrides,
                                       label_level="label_82", id2label=dict(enumerate(names)),
                                       label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    ViTYogaForImageClassification(config).save_pretrained(folder)
    vit_yoga_image_processor(config).save_pretrained(folder)
    save_hierarchical_pipeline(folder)
    return folder


def photo_files(count: int, photo_dir: Path | None, scratch: Path) -> list[Path]:
    """``count`` photos: the real ones (every pose folder in turn) when there, else generated web-like JPEGs."""
    folder = photo_dir or (REAL_PHOTOS if REAL_PHOTOS.is_dir() else None)
    if folder is None:
        from bench_data import generate_images

        return generate_images(scratch / "generated", count)["web"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if not files:
        raise SystemExit(f"error: no photos under {folder}")
    return (files * (count // len(files) + 1))[:count] if len(files) < count else files[:: len(files) // count][:count]


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from transformers import pipeline
    from transformers.image_utils import load_image

    from vit_yoga.predict import predict_files, write_predictions
    from vit_yoga.torch_runtime import load_checkpoint_classifier

    torch.set_num_threads(args.threads)
    checkpoint = make_checkpoint(args.preset, scratch / "checkpoint", args.image_size)
    files = photo_files(args.photos, args.photo_dir, scratch)
    classify = pipeline("image-classification", model=str(checkpoint), trust_remote_code=True, device="cpu")
    classifier = load_checkpoint_classifier(str(checkpoint), device="cpu")
    ready = torch.cat([classifier.processor(images=load_image(str(f)), return_tensors="pt")["pixel_values"]
                       for f in files])

    def model_alone() -> None:
        with torch.inference_mode():
            for batch in ready.split(args.batch_size):
                classifier.model(pixel_values=batch)

    def predict() -> None:
        rows = predict_files(classifier, files, batch_size=args.batch_size, num_workers=args.num_workers,
                             progress=False)
        write_predictions(rows, scratch / "predictions.csv", classifier.levels, 5)

    candidates = {
        "pipeline loop": lambda: [classify(str(f)) for f in files],
        "pipeline batch_size=16": lambda: classify([str(f) for f in files], batch_size=16),
        "predict": predict,
        "model alone": model_alone,
    }
    for candidate in candidates.values():  # warm-up: first calls allocate, compile kernels, fork workers
        timed(candidate)
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            rates[name].append(len(files) / timed(candidates[name]))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items()),
              flush=True)
    per_round = list(zip(*rates.values(), strict=True))
    index = {name: i for i, name in enumerate(names)}
    report = {
        "machine": machine_description(torch.device("cpu")) | {"threads": args.threads, "cpus": os.cpu_count(),
                                                               "load_average": os.getloadavg()},
        "settings": {"preset": args.preset, "image_size": classifier.model.config.image_size, "photos": len(files),
                     "photo_source": str(args.photo_dir or (REAL_PHOTOS if REAL_PHOTOS.is_dir() else "generated")),
                     "batch_size": args.batch_size, "num_workers": args.num_workers, "rounds": args.rounds},
        "images_per_second": {name: statistics.median(r) for name, r in rates.items()},
        "predict_over_loop": statistics.median(r[index["predict"]] / r[index["pipeline loop"]] for r in per_round),
        "predict_over_pipeline_batched": statistics.median(
            r[index["predict"]] / r[index["pipeline batch_size=16"]] for r in per_round),
        "predict_over_model_alone": statistics.median(
            r[index["predict"]] / r[index["model alone"]] for r in per_round),
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"{s['preset']} at {s['image_size']} px, {s['photos']} photos ({s['photo_source']}), "
             f"{report['machine']['threads']} threads, batch {s['batch_size']}, workers {s['num_workers']}, "
             f"load average {report['machine']['load_average'][0]:.1f}",
             "| way | img/s |", "|---|---|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in report["images_per_second"].items()]
    lines.append(f"predict / pipeline loop = {report['predict_over_loop']:.2f}x (target >= 1.6); predict / pipeline "
                 f"batch_size=16 = {report['predict_over_pipeline_batched']:.2f}x; predict / model alone = "
                 f"{report['predict_over_model_alone']:.0%} (target >= 85%)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--image_size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--photo_dir", type=Path, default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=None, help="predict's workers (default: its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.num_workers is None:
        from vit_yoga.predict import default_workers

        args.num_workers = default_workers()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        report = run(args, Path(scratch))
    return finish(report, args.json, format_report(report))


if __name__ == "__main__":
    sys.exit(main())
