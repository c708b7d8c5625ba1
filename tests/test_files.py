"""yoga_common.files: a file or folder is complete or absent whatever happens to its writer, killed included."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from yoga_common import files
from yoga_common.files import (
    LockHeldError,
    atomic_write,
    exclusive_lock,
    how_folders_overlap,
    partial_path,
    remove_partial_files,
    staged_folder,
    temporary_folder_beside,
)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> text); {} for a missing folder."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_version(folder: Path, version: str) -> None:
    (folder / "a.txt").write_text(version)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text(version * 3)


def test_atomic_write_replaces_whole_files_with_ordinary_permissions(tmp_path):
    target = tmp_path / "deep" / "report.json"
    atomic_write(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n' and mode(target) == 0o666 & ~umask()  # tempfile would give 0600
    with pytest.raises(RuntimeError):
        with files.atomic_file(target, "wb") as handle:
            handle.write(b"half of a new ver")
            raise RuntimeError("disk full")
    assert target.read_text() == '{"a": 1}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # the temporary is gone

    # A killed writer's temporary is recognised and removed; look-alikes that are not ours are not.
    killed = partial_path(target)
    killed.write_bytes(b"partial")
    keep = [target.parent / ".report.json.old.part", target.parent / "notes.part", target.parent / ".x.ABCDEF12.part"]
    for path in keep:
        path.write_text("mine")
    assert files.is_partial(killed) and remove_partial_files(tmp_path) == 1
    assert not killed.exists() and all(path.exists() for path in keep)


def test_staged_folder_swaps_in_a_complete_folder_and_removes_only_its_own_leftovers(tmp_path):
    output = tmp_path / "out"
    with staged_folder(output) as staging:
        assert staging.parent == tmp_path and files.is_partial(staging) and not output.exists()
        write_version(staging, "v1")
    assert snapshot(output) == {"a.txt": "v1", "sub/b.txt": "v1v1v1"}
    assert mode(output) == 0o777 & ~umask()  # not mkdtemp's 0700

    with pytest.raises(FileExistsError, match="not empty"):
        with staged_folder(output):
            pass
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(output, overwrite=True) as staging:
            write_version(staging, "v2")
            raise KeyboardInterrupt
    assert snapshot(output) == {"a.txt": "v1", "sub/b.txt": "v1v1v1"}

    # Leftovers: a dead run's temporary folder is removed; a live run's (locked) is not; a crashed run of the old
    # code's fixed ".out.old" neither blocks the swap nor is touched; nor is anything else of the user's.
    dead = partial_path(output)
    dead.mkdir()
    (dead / "half.parquet").write_text("x")
    live = partial_path(output)
    live.mkdir()
    live_fd = os.open(live, os.O_RDONLY)
    fcntl.flock(live_fd, fcntl.LOCK_EX)
    (tmp_path / ".out.old").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    try:
        with staged_folder(output, overwrite=True) as staging:
            write_version(staging, "v3")
        assert snapshot(output) == {"a.txt": "v3", "sub/b.txt": "v3v3v3"}
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.old", "notes.txt", "out", live.name])
    finally:
        os.close(live_fd)

    # A symlinked output: the folder it points to is replaced, the link stays.
    link = tmp_path / "link"
    link.symlink_to(output, target_is_directory=True)
    with staged_folder(link, overwrite=True) as staging:
        write_version(staging, "v4")
    assert link.is_symlink() and snapshot(link) == {"a.txt": "v4", "sub/b.txt": "v4v4v4"}


@pytest.mark.parametrize("make", ["staged_folder", "temporary_folder_beside"])
def test_a_new_temporary_folder_survives_another_writer_cleaning_beside_it(tmp_path, monkeypatch, make):
    """Another writer of the same output cleans up abandoned temporaries (_remove_abandoned) at the worst moment for
    us: after our temporary folder exists, before we hold its lock. It must not remove our folder from under us."""
    output = tmp_path / "out"
    real_lock, cleaned = files._lock, []

    def lock_after_another_writer_cleans(fd: int):
        if not cleaned:  # the first lock a writer takes is on its own new folder: clean just before it
            cleaned.append(sorted(p.name for p in tmp_path.iterdir()))
            files._remove_abandoned(output.resolve())  # what a second process does, beside the same output
        return real_lock(fd)

    monkeypatch.setattr(files, "_lock", lock_after_another_writer_cleans)
    if make == "staged_folder":
        with staged_folder(output) as staging:
            write_version(staging, "v1")
        assert snapshot(output) == {"a.txt": "v1", "sub/b.txt": "v1v1v1"}
    else:
        with files.temporary_folder_beside(output) as scratch:
            write_version(scratch, "v1")
            assert snapshot(scratch) == {"a.txt": "v1", "sub/b.txt": "v1v1v1"}
    assert len(cleaned) == 1 and len(cleaned[0]) == 1  # the cleaner ran while our new folder existed, unlocked
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # and nothing is left behind


def test_staged_folder_without_atomic_exchange_recovers_the_previous_folder(tmp_path, monkeypatch):
    """Where renameat2 is missing, two renames; a kill between them leaves the old folder aside, restored next run."""
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    output = tmp_path / "out"
    with staged_folder(output) as staging:
        write_version(staging, "v1")
    with staged_folder(output, overwrite=True) as staging:
        write_version(staging, "v2")
    assert snapshot(output) == {"a.txt": "v2", "sub/b.txt": "v2v2v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    retired = tmp_path / ".out.0123abcd.previous"  # what a kill between the two renames leaves
    output.rename(retired)
    with temporary_folder_beside(output):
        pass
    assert snapshot(output) == {"a.txt": "v2", "sub/b.txt": "v2v2v2"} and not retired.exists()


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from yoga_common import files

    output, version, kill_at, how = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if how == "two-renames":
        files._exchange = lambda first, second: False
    steps = 0
    WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def kill_before_the_next_step(event, args):
        # Every step that changes the disk: creating, writing, renaming (os.replace too), removing, renameat2.
        global steps
        if event == "open":
            _, mode, flags = args
            if not ((mode and any(c in mode for c in "wxa+")) or (flags and flags & WRITES)):
                return
        elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "ctypes.call_function"):
            return
        steps += 1
        if steps == kill_at:
            os._exit(137)  # as SIGKILL: no finally, no cleanup

    sys.addaudithook(kill_before_the_next_step)
    if how == "file":
        files.atomic_write(output, version * 1000)
    else:
        with files.staged_folder(output, overwrite=True) as staging:
            (staging / "a.txt").write_text(version)
            (staging / "sub").mkdir()
            (staging / "sub" / "b.txt").write_text(version * 3)
    print(steps)
    """
)


