"""ViTYoga against transformers' ViT (sdpa) and timm's ViT: throughput, peak memory, and the ratios ours/theirs.

All three models are built from one ViTYogaConfig (same sizes, same batch, same loss and optimizer), live in one
process and are timed in interleaved rounds (the order rotates every round), so that a noisy machine slows all of
them alike; each number is the median over rounds and each ratio the median of the per-round ratios.

    python benchmarks/bench_model.py --preset vit-ti16 --batch-size 32 --json runs/bench_ti.json
    python benchmarks/bench_model.py --device cuda --dtype bf16 --compile --preset vit-b16 --batch-size 128

Peak memory is measured in a fresh subprocess per model, so that one model's allocations cannot hide another's:
on CUDA with ``torch.cuda.max_memory_allocated``; on CPU from the kernel's resident-set high-water mark (VmHWM,
reset through /proc/self/clear_refs after ``malloc_trim``), which counts every allocation the step really makes,
oneDNN workspaces included, and which torch's own counters do not cover on CPU. Activation memory is the peak
during a training step minus what persists across steps (parameters, AdamW state) and minus the gradients.

This file imports only torch, transformers, timm and the repository's model files (``gpu.py`` imports it on a
machine that has nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
for folder in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from common import finish, machine_description  # noqa: E402

from configuration_vit_yoga import VIT_YOGA_PRESETS, ViTYogaConfig  # noqa: E402
from modeling_vit_yoga import ViTYogaForImageClassification  # noqa: E402

IMPLEMENTATIONS = ("vit-yoga", "transformers", "timm")
OURS = "vit-yoga"
MODES = ("train", "infer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NUM_LABELS = 82  # Yoga-82's finest level


# --------------------------------------------------------------------------------------------------------------
# The models, built from one config
# --------------------------------------------------------------------------------------------------------------
def make_config(preset: str, image_size: int | None = None) -> ViTYogaConfig:
    overrides: dict[str, Any] = {"num_labels": NUM_LABELS}
    if image_size is not None:
        overrides["image_size"] = image_size
    return ViTYogaConfig.from_preset(preset, **overrides)


def build_model(implementation: str, config: ViTYogaConfig) -> nn.Module:
    """One implementation of the same ViT: fresh weights, dropout off, attention through sdpa where there's a choice."""
    if implementation == OURS:
        config._attn_implementation = "sdpa"
        return ViTYogaForImageClassification(config)
    if implementation == "transformers":
        from transformers import ViTForImageClassification

        from vit_yoga.convert import vit_config_from

        return ViTForImageClassification(vit_config_from(
            config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=config.num_labels,
            attn_implementation="sdpa",
        ))
    if implementation == "timm":
        from vit_yoga.convert import timm_vit_from_config

        return timm_vit_from_config(config)
    raise ValueError(f"Unknown implementation {implementation!r}; choose from {IMPLEMENTATIONS}.")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "set_grad_checkpointing"):  # timm
        model.set_grad_checkpointing(True)
    elif hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        model.activation_checkpointing_enable()
    else:  # transformers' PreTrainedModel contract (ours and theirs)
        model.gradient_checkpointing_enable()


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    output = model(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


# --------------------------------------------------------------------------------------------------------------
# One training step and one inference batch, identical for every implementation
# --------------------------------------------------------------------------------------------------------------
def autocast_for(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 means mixed precision (fp32 weights and optimizer, bf16 matmuls), as Trainer's --bf16 runs it."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # fused AdamW on CUDA (one kernel for all tensors), the default loop on CPU; the same for every implementation.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda" or None)


class Runner:
    """One implementation ready to step: model (maybe compiled), optimizer, and a fixed batch on the device."""

    def __init__(self, implementation: str, config: ViTYogaConfig, args: argparse.Namespace) -> None:
        self.implementation = implementation
        self.device = torch.device(args.device)
        self.model = build_model(implementation, config).to(self.device)
        if getattr(args, "grad_ckpt", False):
            enable_gradient_checkpointing(self.model)
        self.optimizer = make_optimizer(self.model, self.device)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.autocast = autocast_for(self.device, DTYPES[args.dtype])
        generator = torch.Generator().manual_seed(0)
        size = (args.batch_size, config.num_channels, config.image_size, config.image_size)
        self.pixel_values = torch.randn(size, generator=generator).to(self.device)
        self.labels = torch.randint(0, config.num_labels, (args.batch_size,), generator=generator).to(self.device)

    def train_step(self) -> None:
        self.model.train()
        with self.autocast():
            logits = logits_of(self.forward, self.pixel_values)
        F.cross_entropy(logits.float(), self.labels).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            logits_of(self.forward, self.pixel_values)

    def step(self, mode: str) -> None:
        self.train_step() if mode == "train" else self.infer_step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(runner: Runner, mode: str, steps: int) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds for ``steps`` steps."""
    synchronize(runner.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        runner.step(mode)
    synchronize(runner.device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure_throughput(args: argparse.Namespace, config: ViTYogaConfig) -> dict[str, Any]:
    """Images per second, interleaved: every round times every implementation once per mode, order rotating."""
    runners = {name: Runner(name, config, args) for name in args.implementations}
    for runner in runners.values():  # warm-up: allocator, oneDNN/cuBLAS plans, torch.compile
        for mode in args.modes:
            for _ in range(args.warmup):
                runner.step(mode)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
    names = list(runners)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            for mode in args.modes:
                seconds, cpu_seconds = time_steps(runners[name], mode, args.steps)
                images = args.batch_size * args.steps
                samples[name].setdefault(f"{mode}_samples", []).append(images / seconds)
                samples[name].setdefault(f"{mode}_cpu_samples", []).append(images / max(cpu_seconds, 1e-9))
    results: dict[str, Any] = {}
    for name in names:
        results[name] = {
            f"{mode}_images_per_s": statistics.median(samples[name][f"{mode}_samples"]) for mode in args.modes
        } | samples[name]
    return results


def paired_ratios(throughput: dict[str, Any], modes: list[str], clock: str = "") -> dict[str, float]:
    """ours/theirs per mode: the median of the per-round ratios (each pair measured minutes apart at most).

    ``clock="cpu"`` uses images per CPU-second of this process instead of per wall second: on a shared machine other
    processes stretch wall time but barely touch a process's own CPU time (exactly so with --threads 1).
    """
    ratios: dict[str, float] = {}
    if OURS not in throughput:
        return ratios
    key = "_cpu_samples" if clock == "cpu" else "_samples"
    for other in throughput:
        if other == OURS:
            continue
        for mode in modes:
            ours, theirs = throughput[OURS][mode + key], throughput[other][mode + key]
            ratios[f"{mode}_vs_{other}"] = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return ratios


# --------------------------------------------------------------------------------------------------------------
# Peak memory, one fresh subprocess per model
# --------------------------------------------------------------------------------------------------------------
def _resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}; CPU peak memory needs Linux.")


def _release_free_memory() -> None:
    """Hand freed heap back to the kernel, so that the next high-water mark counts the step's allocations."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak(device: torch.device) -> int:
    """Resets the peak counter and returns the memory in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _release_free_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        clear_refs.write("5")
    return _resident_bytes("VmRSS")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _resident_bytes("VmHWM")


def training_memory(runner: Runner, before_model: int) -> dict[str, Any]:
    """Peak memory of training steps, after two warm-up steps have created the AdamW state and warmed every cache."""
    device = runner.device
    runner.train_step()
    runner.train_step()
    between_steps = _reset_peak(device)
    for _ in range(2):
        runner.train_step()
    peak = _peak(device)
    parameter_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    return {
        "peak_bytes": peak - before_model,  # parameters, AdamW state, gradients, activations, workspaces
        "step_bytes": peak - between_steps,  # what one step adds: gradients, activations, workspaces
        "activation_bytes": peak - between_steps - parameter_bytes,  # gradients have the parameters' size
        "parameter_bytes": parameter_bytes,
        "method": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM (resident set high-water)",
    }


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in its own process (CPU): the peak memory of training steps for one implementation."""
    config = make_config(args.preset, args.image_size)
    device = torch.device(args.device)
    build_model(args.memory_worker, make_config("vit-pico"))  # imports the library first: not the step's memory
    before_model = _reset_peak(device)
    return training_memory(Runner(args.memory_worker, config, args), before_model)


def measure_memory(args: argparse.Namespace, variants: list[tuple[str, bool]]) -> dict[str, Any]:
    """CUDA: in this process (the caching allocator counts exactly what each model holds); CPU: a subprocess each."""
    results: dict[str, Any] = {}
    if args.device.startswith("cuda"):
        config = make_config(args.preset, args.image_size)
        for implementation, grad_ckpt in variants:
            device_args = argparse.Namespace(**{**vars(args), "grad_ckpt": grad_ckpt, "compile": False})
            device_args.batch_size = args.memory_batch_size or args.batch_size
            torch.cuda.empty_cache()
            before_model = _reset_peak(torch.device(args.device))
            runner = Runner(implementation, config, device_args)
            results[implementation + ("+grad-ckpt" if grad_ckpt else "")] = training_memory(runner, before_model)
            del runner
        return results
    for implementation, grad_ckpt in variants:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--memory-worker", implementation,
            "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
            "--batch-size", str(args.memory_batch_size or args.batch_size), "--threads", str(args.threads),
        ]
        if args.image_size is not None:
            command += ["--image-size", str(args.image_size)]
        if grad_ckpt:
            command.append("--grad-ckpt")
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"memory measurement of {implementation} failed:\n{completed.stderr[-3000:]}")
        key = implementation + ("+grad-ckpt" if grad_ckpt else "")
        results[key] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------------------------------------------
