"""The training input pipeline's throughput: images per second per worker, and through a DataLoader with N workers.

    python benchmarks/bench_data.py --json runs/bench_data.json
    python benchmarks/bench_data.py --num-images 3000 --workers 0 2 --image-dir /tmp/vit-yoga-bench-images

It generates two image sets (once; ``--image-dir`` keeps them for the next run, otherwise a temporary folder is
removed at exit): "web" JPEGs of varied sizes, 300 to 2000 px on the long side and common aspect ratios, as a
scrape of the web delivers them, and "prepared" JPEGs of the same pictures at 256 px on the short side, as a
prepared data set stores them. On each set it times, in one process with one thread (what a DataLoader worker
gets), interleaved in rounds:

- ``train``: train.py's ``TrainingTransform(224)`` with the report recipe's augmentation, on
  ``{"bytes", "path"}`` dicts, exactly what a datasets ``Image(decode=False)`` column hands it: JPEG draft-mode
  decoding, uint8 resize/crop/flip, RandAugment on PIL, one conversion to float at the end;
- ``eval``: train.py's ``EvaluationTransform``: the image as the pipeline loads it (full decode, EXIF orientation,
  RGB) through the checkpoint's image processor (resize, rescale, normalise);
- ``train-full-decode``: the train transform given an already fully decoded PIL image (no draft mode): what draft
  mode saves;
- ``train-float-first``: the same augmentations on a float tensor converted right after decoding (the common
  ``ToTensor()``-first order): what staying in uint8 saves;
- ``train-tensor-randaugment``: the train transform with RandAugment on the uint8 tensor instead of a PIL image;
- ``vit-image-processor``: PIL decode plus the ``ViTImageProcessor`` a ViTYoga checkpoint ships with (resize,
  rescale, normalise; no augmentation), the path through transformers (torchvision-backed since transformers 5);
- ``vit-image-processor-pil``: the same through ``ViTImageProcessorPil`` (numpy/PIL, transformers' older path).

Then the DataLoader throughput (batch 64, the train transform, the default collate) for each ``--workers`` value.
Rates per worker are images per second of wall time and of this process's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

REPO_ROOT = Path(__file__).resolve().parent.parent
for folder in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from common import finish, machine_description  # noqa: E402

IMAGE_SIZE = 224
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
ASPECT_RATIOS = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)
IMAGE_SETS = ("prepared", "web")
GPU_WORKERS = 16  # the GPU machine's cores: what the per-worker rate is projected to


# --------------------------------------------------------------------------------------------------------------
# Test images
# --------------------------------------------------------------------------------------------------------------
def synthetic_photo(width: int, height: int, rng: random.Random) -> Image.Image:
    """Smooth colour fields plus grain: compresses (and so decodes) like a photo, unlike noise or flat colour."""
    coarse = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3)))
    image = coarse.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((width, height), 24).convert("RGB")
    return Image.blend(image, grain, 0.15)


def generate_images(folder: Path, count: int, seed: int = 0) -> dict[str, list[Path]]:
    """``count`` web-like JPEGs and their 256-px prepared versions; files already there (same names) are kept."""
    paths: dict[str, list[Path]] = {name: [] for name in IMAGE_SETS}
    for name in IMAGE_SETS:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        web, prepared = folder / "web" / f"{index:05d}.jpg", folder / "prepared" / f"{index:05d}.jpg"
        if not (web.exists() and prepared.exists()):
            rng = random.Random(seed * 1_000_003 + index)  # one stream per image: the set is the same however made
            long_side, aspect = rng.randint(300, 2000), rng.choice(ASPECT_RATIOS)
            width, height = (long_side, round(long_side / aspect))
            if aspect < 1:
                width, height = round(long_side * aspect), long_side
            image = synthetic_photo(width, height, rng)
            save_jpeg(image, web, quality=rng.choice((80, 85, 90, 95)))
            scale = 256 / min(width, height)
            small = image.resize((max(256, round(width * scale)), max(256, round(height * scale))), Image.BILINEAR)
            save_jpeg(small, prepared, quality=90)
        paths["web"].append(web)
        paths["prepared"].append(prepared)
    return paths


def save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    image.save(temporary, format="JPEG", quality=quality)
    temporary.replace(path)


# --------------------------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------------------------
def load_train_transform(image_size: int) -> Callable[[Any], torch.Tensor]:
    """train.py's training transform (vit_yoga.transforms.TrainingTransform) with the report recipe's augmentation."""
    try:
        from vit_yoga.recipes import REPORT_RECIPE
        from vit_yoga.transforms import TrainingTransform
    except ImportError as error:
        raise SystemExit(
            f"benchmarks/bench_data.py needs vit_yoga.transforms and its dependencies ({error}); run it from the "
            "repository with the project installed (pip install -e .)."
        ) from error
    augmentation = {k: REPORT_RECIPE[k] for k in ("train_crop", "hflip", "rand_augment_ops")}
    return TrainingTransform(image_size, IMAGE_MEAN, IMAGE_STD, **augmentation)


def float_first_transform(image_size: int) -> v2.Compose:
    """train.py's augmentations, but on a float tensor made right after decoding (the ToTensor()-first habit)."""
    load_size = round(image_size * 256 / 224)
    return v2.Compose([
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Resize((load_size, load_size), antialias=True),
        v2.RandomCrop(image_size), v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2),
        v2.Normalize(list(IMAGE_MEAN), list(IMAGE_STD)),
    ])


