"""What the benchmark scripts share: the machine a number was measured on, how a run ends (its table printed, its
JSON written whole), and the repository's scripts run as a user runs them.

Imports nothing beyond the standard library at module level: ``gpu.py`` runs on a machine that has only torch,
transformers and timm, and ``bench_dataset.py`` / ``bench_ctrl_c.py`` need no torch at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return cpu


def machine_description(device: Any = None) -> dict[str, Any]:
    """The device (a CUDA card's name and memory, or the CPU and torch's threads), the date and the versions of
    torch, transformers and timm where installed. ``device``: a ``torch.device`` (default: the CPU)."""
    import torch

    device = torch.device("cpu") if device is None else device
    description: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # noqa: UP017 (py3.10)
    }
    with contextlib.suppress(ImportError):
        import transformers

        description["transformers"] = transformers.__version__
    with contextlib.suppress(ImportError):
        import timm

        description["timm"] = timm.__version__
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        description["device"] = f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB)"
        description["cuda"] = torch.version.cuda
    else:
        description["device"] = f"CPU {cpu_name()}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"
    return description


def machine_summary() -> str:
    """The machine and library versions in one line (the head of the learning and pretraining tables)."""
    import torch
    import transformers

    return (f"{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def write_json(report: Any, path: Path | str) -> None:
    """Written to a temporary name first, then renamed: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)


def finish(report: Any, json_path: Path | str | None, table: str | None = None) -> int:
    """How every benchmark ends: its table on stdout, then the report as JSON at ``json_path`` (when given). Returns
    the exit status, 0."""
    if table is not None:
        print(table)
    if json_path:
        write_json(report, json_path)
        print(f"wrote {json_path}")
    return 0


@contextlib.contextmanager
def work_folder(prefix: str, work_dir: Path | None) -> Iterator[tuple[Path, dict[str, str]]]:
    """``work_dir`` (kept) or a temporary folder (removed at the end), and the environment the scripts run in there:
    offline, unbuffered, their decode cache inside the folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        work = work_dir or Path(temporary)
        yield work, dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", VIT_YOGA_CACHE=str(work / "cache"))


def run_script(script: Path, args: list[str], output_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``script`` (train.py, pretrain.py) in a subprocess, as a user runs it, writing to ``output_dir``: every
    ``*_results.json`` it wrote, by stem ("train_results"...), and ``wall_s``, the whole command's seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1") if env is None else env
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), *args, "--output_dir", str(output_dir),
                             "--overwrite_output_dir"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    files = {p.stem: json.loads(p.read_text()) for p in output_dir.glob("*_results.json")}
    return {**files, "wall_s": time.perf_counter() - started}
