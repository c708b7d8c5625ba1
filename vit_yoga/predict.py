"""Classify a folder of photos: every level's top-k and the path through the tree, one row per photo.

    python -m vit_yoga.predict --model runs/all photos/ more/*.jpg one.png --output predictions.csv   # or .jsonl

Photos are decoded and prepared exactly as ``pipeline("hierarchical-image-classification")`` prepares them
(``vit_yoga.inference.load_photo``, then the checkpoint's image processor, or with ``--onnx`` its numpy twin) in
DataLoader workers, while the main process runs the model on batches, so decoding hides behind compute; the rows
are the pipeline's answers (``vit_yoga.torch_runtime`` / ``vit_yoga.onnx_runtime``). A file that cannot be read
becomes a row with its reason; the run goes on. The output appears complete or not at all
(``yoga_common.files.atomic_file``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from yoga_common.errors import UsageError
from yoga_common.files import atomic_file

from .inference import IMAGE_SUFFIXES, HierarchicalClassifier, load_photo

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".csv", ".jsonl")


# ---------------------------------------------------------------------------------------------- which files


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for image extensions) and globs (``**`` included), in the order given,
    each file once. A path that matches nothing stops here, before any work, naming it."""
    files: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            if not matches:
                raise UsageError(f"{pattern!r} matches no file; check the pattern (quote it to let Python expand **).")
        elif Path(pattern).exists():
            matches = [Path(pattern)]
        else:
            raise UsageError(f"{pattern} does not exist; give photo files, folders or glob patterns.")
        for match in matches:
            if match.is_dir():
                files += sorted(p for p in match.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            elif match.is_file():
                files.append(match)  # named by the user: kept whatever its extension (unreadable -> a row saying so)
    files = list(dict.fromkeys(files))
    if not files:
        raise UsageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(patterns)}.")
    return files


# ----------------------------------------------------------------------------------------------- the photos


class PhotoFiles(Dataset):
    """(index, pixel_values or None, reason or None) per file, prepared as the hierarchical pipeline does."""

    def __init__(self, files: Sequence[Path], classifier: HierarchicalClassifier) -> None:
        self.files, self.prepare = list(files), classifier.prepare

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, torch.as_tensor(self.prepare([load_photo(self.files[index])])[0]), None
        except Exception as error:  # any file can be anything: whatever stops its decoding becomes its row's reason
            return index, None, f"{type(error).__name__}: {error}"


def collate_photos(items: list[tuple[int, torch.Tensor | None, str | None]]) -> dict[str, Any]:
    readable = [(i, pixels) for i, pixels, _ in items if pixels is not None]
    return {
        "indices": [i for i, _ in readable],
        "pixel_values": torch.stack([pixels for _, pixels in readable]) if readable else None,
        "errors": [(i, reason) for i, _, reason in items if reason is not None],
    }