@pytest.mark.slow
def test_atomic_write_killed_at_every_step_leaves_the_old_or_the_new_file(tmp_path):
    target = tmp_path / "failures.csv"
    atomic_write(target, "old" * 1000)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    kills = 0
    for kill_at in range(1, 20):
        result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), "new", str(kill_at), "file"],
                                env=env, capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            break
        assert result.returncode == 137, result.stderr
        kills += 1
        assert target.read_text() in ("old" * 1000, "new" * 1000), f"killed before step {kill_at}"
        remove_partial_files(tmp_path)  # what the next run of the writer does
        assert sorted(p.name for p in tmp_path.iterdir()) == ["failures.csv"]
    assert kills >= 2 and target.read_text() == "new" * 1000  # killed before creating and before renaming


@pytest.mark.slow
@pytest.mark.parametrize("how", ["renameat2", "two-renames"])
def test_staged_folder_killed_at_every_step_leaves_the_old_or_the_new_folder(tmp_path, how):
    output = tmp_path / "out"
    with staged_folder(output) as staging:
        write_version(staging, "old")
    old = snapshot(output)
    new = {"a.txt": "new", "sub/b.txt": "newnewnew"}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    kills = 0
    for kill_at in range(1, 100):
        result = subprocess.run(
            [sys.executable, "-c", KILLED_WRITER, str(output), "new", str(kill_at), how],
            env=env, capture_output=True, text=True, timeout=60,
        )
        if result.returncode == 0:
            break
        assert result.returncode == 137, result.stderr
        kills += 1
        if how == "two-renames" and not output.exists():
            # Killed between the two renames: the old folder waits aside; the next run beside it restores it.
            with temporary_folder_beside(output):
                pass
        assert snapshot(output) in (old, new), f"killed before step {kill_at}"
        # The next run is not blocked by what the killed one left, and cleans it up.
        with staged_folder(output, overwrite=True) as staging:
            write_version(staging, "old")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], f"killed before step {kill_at}"
    assert kills >= 6 and snapshot(output) == new  # every step was a kill point until one run got through


@pytest.mark.slow
def test_exclusive_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    lock = tmp_path / ".job.lock"
    with exclusive_lock(lock, what="A job in here"):
        holder = subprocess.run(
            [sys.executable, "-c",
             "import sys; from yoga_common.files import exclusive_lock\n"
             "with exclusive_lock(sys.argv[1], what='A job in here'): pass", str(lock)],
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True, timeout=60,
        )
        assert holder.returncode != 0
        assert f"A job in here is already running: pid {os.getpid()} on host" in holder.stderr
        assert f"kill {os.getpid()}" in holder.stderr
    assert not lock.exists()  # removed on a clean exit

    # A holder killed with SIGKILL leaves the file but not the lock.
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; from yoga_common.files import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1], what='x'): os._exit(137)", str(lock)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=60,
    )
    assert killed.returncode == 137 and lock.exists()
    with exclusive_lock(lock, what="A job in here"):
        with pytest.raises(LockHeldError):
            with exclusive_lock(lock, what="A job in here"):
                pass


def test_how_folders_overlap_sees_through_symlinks(tmp_path):
    data = tmp_path / "data" / "yoga82"
    (data / "images").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    assert how_folders_overlap(data, data / "images") == "contains"
    assert how_folders_overlap(data / "images" / "out", data / "images") == "lies inside"
    assert how_folders_overlap(tmp_path / "alias" / "images", data / "images") == "is the same folder as"
    assert how_folders_overlap(tmp_path / "data" / "yoga82-parquet", data / "images") is None