def tensor_randaugment_transform(image_size: int) -> Callable[[Any], torch.Tensor] | None:
    """train.py's transform as it was before, with RandAugment on the uint8 tensor: what running it on PIL saves.

    benchmarks/README.md gives the measured difference.
    """
    try:
        from vit_yoga.transforms import CROP_RATIO, open_image
    except ImportError:
        return None
    load_size = round(image_size * CROP_RATIO)
    pipeline = v2.Compose([
        v2.PILToTensor(), v2.Resize((load_size, load_size), antialias=True), v2.RandomCrop(image_size),
        v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(IMAGE_MEAN), list(IMAGE_STD)),
    ])
    return lambda image: pipeline(open_image(image, draft_size=load_size))


def pipelines(image_size: int) -> dict[str, Callable[[Path], torch.Tensor]]:
    from configuration_vit_yoga import ViTYogaConfig
    from modeling_vit_yoga import vit_yoga_image_processor
    from vit_yoga.transforms import EvaluationTransform

    train = load_train_transform(image_size)
    processor = vit_yoga_image_processor(ViTYogaConfig(image_size=image_size), IMAGE_MEAN, IMAGE_STD)
    evaluate = EvaluationTransform(processor)
    float_first = float_first_transform(image_size)
    tensor_randaugment = tensor_randaugment_transform(image_size)

    def as_datasets_dict(path: Path) -> dict[str, Any]:
        return {"bytes": path.read_bytes(), "path": None}  # what Image(decode=False) gives for a Parquet data set

    def full_decode(path: Path) -> Image.Image:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            return image.convert("RGB")

    variants = {
        "train": lambda path: train(as_datasets_dict(path)),
        "eval": lambda path: evaluate(as_datasets_dict(path)),
        "train-full-decode": lambda path: train(full_decode(path)),
        "train-float-first": lambda path: float_first(full_decode(path)),
        "vit-image-processor": lambda path: processor(full_decode(path), return_tensors="pt")["pixel_values"][0],
    }
    if tensor_randaugment is not None:
        variants["train-tensor-randaugment"] = lambda path: tensor_randaugment(as_datasets_dict(path))
    try:  # transformers >= 5 also has the numpy/PIL implementation (what every processor was before 5.0)
        from transformers import ViTImageProcessorPil
    except ImportError:
        pass
    else:
        pil_processor = ViTImageProcessorPil(**processor.to_dict() | {"image_processor_type": None})
        variants["vit-image-processor-pil"] = (
            lambda path: torch.as_tensor(pil_processor(full_decode(path), return_tensors="np")["pixel_values"][0])
        )
    return variants