def predict_files(
    classifier: HierarchicalClassifier, files: Sequence[Path], *, batch_size: int = 32,
    num_workers: int | None = None, top_k: int = 5, decision: str = "probability", progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """One row per file, in the order given: ``{"file", "error", "levels", "path", "path_score"}`` (the last three
    the hierarchical pipeline's answer, each path node with the ``display`` name a person reads besides its
    ``label``; ``error`` is None or why the file could not be read)."""
    workers = default_workers() if num_workers is None else num_workers
    device = getattr(classifier, "device", None)
    loader = DataLoader(PhotoFiles(files, classifier), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_photos, pin_memory=device is not None and device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    with tqdm(total=len(files), unit="photo", disable=not progress, desc="predict") as bar:
        for batch in loader:
            rows: dict[int, dict[str, Any]] = {
                i: {"file": str(files[i]), "error": reason} for i, reason in batch["errors"]
            }
            if batch["pixel_values"] is not None:
                probabilities, _ = classifier.run_model(batch["pixel_values"])
                answers = classifier.describe(probabilities, top_k=top_k, decision=decision)
                for i, answer in zip(batch["indices"], answers, strict=True):
                    for node in answer["path"]:
                        node["display"] = classifier.tree.display(node["label"])
                    rows[i] = {"file": str(files[i]), "error": None, **answer}
            for i in sorted(rows):
                yield rows[i]
            bar.update(len(rows))


def default_workers() -> int:
    """One process fewer than the CPUs (the main process runs the model), at most eight; none on 2 CPUs or fewer,
    where a decoding process takes its CPU from the model's threads instead of hiding behind them (measured with
    benchmarks/bench_predict.py on 2 vCPUs: 84 % of the model alone without a worker, 76 % with one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return 0 if cpus <= 2 else min(8, cpus - 1)


# ------------------------------------------------------------------------------------------------ the output


def csv_row(row: dict[str, Any], levels: Sequence[str], top_k: int) -> dict[str, Any]:
    """A row flattened for a spreadsheet: the file, the error, the path (per level the class, the name a person
    reads, and the score), then each level's top-k labels and scores."""
    flat: dict[str, Any] = {"file": row["file"], "error": row["error"] or ""}
    path = {node["level"]: node for node in row.get("path", [])}
    for level in levels:
        flat[level] = path[level]["label"] if level in path else ""
        flat[f"{level}_name"] = path[level]["display"] if level in path else ""
        flat[f"{level}_score"] = f"{path[level]['score']:.6f}" if level in path else ""
    flat["path_score"] = f"{row['path_score']:.6f}" if "path_score" in row else ""
    for level in levels:
        top = row.get("levels", {}).get(level, [])
        for rank in range(top_k):
            flat[f"{level}_top{rank + 1}"] = top[rank]["label"] if rank < len(top) else ""
            flat[f"{level}_top{rank + 1}_score"] = f"{top[rank]['score']:.6f}" if rank < len(top) else ""
    return flat


def write_predictions(
    rows: Iterator[dict[str, Any]], output: Path, levels: Sequence[str], top_k: int
) -> dict[str, int]:
    """Stream the rows into ``output`` (.csv or .jsonl), which appears complete when the last row is written (a
    crash or Ctrl-C leaves the previous file). Returns the counts of predicted and unreadable files."""
    counts = {"predicted": 0, "unreadable": 0}
    with atomic_file(output, "w", newline="") as handle:
        writer = None
        for row in rows:
            counts["unreadable" if row["error"] else "predicted"] += 1
            if output.suffix == ".jsonl":
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            flat = csv_row(row, levels, top_k)
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(flat))
                writer.writeheader()
            writer.writerow(flat)
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_yoga.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", help="photo files, folders (searched recursively) and glob patterns")
    parser.add_argument("--model", help="a train.py output folder or a Hub model id")
    parser.add_argument("--onnx", metavar="DIR", help="instead of --model: a folder python -m vit_yoga.export wrote "
                        "(ONNX Runtime on the CPU; the same answers, see docs/deployment.md)")
    parser.add_argument("--int8", action="store_true", help="with --onnx: run its model_int8.onnx")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="a .csv or .jsonl file")
    parser.add_argument("--top_k", type=int, default=5, help="classes listed per level")
    parser.add_argument("--decision", choices=("probability", "risk"), default="probability",
                        help="the path: the most probable finest class, or the lowest expected tree distance")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=None,
                        help="decoding processes (default: CPUs - 1; 0 on 2 CPUs or fewer)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    parser.add_argument("--no_bf16", action="store_true", help="run in fp32 on a GPU too (default: bf16 autocast)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.output.suffix not in OUTPUT_FORMATS:
            raise UsageError(f"--output {args.output}: write a .csv or a .jsonl file.")
        if args.top_k < 1 or args.batch_size < 1:
            raise UsageError("--top_k and --batch_size must be at least 1.")
        if bool(args.model) == bool(args.onnx):
            raise UsageError("give --model (a checkpoint) or --onnx (an exported folder), one of them.")
        files = expand_paths(args.paths)
        if args.onnx:
            from .onnx_runtime import OnnxHierarchicalClassifier

            classifier: HierarchicalClassifier = OnnxHierarchicalClassifier(args.onnx, int8=args.int8)
        else:
            from .torch_runtime import load_checkpoint_classifier

            classifier = load_checkpoint_classifier(args.model, args.device, bf16=False if args.no_bf16 else None)
        rows = predict_files(classifier, files, batch_size=args.batch_size, num_workers=args.num_workers,
                             top_k=args.top_k, decision=args.decision)
        counts = write_predictions(rows, args.output, classifier.levels, args.top_k)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{counts['predicted']} photos predicted, {counts['unreadable']} unreadable (their rows say why): "
          f"{args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
