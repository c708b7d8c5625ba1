"""Files and folders that are either complete or absent, whatever happens to the process that writes them.

One implementation, used by every tool of the project that writes to disk:

- ``atomic_file`` / ``atomic_write``: a file is written under a temporary sibling name, flushed to disk and renamed
  over its final name; an error removes the temporary. A killed process leaves at most a temporary, which
  ``remove_partial_files`` recognises and removes on the next run.
- ``staged_folder``: a folder is built under a temporary sibling name and swapped into place in one step; the
  previous complete folder survives a kill at any moment.
- ``temporary_folder_beside``: scratch space next to a path (on its disk), not in ``$TMPDIR``, which is often RAM.
- ``exclusive_lock``: one process at a time per lock file; the OS releases it when its holder dies, so a crashed run
  never leaves it stuck. ``shared_lock``: readers of what that one process writes, together, never with it.
- ``give_umask_permissions``: the umask's permissions for files a library wrote as 0600 (safetensors).
- ``how_folders_overlap``: whether writing one folder could touch another.

Temporary names are ``.<final name>.<8 hex digits>.part``: hidden, never taken for output, and recognisable, so that
cleaning up removes only what this module created. Temporary folders are held locked (``flock``) while in use; one
found unlocked belongs to a dead process and is removed by the next ``staged_folder`` or ``temporary_folder_beside``
beside the same path (a folder takes its ``.part`` name only once locked, see ``_new_locked_folder``). Standard
library only: the data tools, the converter and the training script all use it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no flock; locks and leftover detection are skipped (see _lock)
    fcntl = None

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".part"
# A folder retired by the two-rename fallback of staged_folder: a complete previous version, not garbage.
_RETIRED_SUFFIX = ".previous"
_PARTIAL_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.part$")
# A temporary folder before it is locked and renamed to its .part name (see _new_locked_folder).
_CREATING_SUFFIX = ".creating"


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it (pid, host, start time) and the fix."""


def partial_path(target: str | Path) -> Path:
    """A fresh temporary sibling name for ``target``: ``.<name>.<8 hex>.part`` in the same folder (same disk)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def is_partial(path: str | Path) -> bool:
    """Whether ``path`` has the name of one of this module's temporaries."""
    return _PARTIAL_NAME.match(Path(path).name) is not None


def remove_partial_files(folder: str | Path, *, recursive: bool = True) -> int:
    """Remove the temporary files that killed writers left under ``folder``; returns how many.

    Only names ``partial_path`` makes are touched. Call it only where no other process is writing (e.g. under an
    ``exclusive_lock``): a live writer's temporary has the same name as a dead one's.
    """
    folder = Path(folder)
    candidates = folder.rglob(f".*{PARTIAL_SUFFIX}") if recursive else folder.glob(f".*{PARTIAL_SUFFIX}")
    removed = 0
    for path in candidates:
        if is_partial(path) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_file(
    path: str | Path,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    durable: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is renamed to ``path``.

    ``mode`` is "wb" or "w" (text, UTF-8 unless ``encoding``). Readers see the old file or the new one, never a part;
    an exception removes the temporary and leaves the old file as it was. The file gets the permissions a plain
    ``open`` gives (the umask), unlike ``tempfile``'s 0600. ``durable``: flush it to disk before the rename, so that
    a power cut cannot leave an empty file under the final name either (a kill cannot, regardless); pass False
    for many small files whose readers check them anyway (an fsync each costs the downloader a quarter of its rate).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with open(temporary, mode.replace("w", "x"), encoding=encoding, newline=newline) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through ``atomic_file``: the file is complete or untouched. Returns ``path``."""
    if isinstance(data, str):
        with atomic_file(path, "w", encoding=encoding, newline="", durable=durable) as handle:
            handle.write(data)
    else:
        with atomic_file(path, "wb", durable=durable) as handle:
            handle.write(data)
    return Path(path)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and restored at once."""
    with suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_permissions(folder: str | Path) -> None:
    """Give every file under ``folder`` the permissions a plain ``open`` gives (0666 minus the umask).

    Some libraries write through a private temporary and rename it: safetensors' ``save_file`` leaves a 0600
    ``model.safetensors`` (tempfile's mode), which the rest of a shared folder's group then cannot read. Call it on
    folders whose every file this process wrote.
    """
    wanted = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != wanted:
            with suppress(OSError):
                os.chmod(path, wanted)


# ---------------------------------------------------------------------------------------------------- locks


def _lock(fd: int, shared: bool = False) -> bool | None:
    """Take an exclusive (or ``shared``) flock on ``fd`` without waiting: True if taken, False if another process
    holds it, None where flock does not exist or the file system refuses it (no lock to respect, nor to trust)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # e.g. some network file systems
        logger.warning("cannot lock (%s); going on without a lock", error)
        return None
    return True


def _read_holder(fd: int) -> tuple[str, str | None, str | None]:
    """Who holds a lock file, from its record: a description (pid, host, start time), the pid, and its job."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        described = f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        return described, str(holder["pid"]), holder.get("job")
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet", None, None


def _write_holder(fd: int, job: str) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started, "job": job}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)


