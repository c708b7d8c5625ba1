"""The `hf upload` retry command printed after a failed push, as a real shell reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from yoga_common.hub import MODEL_EXCLUDE, HubTarget, retry_command


def shell_words(command: str, cwd: Path) -> list[str]:
    """The arguments bash passes to the command's program (globs expanded against ``cwd``, as in a user's shell)."""
    script = f'set -- {command}; printf "%s\\0" "$@"'
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def test_retry_command_keeps_a_folder_with_spaces_and_quotes_one_argument(tmp_path):
    folder = tmp_path / "my runs" / "level 3 'best'"
    folder.mkdir(parents=True)
    (tmp_path / "checkpoint-10").mkdir()  # a glob left unquoted would expand to it
    command = retry_command(folder, HubTarget("me/vit-yoga"), exclude=MODEL_EXCLUDE)
    words = shell_words(command, tmp_path)
    expected_excludes = [w for pattern in (*MODEL_EXCLUDE, ".*") for w in ("--exclude", pattern)]
    assert words == ["hf", "upload", "me/vit-yoga", str(folder), ".", *expected_excludes]
    dataset = shell_words(retry_command(folder, HubTarget("me/poses"), repo_type="dataset"), tmp_path)
    assert dataset == ["hf", "upload", "me/poses", str(folder), ".", "--repo-type", "dataset", "--exclude", ".*"]