def measure_per_worker(
    paths: dict[str, list[Path]], transforms: dict[str, Callable[[Path], torch.Tensor]], images: int, rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per image set and pipeline: images/s (wall and CPU time), interleaved: each round runs every pipeline once."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    per_round = max(1, images // rounds)
    for image_set in IMAGE_SETS:
        files = paths[image_set]
        samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in transforms}
        for name, transform in transforms.items():  # warm-up: imports, first-call set-up
            expected = transform(files[0])
            if tuple(expected.shape) != (3, IMAGE_SIZE, IMAGE_SIZE) or expected.dtype != torch.float32:
                raise RuntimeError(f"pipeline {name} returned {expected.dtype} {tuple(expected.shape)}")
        names = list(transforms)
        for round_index in range(rounds):
            chunk = [files[(round_index * per_round + i) % len(files)] for i in range(per_round)]
            for name in names[round_index % len(names):] + names[: round_index % len(names)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                for path in chunk:
                    transforms[name](path)
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                samples[name]["wall"].append(len(chunk) / wall)
                samples[name]["cpu"].append(len(chunk) / max(cpu, 1e-9))
        results[image_set] = {
            name: {
                "images_per_s": statistics.median(values["wall"]),
                "images_per_cpu_s": statistics.median(values["cpu"]),
            }
            for name, values in samples.items()
        }
    return results


class ImageFiles(torch.utils.data.Dataset):
    """JPEG files through the train transform, handed over as datasets' Image(decode=False) dicts."""

    def __init__(self, files: list[Path], transform: Callable[[Any], torch.Tensor]) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform({"bytes": self.files[index].read_bytes(), "path": None})


def measure_dataloader(files: list[Path], workers: int, batch_size: int) -> float:
    """Images per second out of a DataLoader, from the first batch on (worker start-up is not the steady state)."""
    transform = load_train_transform(IMAGE_SIZE)
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    start, count, first_batch_done, steady_count = time.perf_counter(), 0, 0.0, 0
    for batch in loader:
        count += batch.shape[0]
        if not first_batch_done:
            first_batch_done = time.perf_counter()
        else:
            steady_count += batch.shape[0]
    end = time.perf_counter()
    if steady_count:  # steady state: from the first batch on (worker start-up is a one-off)
        return steady_count / (end - first_batch_done)
    return count / (end - start)  # a single batch: all of it, start-up included


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['machine']['device']} | torch {report['machine']['torch']} | {report['settings']['num_images']} "
        f"images per set | {IMAGE_SIZE} px | 1 thread per worker",
        "| pipeline | " + " | ".join(f"{name} img/s (CPU-time img/s)" for name in IMAGE_SETS) + " |",
        "|---|" + "---|" * len(IMAGE_SETS),
    ]
    per_worker = report["per_worker"]
    for name in per_worker[IMAGE_SETS[0]]:
        cells = [
            f"{per_worker[s][name]['images_per_s']:.0f} ({per_worker[s][name]['images_per_cpu_s']:.0f})"
            for s in IMAGE_SETS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for image_set, ratios in report["ratios"].items():
        lines.append(f"{image_set}: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))
    for image_set, rates in report.get("dataloader", {}).items():
        lines.append(f"DataLoader {image_set}: " + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in rates.items()))
    for image_set, rate in report["projection"].items():
        lines.append(f"projected {GPU_WORKERS} workers x train per-worker rate, {image_set}: {rate:.0f} img/s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=2000, help="images per set to generate")
    parser.add_argument("--measure-images", type=int, default=300, help="images per pipeline and set to time")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size")
    parser.add_argument("--image-dir", type=Path, default=None, help="keep the generated images here (reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for flag in ("num_images", "measure_images", "rounds", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1.")
    if any(w < 0 for w in args.workers):
        parser.error("--workers takes counts of 0 or more.")
    return args


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.set_num_threads(1)  # what each DataLoader worker runs with
    started = time.perf_counter()
    paths = generate_images(folder, args.num_images, args.seed)
    generate_seconds = time.perf_counter() - started
    per_worker = measure_per_worker(paths, pipelines(IMAGE_SIZE), args.measure_images, args.rounds)
    ratios = {
        image_set: {
            f"{name}_vs_{reference}": results[name]["images_per_cpu_s"] / results[reference]["images_per_cpu_s"]
            for reference in ("vit-image-processor", "vit-image-processor-pil") if reference in results
            for name in ("train", "eval", "train-tensor-randaugment") if name in results
        }
        | {
            "draft_decode_speedup": results["train"]["images_per_cpu_s"]
            / results["train-full-decode"]["images_per_cpu_s"],
            "uint8_speedup": results["train-full-decode"]["images_per_cpu_s"]
            / results["train-float-first"]["images_per_cpu_s"],
        }
        for image_set, results in per_worker.items()
    }
    dataloader = {
        image_set: {str(workers): measure_dataloader(paths[image_set], workers, args.batch_size) for workers in
                    args.workers}
        for image_set in IMAGE_SETS
    } if args.workers else {}
    return {
        "machine": machine_description(torch.device("cpu")),
        "settings": {
            "num_images": args.num_images, "measure_images": args.measure_images, "rounds": args.rounds,
            "workers": args.workers, "batch_size": args.batch_size, "image_size": IMAGE_SIZE,
            "generate_seconds": generate_seconds,
            "command": " ".join(["python benchmarks/bench_data.py", *args.argv]),
        },
        "per_worker": per_worker,
        "ratios": ratios,
        "dataloader": dataloader,
        "projection": {
            image_set: GPU_WORKERS * per_worker[image_set]["train"]["images_per_cpu_s"] for image_set in IMAGE_SETS
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.image_dir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vit-yoga-bench-images-")))
        else:
            folder = args.image_dir
        report = run(args, folder)
    return finish(report, args.json, format_report(report))


if __name__ == "__main__":
    sys.exit(main())