def _held_by_another(fd: int, lock_file: Path, what: str) -> LockHeldError:
    holder, pid, job = _read_holder(fd)
    stop = f"stop it (kill {pid})" if pid else "stop it"
    running = f"{what} is already running" if job in (None, what) else f"{what} cannot start: {job} is running"
    return LockHeldError(
        f"{running}: {holder} (it holds {lock_file}). Wait for it to finish, or {stop} and run again; a run that "
        "crashed or was killed releases the lock by itself."
    )


def _open_locked(lock_file: Path, what: str, shared: bool) -> int:
    """Open ``lock_file`` (created if needed) and lock it without waiting; raises LockHeldError naming the holder."""
    for _ in range(10):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        if _lock(fd, shared) is False:
            error = _held_by_another(fd, lock_file, what)
            os.close(fd)
            raise error
        try:
            same_file = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    raise LockHeldError(f"{lock_file} keeps being replaced; is another run starting and stopping in a loop?")


@contextmanager
def exclusive_lock(lock_file: str | Path, *, what: str) -> Iterator[Path]:
    """Hold ``lock_file`` (created if needed) for the duration of the block, or raise ``LockHeldError`` at once.

    The lock is an OS lock (``flock``), so a holder that crashes or is killed releases it with its last breath; the
    file records the holder's pid, host and start time for the error message, and is removed on a clean exit.
    ``what`` names the job for that message, e.g. "A download into data/images".
    """
    lock_file = Path(lock_file)
    fd = _open_locked(lock_file, what, shared=False)
    try:
        _write_holder(fd, what)
        yield lock_file
    finally:
        # Removed while still held, so that no other process can take a lock on a file that is about to vanish.
        with suppress(OSError):
            lock_file.unlink()
        os.close(fd)


@contextmanager
def shared_lock(lock_file: str | Path, *, what: str) -> Iterator[Path]:
    """Hold ``lock_file`` shared for the block: with other readers, never with the ``exclusive_lock`` holder.

    For a job that reads what another writes (``prepare`` reading a folder a ``download`` fills): it raises
    ``LockHeldError`` at once, naming the writer (pid, host, start time), while the writer runs; and while it holds
    the lock, the writer refuses to start, naming the first reader. The last reader out removes the file.
    """
    lock_file = Path(lock_file)
    fd = _open_locked(lock_file, what, shared=True)
    try:
        if _lock(fd) is True:  # no other reader: name ourselves for a writer's message (any record is a dead run's)
            _write_holder(fd, what)
        # Back to shared; flock converts a lock by dropping it first, so a failed upgrade above lost it too, and a
        # writer may have taken it in between.
        if _lock(fd, shared=True) is False:
            raise _held_by_another(fd, lock_file, what)
        yield lock_file
    finally:
        # Only a reader that can take the lock exclusively is the last: it removes the file while holding it.
        if _lock(fd) is True:
            with suppress(OSError):
                lock_file.unlink()
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- folders


def how_folders_overlap(first: str | Path, second: str | Path) -> str | None:
    """How ``first`` relates to ``second`` once symlinks are resolved: "is the same folder as", "contains" or
    "lies inside"; None when they are apart (writing or replacing one cannot touch the other)."""
    first, second = Path(first).resolve(), Path(second).resolve()
    if first == second:
        return "is the same folder as"
    if second.is_relative_to(first):
        return "contains"
    if first.is_relative_to(second):
        return "lies inside"
    return None


def _siblings(target: Path, suffix: str) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[0-9a-f]{{8}}{re.escape(suffix)}$")
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink()]


