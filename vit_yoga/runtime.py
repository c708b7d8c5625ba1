"""The process a run lives in: its logs, and its CPU threads."""

from __future__ import annotations

import logging
import os
import sys

import datasets
import torch
import transformers
from transformers import TrainingArguments


def setup_logging(training_args: TrainingArguments) -> None:
    """Our progress at INFO on the main process, the libraries' at WARNING; other processes only warn."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    for name in ("train", "pretrain", "vit_yoga"):
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


def share_cpu_cores() -> int | None:
    """Under ``accelerate launch`` on a machine without an accelerator, give each process its share of the cores:
    accelerate sets one thread per process (OMP_NUM_THREADS=1), which halves training speed on 2 cores. Returns the
    thread count it set, or None."""
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ
    if not launched or torch.accelerator.is_available() or torch.get_num_threads() != 1:
        return None
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    return threads


def start_run(training_args: TrainingArguments, logger: logging.Logger, defaults_note: str, synthetic: bool) -> None:
    """A script's first steps: its logs, the defaults it started from (a warning on the built-in synthetic poses, which
    a user may not have meant), and each process's share of the CPU cores."""
    setup_logging(training_args)
    logger.log(logging.WARNING if synthetic else logging.INFO, defaults_note)
    if threads := share_cpu_cores():
        logger.info(f"CPU training: {threads} threads per process (accelerate launch had set 1).")