# FLOPs, the machine, the report
# --------------------------------------------------------------------------------------------------------------
def forward_flops_per_image(config: ViTYogaConfig) -> float:
    """Matmul FLOPs of one forward pass (2 per multiply-add); norms, softmax and GELU are negligible next to them."""
    grid = config.image_size // config.patch_size
    tokens = grid * grid + 1
    width, mlp = config.hidden_size, config.intermediate_size
    patch_embed = grid * grid * width * config.num_channels * config.patch_size**2
    per_layer = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width  # linears + QK^T, AV
    head = width * config.num_labels
    return 2.0 * (patch_embed + config.num_hidden_layers * per_layer + head)


def training_flops_per_image(config: ViTYogaConfig) -> float:
    return 3.0 * forward_flops_per_image(config)  # backward costs two forwards (input and weight gradients)


def format_table(report: dict[str, Any]) -> str:
    modes = report["settings"]["modes"]
    lines = [
        f"{report['machine']['device']} | torch {report['machine']['torch']} | {report['settings']['preset']} "
        f"{report['settings']['image_size']}px | batch {report['settings']['batch_size']} | "
        f"{report['settings']['dtype']} | compile={report['settings']['compile']}",
        "| model | " + " | ".join(f"{mode} img/s" for mode in modes) + " | peak train memory |",
        "|---|" + "---|" * len(modes) + "---|",
    ]
    memory = report.get("memory", {})
    for name, numbers in report["throughput"].items():
        cells = [f"{numbers[f'{mode}_images_per_s']:.1f}" for mode in modes]
        peak = memory.get(name, {}).get("peak_bytes")
        cells.append(f"{peak / 2**20:.0f} MiB" if peak is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, value in report["ratios"].items():
        lines.append(f"ours/theirs {key}: {value:.3f} (wall)  {report['ratios_cpu_time'][key]:.3f} (CPU time)")
    for key, value in report.get("memory_ratios", {}).items():
        lines.append(f"memory {key}: {value:.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit-ti16", choices=sorted(VIT_YOGA_PRESETS))
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's (224 for /16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16 = autocast mixed precision")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model, mode and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model and mode first")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch)")
    parser.add_argument("--memory", choices=("none", "peak", "grad-ckpt"), default="peak",
                        help="peak: every model's peak training memory; grad-ckpt: also ours with checkpointing")
    parser.add_argument("--memory-batch-size", type=int, default=None, help="default: --batch-size")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grad-ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} but torch sees no CUDA device; use --device cpu.")
    if OURS not in args.implementations:
        parser.error(f"--implementations must include {OURS} (the ratios are ours/theirs).")
    for flag in ("batch_size", "rounds", "steps", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1.")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = make_config(args.preset, args.image_size)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "machine": machine_description(device),
        "settings": {
            "preset": args.preset, "image_size": config.image_size, "batch_size": args.batch_size,
            "device": args.device, "dtype": args.dtype, "compile": args.compile, "rounds": args.rounds,
            "steps": args.steps, "warmup": args.warmup, "modes": list(args.modes), "threads": args.threads,
            "command": " ".join(["python benchmarks/bench_model.py", *args.argv]),
        },
        "flops_per_image": {"forward": forward_flops_per_image(config), "train": training_flops_per_image(config)},
    }
    throughput = measure_throughput(args, config)
    report["throughput"] = throughput
    report["ratios"] = paired_ratios(throughput, list(args.modes))
    report["ratios_cpu_time"] = paired_ratios(throughput, list(args.modes), clock="cpu")
    if args.memory != "none":
        variants = [(name, False) for name in args.implementations]
        if args.memory == "grad-ckpt":
            variants += [(name, True) for name in args.implementations]
        memory = measure_memory(args, variants)
        report["memory"] = memory
        report["memory_ratios"] = {
            f"peak_vs_{name}": memory[OURS]["peak_bytes"] / memory[name]["peak_bytes"]
            for name in args.implementations if name != OURS
        }
        for name in args.implementations:
            if f"{name}+grad-ckpt" in memory:
                report["memory_ratios"][f"grad_ckpt_activation_{name}"] = (
                    memory[f"{name}+grad-ckpt"]["activation_bytes"] / memory[name]["activation_bytes"]
                )
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(memory_worker(args)))
        return 0
    report = run(args)
    return finish(report, args.json, format_table(report))


if __name__ == "__main__":
    sys.exit(main())
