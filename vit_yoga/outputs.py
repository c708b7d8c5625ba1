"""The output folder of a run: it belongs to one run, resumes from its own last complete checkpoint, and ends with
only that run's files."""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from yoga_common.errors import UsageError
from yoga_common.files import give_umask_permissions

logger = logging.getLogger(__name__)


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-*`` that finished saving (trainer_state.json is written last), or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    complete = [p for p in candidates if (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[1]))) if complete else None


def resolve_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint ``--resume_from_checkpoint`` names (``latest``: the newest complete one in --output_dir)."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() in ("latest", "true", "last"):
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise UsageError(f"no complete checkpoint in {training_args.output_dir} to resume from.")
        return checkpoint
    if not (Path(value) / "trainer_state.json").is_file():
        latest = last_complete_checkpoint(Path(value).parent)
        raise UsageError(
            f"{value} is not a complete checkpoint (no trainer_state.json; the run was probably killed while "
            f"saving it). Resume from {latest or 'an earlier checkpoint'} or pass --resume_from_checkpoint latest."
        )
    return value


def resumes_in_place(training_args: TrainingArguments) -> bool:
    """Whether ``--resume_from_checkpoint`` continues the run in ``--output_dir`` (``latest``, or one of its own
    ``checkpoint-*`` folders), rather than starting from another folder's checkpoint."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return False
    if value.lower() in ("latest", "true", "last"):
        return True
    return Path(value).resolve().parent == Path(training_args.output_dir).resolve()


def check_output_dir(training_args: TrainingArguments, overwrite: bool) -> bool:
    """Whether ``--output_dir`` holds another run's files that this run will replace; refused, before any work,
    unless ``overwrite`` (--overwrite_output_dir). A run resumed from a checkpoint inside ``--output_dir`` continues
    the run that folder holds; one resumed from another folder's checkpoint is a new run there, checked as one."""
    output_dir = Path(training_args.output_dir)
    if resumes_in_place(training_args) or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return False
    if not overwrite:
        found = sorted(p.name for p in output_dir.iterdir())
        holds = (f"--output_dir {output_dir} already holds files of another run ({', '.join(found[:5])}"
                 f"{', ...' if len(found) > 5 else ''})")
        if training_args.resume_from_checkpoint is not None:
            checkpoint = Path(training_args.resume_from_checkpoint)
            raise UsageError(
                f"{holds}, and --resume_from_checkpoint {checkpoint} belongs to the run in {checkpoint.parent}: "
                f"continuing it here would mix two runs in one folder. Continue it in its own folder "
                f"(--output_dir {checkpoint.parent}), choose an empty --output_dir, or pass --overwrite_output_dir."
            )
        raise UsageError(
            f"{holds}. Pass --resume_from_checkpoint latest to continue that run, "
            "--overwrite_output_dir to start over there, or choose another --output_dir."
        )
    return True


def set_aside_previous_run(training_args: TrainingArguments) -> Path | None:
    """Move the previous run out of ``--output_dir`` (once every input has been checked), so that the folder ends
    with this run's files only; ``release_previous_run`` removes it when this run has written its results. Until
    then a killed run leaves it where the log says."""
    output_dir = Path(training_args.output_dir)
    previous = output_dir.with_name(f".{output_dir.name}.previous-run-{uuid.uuid4().hex[:8]}")
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="moving the previous run"):
        if training_args.should_save and output_dir.exists():
            os.replace(output_dir, previous)
            logger.warning(f"--overwrite_output_dir: moved the previous run in {output_dir} to {previous}; it is "
                           "removed when this run has finished.")
            return previous
    return None


def release_previous_run(previous: Path | None) -> None:
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


class UmaskPermissions(TrainerCallback):
    """Each checkpoint gets the umask's permissions as soon as it is saved: safetensors writes model.safetensors as
    0600, which a group sharing the folder cannot read (train.py does the same for the final folder)."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            give_umask_permissions(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
