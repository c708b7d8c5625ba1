"""One command for a CUDA machine: ViT-Ti/16 and ViT-B/16 in bf16, eager and torch.compile, against the card's rate.

    python benchmarks/gpu.py                      # on the GPU machine, from the repository root; < 8 minutes
    python benchmarks/gpu.py --device cpu --tiny  # a dry run of the same code on a CPU (what the tests run)

It first measures the card's bf16 matrix-product rate (a large ``torch.matmul``, the ceiling any ViT could reach),
then times ViTYoga, transformers' ViT (sdpa) and timm's ViT with ``benchmarks/bench_model.py`` (interleaved rounds,
one process), and prints for each: images/s for a training step and for inference, the achieved TFLOP/s (matmul
FLOPs counted analytically: forward = 2 x multiply-adds of the patch embedding, qkv/proj/MLP linears, QK^T and AV;
training = 3 x forward) and its share of the measured matmul rate. Compiled runs cover ours and timm, training
only (each extra model or mode is another compilation and would push the run past 8 minutes; ``--compile-all`` and
``--compiled-modes train infer`` add them). Configurations that would start after
``--budget-s`` are skipped and listed. The table goes to stdout and, as JSON, to ``$OUT/gpu_bench.json`` when
``OUT`` is set (or ``--json``).

Needs only torch, transformers and timm.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model  # noqa: E402
from common import finish, machine_description  # noqa: E402

TARGET_COMPILED_TI_VS_TIMM_EAGER = 1.3
TARGET_B16_SHARE_OF_MATMUL = 0.45


def matmul_tflops(device: torch.device, size: int, repeats: int) -> float:
    """The bf16 matrix-product rate this card really reaches (dense square matmuls, fp32 accumulation)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    bench_model.synchronize(device)
    best = float("inf")
    for _ in range(3):  # the best of three bursts: the ceiling, not an average that includes clock ramps
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        bench_model.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * repeats / best / 1e12


