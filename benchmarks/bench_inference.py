"""CPU inference, side by side in one process: PyTorch eager, torch.compile, ONNX Runtime fp32 and int8.

Each model is exported exactly as ``python -m vit_yoga.export`` exports it (the same wrapper, exporter and opset;
the int8 model by the same dynamic quantisation), and transformers' ``ViTForImageClassification`` of the same size
goes through the same exporter as the peer. For each model and batch size the backends are timed in interleaved
rounds (the order rotates every round), so that a noisy machine slows all of them alike; each time is the median
over rounds and each ratio (backend / PyTorch eager, as a speed-up) the median of the per-round ratios. Each timing
runs in a fresh process with that backend alone (``--isolation process``, the default): ONNX Runtime's threads spin
between runs, as they do on a server, which in one process with PyTorch would starve PyTorch (``--isolation none``
times all in this process with spinning off).

    python benchmarks/bench_inference.py                                  # every model, batch 1 and 32
    python benchmarks/bench_inference.py --models vit-ti16-sdpa --batch_sizes 1 --rounds 3 --json runs/bench.json

Models: ``vit-ti16-sdpa``, ``vit-ti16-eager`` (ViT-Ti/16 at 224 px, 82 classes, standard patch embedding),
``vit-ti16-conv_stem`` (sdpa), ``vit-pico`` (64 px, conv stem: what train.py trains on the synthetic poses) and
``hf-vit-ti16`` (transformers' ViT, sdpa). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
for folder in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from common import finish  # noqa: E402

from configuration_vit_yoga import ViTYogaConfig  # noqa: E402
from modeling_vit_yoga import ViTYogaForImageClassification  # noqa: E402
from vit_yoga.int8 import quantize_dynamic_int8  # noqa: E402
from vit_yoga.onnx_graph import DEFAULT_OPSET, DYNAMO_OPSET, ExportableClassifier, OutputSpec, export_graph  # noqa: E402

MODELS = ("vit-ti16-sdpa", "vit-ti16-eager", "vit-ti16-conv_stem", "vit-pico", "hf-vit-ti16")
BACKENDS = ("eager", "compile", "ort-fp32", "ort-int8")
NUM_LABELS = 82


class LogitsOnly(nn.Module):
    """transformers' ViT as a function of pixel_values returning its logits (what the peer's export outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = OutputSpec()
        self.spec.add("logits", "label", "logits")

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(pixel_values=pixel_values, return_dict=True).logits,)


def build(name: str) -> nn.Module:
    """The model ``name`` as the wrapper the export traces (ours with its probabilities output)."""
    torch.manual_seed(0)
    if name == "hf-vit-ti16":
        from transformers import ViTForImageClassification

        from vit_yoga.convert import vit_config_from

        config = vit_config_from(ViTYogaConfig.from_preset("vit-ti16"), num_labels=NUM_LABELS,
                                 attn_implementation="sdpa")
        return LogitsOnly(ViTForImageClassification(config).eval()).eval()
    preset, variant = ("vit-pico", "conv_stem") if name == "vit-pico" else name.rsplit("-", 1)
    attn = variant if variant in ("eager", "sdpa") else "sdpa"
    stem = "conv_stem" if variant == "conv_stem" else "standard"
    config = ViTYogaConfig.from_preset(preset, num_labels=NUM_LABELS, patch_embedding_type=stem,
                                       attn_implementation=attn)
    return ExportableClassifier(ViTYogaForImageClassification(config).eval()).eval()


def image_size_of(name: str) -> int:
    """The input size of model ``name``: 64 px for vit-pico, 224 for the ViT-Ti/16s."""
    return 64 if name == "vit-pico" else 224


def opset_for(exporter: str) -> int:
    """The opset python -m vit_yoga.export uses by default with this exporter."""
    return DYNAMO_OPSET if exporter == "dynamo" else DEFAULT_OPSET


def ort_runner(path: Path, threads: int, names: list[str], spinning: bool = False) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # ONNX Runtime's threads spin between runs by default; in one process beside PyTorch that starves PyTorch's
    # OpenMP threads (measured: ViT-Ti/16 eager at batch 1 fell from ~27 to 0.8-2.5 img/s, also with
    # session.force_spinning_stop), so in one process spinning is off. In its own process (--isolation process, the
    # default) ONNX Runtime runs as a server runs it: spinning on.
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(names, {"pixel_values": pixels})


def time_call(call: Callable[[], Any], min_seconds: float) -> float:
    """Seconds per call: repeated until ``min_seconds`` have passed (at least once)."""
    count, started = 0, time.perf_counter()
    while True:
        call()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / count


def worker(job: dict[str, Any]) -> float:
    """One backend alone in this process (``--isolation process``): seconds per call of ``job``'s model and batch."""
    torch.set_num_threads(job["threads"])
    image_size = image_size_of(job["model"])
    x = torch.randn(job["batch"], 3, image_size, image_size)
    if job["backend"].startswith("ort-"):
        run_ort = ort_runner(Path(job["path"]), job["threads"], job["names"], spinning=True)
        pixels = x.numpy()
        call = lambda: run_ort(pixels)  # noqa: E731
    else:
        wrapper = build(job["model"])
        model = torch.compile(wrapper) if job["backend"] == "compile" else wrapper
        call = lambda: model(x)  # noqa: E731
    with torch.inference_mode():
        call()
        call()
        return time_call(call, job["min_seconds"])


