"""The demo's latency per photo: the model alone, the model with its attention maps and the rollout (one eager forward),
``pipeline("image-classification")``, the app's whole answer in process, and the whole request as a client sees it
(``gradio_client`` against ``python app.py``: upload, decode, preprocess, predict, rollout, overlay, response).

    python benchmarks/bench_demo.py --presets vit-ti16 vit-pico --photos 16 --threads 2 --json runs/bench_demo.json

The checkpoints are untrained ViT-Yoga models with Yoga-82's hierarchy (bench_predict's: speed does not depend on the
weights). The in-process ways are timed in interleaved rounds on the same photos (each number: the median over
photos and rounds); the app runs in its own process with the same thread count, and is timed after them.
"""

from __future__ import annotations

import argparse
import os
import runpy
import socket
import statistics
import subprocess
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

from bench_predict import make_checkpoint, photo_files  # noqa: E402
from common import finish, machine_description  # noqa: E402


def median_ms(run: Callable[[Any], Any], items: list[Any], cpu: list[float] | None = None) -> list[float]:
    """Wall-clock milliseconds per item; the process's CPU milliseconds appended to ``cpu`` (on a shared machine,
    other processes stretch wall time, and at one thread barely the process's own CPU time)."""
    times = []
    for item in items:
        start, start_cpu = time.perf_counter(), time.process_time()
        run(item)
        times.append((time.perf_counter() - start) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - start_cpu) * 1000)
    return times


def in_process(app: dict[str, Any], checkpoint: Path, files: list[Path], rounds: int
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU milliseconds per photo of each in-process way."""
    from transformers import AutoModelForImageClassification, pipeline

    classifier = app["load_served"](str(checkpoint), None)  # eager attention: one forward for probabilities and maps
    sdpa = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True,
                                                           attn_implementation="sdpa").eval()
    classify = pipeline("image-classification", model=str(checkpoint), trust_remote_code=True, device="cpu")
    photos = [app["load_photo"](f) for f in files]
    ready = [classifier.prepare([p]) for p in photos]

    @torch.inference_mode()
    def model_alone(pixel_values: torch.Tensor) -> Any:
        logits = sdpa(pixel_values=pixel_values).logits
        return classifier.tree_probabilities(sdpa.config, logits)

    def model_with_maps(pixel_values: torch.Tensor) -> Any:
        probabilities, attentions = classifier.run_model(pixel_values, attentions=True)
        return probabilities, app["attention_rollout"](attentions)

    ways: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "model alone (sdpa, tree probabilities)": (model_alone, ready),
        "model + attention maps + rollout (one eager forward)": (model_with_maps, ready),
        'pipeline("image-classification")': (lambda f: classify(str(f)), files),
        "app answer in process (decode, preprocess, forward, rollout, describe, overlay)": (
            lambda f: answer_and_overlay(app, classifier, f), files),
    }
    for run, items in ways.values():  # warm-up
        median_ms(run, items[:2])
    samples: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            samples[name] += median_ms(*ways[name], cpu=cpu[name])
    return ({name: statistics.median(times) for name, times in samples.items()},
            {name: statistics.median(times) for name, times in cpu.items()})


def answer_and_overlay(app: dict[str, Any], classifier: Any, file: Path) -> Any:
    photo = app["load_photo"](file)
    prediction, heat = app["answer"](classifier, photo)
    return prediction, app["overlay"](photo, heat, 0.5)


def through_gradio_client(checkpoint: Path, files: list[Path], rounds: int, threads: int) -> tuple[float, float]:
    """Median milliseconds of the whole request per photo, and of a request that does nothing (the page's opacity
    event with no photo: gradio's own protocol cost, the floor under any answer)."""
    from gradio_client import Client, handle_file

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--model", str(checkpoint), "--port",
                               str(port), "--threads", str(threads)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        try:
            runpy.run_path(str(REPO_ROOT / "app.py"))["wait_until_served"](url, server, timeout=180)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
        client = Client(url, verbose=False)

        def request(file: Path) -> Any:
            return client.predict(handle_file(str(file)), 0.5, api_name="/classify")

        def nothing(_: Any) -> Any:
            return client.predict(0.5, api_name="/blend")

        median_ms(request, files[:2])
        whole = statistics.median(t for _ in range(rounds) for t in median_ms(request, files))
        return whole, statistics.median(median_ms(nothing, files))
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    app = runpy.run_path(str(REPO_ROOT / "app.py"))
    files = photo_files(args.photos, args.photo_dir, scratch)
    report: dict[str, Any] = {
        "machine": machine_description(torch.device("cpu")) | {"threads": args.threads, "cpus": os.cpu_count()},
        "settings": {"photos": len(files), "rounds": args.rounds,
                     "photo_source": str(args.photo_dir or files[0].parent.parent)},
        "models": {},
    }
    for preset in args.presets:
        checkpoint = make_checkpoint(preset, scratch / preset)
        load_before = os.getloadavg()[0]
        ms, cpu_ms = in_process(app, checkpoint, files, args.rounds)
        ms["whole request through gradio_client"], ms["a request that does nothing (gradio's floor)"] = \
            through_gradio_client(checkpoint, files, args.rounds, args.threads)
        alone, with_maps = ms["model alone (sdpa, tree probabilities)"], \
            ms["model + attention maps + rollout (one eager forward)"]
        report["models"][preset] = {
            "milliseconds": ms,
            "cpu_milliseconds": cpu_ms,
            "attention_map_extra_over_model_cpu": cpu_ms["model + attention maps + rollout (one eager forward)"]
            / cpu_ms["model alone (sdpa, tree probabilities)"] - 1,
            "attention_map_extra_over_model": with_maps / alone - 1,
            "attention_map_extra_over_request": (with_maps - alone) / ms["whole request through gradio_client"],
            "load_average": [load_before, os.getloadavg()[0]],
        }
        print(format_model(preset, report["models"][preset]), flush=True)
    return report


def format_model(preset: str, numbers: dict[str, Any]) -> str:
    lines = [f"{preset} (load average {numbers['load_average'][0]:.1f} -> {numbers['load_average'][1]:.1f})",
             "| per photo | wall ms | CPU ms |", "|---|---|---|"]
    lines += [f"| {name} | {value:.1f} | {numbers['cpu_milliseconds'].get(name, float('nan')):.1f} |"
              for name, value in numbers["milliseconds"].items()]
    lines.append(f"attention map: +{numbers['attention_map_extra_over_model']:.0%} over the model alone "
                 f"(CPU time: +{numbers['attention_map_extra_over_model_cpu']:.0%}), "
                 f"{numbers['attention_map_extra_over_request']:.0%} of the whole request (target < 20%); whole "
                 "request target < 150 ms")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["vit-ti16", "vit-pico"])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--photo_dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
        report = run(args, Path(scratch))
    return finish(report, args.json)  # the tables were printed model by model


if __name__ == "__main__":
    sys.exit(main())
