"""Pushing a finished folder (a trained model, or a data set written by yoga82) to the Hugging Face Hub.

One explicit commit of the folder's files: the Hub repository ends either fully updated or untouched
(``upload_folder`` may split a large folder into several commits). The token is read from the target, ``HF_TOKEN``
or ``hf auth login``, and never logged or written anywhere.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a shared repository never holds: resume state, pickles (they run code when loaded) and hidden files.
MODEL_EXCLUDE = ("checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl")


@dataclass
class HubTarget:
    """A Hub repository to push to, and the credentials for it (kept out of every printed or saved form)."""

    repo_id: str
    token: str | None = field(default=None, repr=False)
    private: bool | None = None

    @classmethod
    def from_training_args(cls, args: Any) -> HubTarget:
        """``--hub_model_id`` (default: the output folder's name), ``--hub_token``, ``--hub_private_repo``."""
        return cls(args.hub_model_id or Path(args.output_dir).name, args.hub_token, args.hub_private_repo)


def files_to_push(folder: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The files of ``folder`` to upload: hidden files and anything whose first path part matches ``exclude`` are
    left out."""

    def excluded(relative: Path) -> bool:
        return any(part.startswith(".") for part in relative.parts) or any(
            fnmatch.fnmatch(relative.parts[0], pattern) or fnmatch.fnmatch(relative.name, pattern)
            for pattern in exclude
        )

    return sorted(p for p in folder.rglob("*") if p.is_file() and not excluded(p.relative_to(folder)))


def push_folder(
    folder: str | Path, target: HubTarget, *, repo_type: str = "model", exclude: Sequence[str] = (),
    commit_message: str = "Upload with vit-yoga",
) -> str:
    """Create the repository if needed and upload ``folder`` in one commit; returns the repository's URL. Raises
    whatever huggingface_hub raises (no network, no permission...): the caller decides what to tell the user."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    files = files_to_push(folder, exclude)
    api = HfApi(token=target.token)
    url = api.create_repo(target.repo_id, repo_type=repo_type, private=target.private, exist_ok=True)
    api.create_commit(
        repo_id=target.repo_id,
        repo_type=repo_type,
        operations=[CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in files],
        commit_message=commit_message,
    )
    return str(url)


def retry_command(folder: str | Path, target: HubTarget, *, repo_type: str = "model",
                  exclude: Sequence[str] = ()) -> str:
    """The `hf upload` command that uploads the same files by hand, quoted for a POSIX shell (a folder with a space or
    a quote in its name stays one argument)."""
    type_flag = f" --repo-type {repo_type}" if repo_type != "model" else ""
    excludes = "".join(f" --exclude {shlex.quote(pattern)}" for pattern in (*exclude, ".*"))
    return f"hf upload {shlex.quote(target.repo_id)} {shlex.quote(str(folder))} .{type_flag}{excludes}"


def push_model_folder(folder: str | Path, target: HubTarget, commit_message: str, logger: Any) -> None:
    """Push a finished model folder (its checkpoints and pickles excluded) and log where; a failed push logs the
    error and the ``hf upload`` command that retries it, and exits 1: the local folder is complete either way."""
    try:
        url = push_folder(folder, target, exclude=MODEL_EXCLUDE, commit_message=commit_message)
        logger.info(f"Pushed {folder} to {url}")
    except Exception as error:  # any network or auth failure: the local folder is complete; say how to retry
        logger.error(
            f"Upload to the Hub repo {target.repo_id!r} failed ({type(error).__name__}: {error}). The folder "
            f"{folder} is complete; retry with `{retry_command(folder, target, exclude=MODEL_EXCLUDE)}`."
        )
        raise SystemExit(1) from None