def time_in_own_process(job: dict[str, Any]) -> float:
    """``worker(job)`` in a fresh Python process; the parent waits, so nothing else of ours runs meanwhile."""
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{job['backend']} on {job['model']} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    wrapper = build(name)
    image_size = image_size_of(name)
    example = torch.randn(2, 3, image_size, image_size)
    fp32, int8 = workdir / f"{name}.onnx", workdir / f"{name}_int8.onnx"
    started = time.perf_counter()
    export_graph(wrapper, fp32, example, opset_for(args.exporter), args.exporter)
    quantize_dynamic_int8(fp32, int8)
    print(f"{name}: exported in {time.perf_counter() - started:.1f} s ({fp32.stat().st_size / 2**20:.1f} MB fp32, "
          f"{int8.stat().st_size / 2**20:.1f} MB int8)", flush=True)
    names = wrapper.spec.names
    paths = {"ort-fp32": fp32, "ort-int8": int8}
    rows = []
    for batch in args.batch_sizes:
        if args.isolation == "process":
            times = interleaved(args.backends, args.rounds, lambda backend, batch=batch: time_in_own_process({
                "model": name, "backend": backend, "batch": batch, "threads": args.threads,
                "min_seconds": args.min_seconds, "path": str(paths.get(backend, "")), "names": names}))
        else:
            times = time_in_this_process(wrapper, paths, names, batch, image_size, args)
        rows += summarise(name, batch, times)
    for row in rows:
        row["megabytes"] = {"ort-fp32": fp32.stat().st_size / 2**20, "ort-int8": int8.stat().st_size / 2**20}.get(
            row["backend"])
    return rows


def interleaved(kinds: list[str], rounds: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
    """``measure(kind)`` for every kind, ``rounds`` times, the order rotating every round (so that a noisy machine
    slows all kinds alike)."""
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_index in range(rounds):
        shift = round_index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            times[kind].append(measure(kind))
    return times


def time_in_this_process(wrapper: nn.Module, paths: dict[str, Path], names: list[str], batch: int,
                         image_size: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """``--isolation none``: every backend in this process (ONNX Runtime's spinning off), after two warm-up calls."""
    runners: dict[str, Callable[[torch.Tensor, np.ndarray], Any]] = {}
    if "eager" in args.backends:
        runners["eager"] = lambda x, _: wrapper(x)
    if "compile" in args.backends:
        compiled = torch.compile(wrapper)
        runners["compile"] = lambda x, _: compiled(x)
    for backend in ("ort-fp32", "ort-int8"):
        if backend in args.backends:
            run_ort = ort_runner(paths[backend], args.threads, names)
            runners[backend] = lambda _, pixels, run_ort=run_ort: run_ort(pixels)
    x = torch.randn(batch, 3, image_size, image_size)
    pixels = x.numpy()
    with torch.inference_mode():
        for backend, run in runners.items():  # warm-up (and torch.compile's compilation for this shape)
            started = time.perf_counter()
            run(x, pixels)
            if backend == "compile":
                print(f"  compiled for batch {batch} in {time.perf_counter() - started:.0f} s", flush=True)
            run(x, pixels)
        return interleaved(list(runners), args.rounds,
                           lambda backend: time_call(lambda: runners[backend](x, pixels), args.min_seconds))


def summarise(name: str, batch: int, times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Rows of one model and batch: each backend's median speed and median per-round speed-up over eager."""
    rows = []
    for backend, seconds in times.items():
        ratio = (statistics.median(e / s for e, s in zip(times["eager"], seconds, strict=True))
                 if "eager" in times else None)
        rows.append({"model": name, "batch": batch, "backend": backend,
                     "images_per_second": batch / statistics.median(seconds), "speedup_vs_eager": ratio})
    line = ", ".join(f"{r['backend']} {r['images_per_second']:.1f} img/s"
                     + (f" ({r['speedup_vs_eager']:.2f}x)" if r["speedup_vs_eager"] else "") for r in rows)
    print(f"  batch {batch}: {line}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per model and batch")
    parser.add_argument("--min_seconds", type=float, default=0.5, help="time each backend at least this long a round")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="threads for PyTorch and ONNX Runtime alike (default 2: the issue's machine). On a "
                        "machine whose cores other processes also load, use 1: PyTorch's OpenMP threads then wait "
                        "for each other (vit-pico fell from 108 to 1.7 img/s at load 12 on 2 cores), which would "
                        "measure the load, not the backends")
    parser.add_argument("--isolation", choices=("process", "none"), default="process",
                        help="process (default): every timing in a fresh process running that backend alone, ONNX "
                        "Runtime with its default spinning threads, as a server runs it; none: all backends in this "
                        "process, interleaved, ONNX Runtime's spinning off (it would starve PyTorch)")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(b < 1 for b in args.batch_sizes) or args.threads < 1:
        parser.error("--rounds, --batch_sizes and --threads must be positive")
    if "eager" not in args.backends:
        parser.error("the ratios are against PyTorch eager: keep 'eager' in --backends")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        print(worker(json.loads(argv[1])))
        return 0
    args = parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
               "load_average": os.getloadavg(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
               "exporter": args.exporter, "opset": opset_for(args.exporter), "isolation": args.isolation,
               "date": datetime.now(timezone.utc).isoformat()}
    print(f"threads {args.threads}, load average {machine['load_average']}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as workdir:
        for name in args.models:
            rows += bench_model(name, args, Path(workdir))
    machine["load_average_after"] = os.getloadavg()
    return finish({"machine": machine, "rows": rows}, args.json, format_table(rows, args))


def format_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["\n| model | batch | " + " | ".join(args.backends) + " |", "|---|---|" + "---|" * len(args.backends)]
    for name in args.models:
        for batch in args.batch_sizes:
            cells = {r["backend"]: r for r in rows if r["model"] == name and r["batch"] == batch}
            lines.append(f"| {name} | {batch} | " + " | ".join(
                f"{cells[b]['images_per_second']:.1f} img/s ({cells[b]['speedup_vs_eager']:.2f}x)" for b in
                args.backends if b in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