def _remove_abandoned(target: Path) -> None:
    """Clean up after writers of ``target`` that died: restore a retired complete folder if ``target`` is missing,
    and remove temporary folders no live process holds."""
    retired = sorted(_siblings(target, _RETIRED_SUFFIX), key=lambda p: p.stat().st_mtime)
    if retired and not target.exists():
        with suppress(OSError):
            os.rename(retired.pop(), target)
            logger.warning("restored %s, left aside by a run that was killed while replacing it", target)
    for path in retired + _siblings(target, PARTIAL_SUFFIX) + _siblings(target, _CREATING_SUFFIX):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd) is not True:
                continue  # locked: a live writer's
            if path.name.endswith(_CREATING_SUFFIX):
                # Unlocked and still being created: its writer died, or is between its mkdir and its lock, when it
                # is still empty; rmdir removes only an empty folder, and the writer then starts again.
                with suppress(OSError):
                    os.rmdir(path)
            else:  # unlocked: its writer is dead (we hold the lock while removing it)
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _new_locked_folder(target: Path) -> tuple[Path, int]:
    """Create an empty ``.part`` sibling of ``target`` that is locked from the moment it has that name.

    A folder cannot be created locked, and another writer cleaning beside the same target (``_remove_abandoned``)
    takes any unlocked ``.part`` folder for a dead run's. So the folder is made under a name the cleaner treats with
    care (``.creating``: removed only when empty and unlocked), locked, then renamed to its ``.part`` name; the lock
    belongs to the open folder and survives the rename. A cleaner that removed it between the mkdir and the lock
    makes the rename fail, and we start again.
    """
    while True:
        path = partial_path(target)
        creating = path.with_name(path.name[: -len(PARTIAL_SUFFIX)] + _CREATING_SUFFIX)
        try:
            os.mkdir(creating)  # the umask's permissions (mkdtemp would give 0700)
        except FileExistsError:
            continue
        try:
            fd = os.open(creating, os.O_RDONLY)
        except FileNotFoundError:
            continue  # a cleaner removed it already
        if _lock(fd) is False:
            os.close(fd)  # a cleaner holds it while removing it
            continue
        try:
            os.rename(creating, path)
        except FileNotFoundError:
            os.close(fd)  # removed between our mkdir and our lock: that inode is gone
            continue
        return path, fd


@contextmanager
def _locked_partial_folder(target: Path) -> Iterator[Path]:
    """A new, empty temporary sibling folder of ``target``, held locked while in use and removed afterwards."""
    path, fd = _new_locked_folder(target)
    try:
        yield path
    finally:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def temporary_folder_beside(path: str | Path) -> Iterator[Path]:
    """A scratch folder next to ``path`` (``.<name>.<hex>.part``), removed afterwards.

    It lives on ``path``'s disk rather than in ``$TMPDIR``, which is RAM (tmpfs) on many machines. One left by a
    killed run is removed by the next call beside the same ``path``.
    """
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    with _locked_partial_folder(target) as folder:
        yield folder


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system
    cannot, for the caller to fall back on two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (old glibc, some musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _swap_into_place(staging: Path, target: Path, overwrite: bool) -> None:
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        try:
            os.rename(staging, target)  # onto nothing, or onto an empty folder: one atomic step
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not overwrite:
                raise FileExistsError(f"{target} was filled by another process meanwhile; nothing was replaced.") \
                    from None
    if not overwrite:
        raise FileExistsError(f"{target} already exists and is not empty; pass overwrite=True to replace it.")
    if _exchange(staging, target):
        return  # the staging name now holds the old folder; the caller removes it
    # Fallback: two renames. A kill between them leaves the old folder complete under a ".previous" name, which the
    # next run beside the same target restores (see _remove_abandoned).
    retired = target.with_name(f".{target.name}.{secrets.token_hex(4)}{_RETIRED_SUFFIX}")
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_folder(output_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder that appears at ``output_dir`` complete, or not at all.

    Yields an empty temporary sibling folder (``.<name>.<hex>.part``, same disk); when the block ends without an
    exception it replaces ``output_dir`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
    renames, with recovery). At every instant ``output_dir`` is the previous complete folder or the new complete
    one; an exception or a kill leaves the previous one. A non-empty ``output_dir`` is refused (``FileExistsError``)
    unless ``overwrite``; it is checked again when swapping. If ``output_dir`` is a symlink, the folder it points to
    is the one replaced (and the temporary is built beside it). The new folder and its files have ordinary permissions
    (the umask's), even those a library wrote as 0600.
    Only this module's own temporaries are ever removed; what is replaced is what the caller asked to replace.
    """
    target = Path(output_dir).resolve()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; choose another output folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists and is not empty; pass overwrite=True to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    with _locked_partial_folder(target) as staging:
        yield staging
        give_umask_permissions(staging)  # whatever library wrote the files, the folder appears with the umask's
        _swap_into_place(staging, target, overwrite)