def bench_args(args: argparse.Namespace, preset: str, batch_size: int, compiled: bool) -> argparse.Namespace:
    implementations = list(bench_model.IMPLEMENTATIONS)
    if compiled and not args.compile_all:
        implementations.remove("transformers")
    argv = [
        "--preset", preset, "--device", args.device, "--dtype", "bf16", "--batch-size", str(batch_size),
        "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--memory", "peak" if (args.memory and not compiled) else "none",
        "--implementations", *implementations,
        "--modes", *(args.compiled_modes if compiled else bench_model.MODES),
    ]
    if compiled:
        argv.append("--compile")
    return bench_model.parse_args(argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="vit-pico, batch 2, one round: a dry run of the code")
    parser.add_argument("--presets", nargs="+", default=["vit-ti16", "vit-b16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 128], help="one per preset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--no-compile", action="store_true", help="eager runs only")
    parser.add_argument("--compile-all", action="store_true", help="compile transformers' ViT too (slower)")
    parser.add_argument("--compiled-modes", nargs="+", default=["train"], choices=bench_model.MODES,
                        help="what the compiled runs time (each mode is one more compilation per model)")
    parser.add_argument("--memory", action="store_true", help="also peak training memory of the eager runs")
    parser.add_argument("--budget-s", type=float, default=400.0, help="start no configuration after this")
    parser.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu_bench.json when OUT is set")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            "no CUDA device visible to torch: this benchmark is for a GPU machine. "
            "For a dry run of the code on a CPU use: python benchmarks/gpu.py --device cpu --tiny"
        )
    if args.tiny:
        args.presets, args.batch_sizes, args.rounds, args.steps, args.warmup = ["vit-pico"], [2], 1, 1, 1
        args.matmul_size = 256
    if len(args.batch_sizes) != len(args.presets):
        parser.error(f"--batch-sizes needs one value per preset ({len(args.presets)}), got {args.batch_sizes}.")
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu_bench.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    machine = machine_description(device)
    print(f"{machine['device']} | torch {machine['torch']} | {machine['date']}", flush=True)
    peak = matmul_tflops(device, args.matmul_size, repeats=20 if device.type == "cuda" else 2)
    print(f"bf16 matmul {args.matmul_size}^3: {peak:.1f} TFLOP/s", flush=True)

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    reports: dict[str, Any] = {}
    for preset, batch_size in zip(args.presets, args.batch_sizes, strict=True):
        for compiled in (False,) if args.no_compile else (False, True):
            label = f"{preset} bs{batch_size} {'compile' if compiled else 'eager'}"
            if time.perf_counter() - started > args.budget_s:
                skipped.append(label)
                continue
            config_started = time.perf_counter()
            report = bench_model.run(bench_args(args, preset, batch_size, compiled))
            reports[label] = report
            flops = report["flops_per_image"]
            for name, numbers in report["throughput"].items():
                row = {"preset": preset, "batch_size": batch_size, "compile": compiled, "model": name}
                for mode, per_image in (("train", flops["train"]), ("infer", flops["forward"])):
                    if f"{mode}_images_per_s" not in numbers:
                        continue
                    images_per_s = numbers[f"{mode}_images_per_s"]
                    row[f"{mode}_images_per_s"] = images_per_s
                    row[f"{mode}_tflops"] = images_per_s * per_image / 1e12
                    row[f"{mode}_share_of_matmul"] = row[f"{mode}_tflops"] / peak
                if name in report.get("memory", {}):
                    row["peak_train_memory_gib"] = report["memory"][name]["peak_bytes"] / 2**30
                rows.append(row)
            print(f"{label}: {time.perf_counter() - config_started:.0f} s", flush=True)

    header = (
        "| model | preset | batch | compile | train img/s | train TFLOP/s | % matmul | infer img/s | infer TFLOP/s |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        infer = f"{row['infer_images_per_s']:.0f} | {row['infer_tflops']:.1f}" if "infer_tflops" in row else "- | -"
        lines.append(
            f"| {row['model']} | {row['preset']} | {row['batch_size']} | {'yes' if row['compile'] else 'no'} | "
            f"{row['train_images_per_s']:.0f} | {row['train_tflops']:.1f} | {100 * row['train_share_of_matmul']:.0f}% "
            f"| {infer} |"
        )
    targets = evaluate_targets(rows, args.presets)
    print(f"\n{machine['device']}, bf16 autocast, matmul rate {peak:.1f} TFLOP/s\n" + "\n".join(lines))
    for name, value in targets.items():
        print(f"{name}: {value}")
    if skipped:
        print(f"skipped (past --budget-s {args.budget_s:.0f} s): {', '.join(skipped)}")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")
    result = {"machine": machine, "matmul_tflops": peak, "rows": rows, "targets": targets, "skipped": skipped,
              "seconds": elapsed, "reports": reports}
    return finish(result, args.json)


def evaluate_targets(rows: list[dict[str, Any]], presets: list[str]) -> dict[str, Any]:
    """The issue's GPU targets, where this run measured what they need."""
    def find(preset: str, model: str, compiled: bool) -> dict[str, Any] | None:
        return next((r for r in rows if (r["preset"], r["model"], r["compile"]) == (preset, model, compiled)), None)

    targets: dict[str, Any] = {}
    small, large = presets[0], presets[-1]
    ours_compiled, timm_eager = find(small, bench_model.OURS, True), find(small, "timm", False)
    if ours_compiled and timm_eager:
        ratio = ours_compiled["train_images_per_s"] / timm_eager["train_images_per_s"]
        targets[f"{small} train, ours compiled / timm eager (target >= {TARGET_COMPILED_TI_VS_TIMM_EAGER})"] = (
            round(ratio, 3)
        )
    ours_large = [r for r in (find(large, bench_model.OURS, True), find(large, bench_model.OURS, False)) if r]
    if ours_large:
        best = max(r["train_share_of_matmul"] for r in ours_large)
        targets[f"{large} train, ours best share of matmul rate (target >= {TARGET_B16_SHARE_OF_MATMUL})"] = (
            round(best, 3)
        )
    return targets


if __name__ == "__main__":
    sys.exit(main())
