"""An output folder belongs to one run: a lock file names the run writing there, ``--overwrite_output_dir`` moves
earlier contents aside instead of mixing them in, resumes pick the newest complete checkpoint, final models are
saved under a temporary name and renamed, and a full or read-only disk is reported in one line.

These rules hold for every step (SFT, reward, PPO) and for ``rlhf-trl e2e``; the scripts meet them through
``claim_output_dir``, ``find_resume_checkpoint`` and ``save_atomically``.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = ".rlhf-trl.lock"
STAGING_NAME = ".saving-final-model"  # where the final model is written before it is renamed into place
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# Written last into a checkpoint by the Trainer (SFT, reward) and by our PPO checkpoints: present = complete.
COMPLETE_MARKERS = ("trainer_state.json", "ppo_state.json")
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file is in the way of a folder",
}
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the others may come from reading as well


class OutputDirError(RuntimeError):
    """The output folder cannot be used (taken by another run, not writable, nothing to resume); one line."""


# ------------------------------------------------------------------------------------------------ disk errors
def disk_error_line(error: BaseException, fallback_path: str | Path | None = None) -> str | None:
    """``cannot write <path>: no space left on device`` for a disk-level OSError anywhere in the chain of
    ``error`` (savers often wrap it), else None."""
    seen = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            where = current.filename or fallback_path or "the output folder"
            verb = "write" if current.errno in _WRITE_ERRNOS else "use"
            return f"cannot {verb} {where}: {DISK_ERRNOS[current.errno]}"
        current = current.__cause__ or current.__context__
    return None


# ------------------------------------------------------------------------------------------------ the lock
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_HELD: list[OutputLock] = []  # this process's locks, released by release_held_locks() when a command ends


def release_held_locks() -> None:
    """Release every lock this process holds (a command's last act, whether it succeeded or failed)."""
    for lock in list(_HELD):
        lock.release()


atexit.register(release_held_locks)  # also when a command ends by an unexpected exception


class OutputLock:
    """``<folder>/.rlhf-trl.lock`` holding the pid, host and start time of the run that owns the folder."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.held = False

    def acquire(self, command: str = "") -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        record["command"] = command
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_lock(self.path)
                pid, host = owner.get("pid"), owner.get("host")
                if owner and host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid):
                    print(
                        f"note: taking over {self.path.parent}: its lock names pid {pid} on {host}, which has ended",
                        file=sys.stderr,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutputDirError(
                    f"output_dir {self.path.parent} is in use by another run (pid {pid} on {host}, started "
                    f"{owner.get('started', '?')}); wait for it or choose another output_dir (delete {self.path} "
                    "if that run is gone)"
                ) from None
            with os.fdopen(handle, "w") as file:
                json.dump(record, file)
            self.held = True
            _HELD.append(self)
            return
        raise OutputDirError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            _HELD.remove(self)


# ------------------------------------------------------------------------------------------------ the folder
def visible_contents(folder: Path) -> list[Path]:
    """Entries of ``folder`` other than the lock."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.name != LOCK_NAME)


def move_aside(folder: Path, entries: list[Path] | None = None) -> Path | None:
    """Move the contents of ``folder`` (not the lock; only ``entries`` when given) into the sibling folder
    ``<folder>.previous-<timestamp>``; returns it, or None when there was nothing to move."""
    contents = visible_contents(folder)
    if entries is not None:
        contents = [path for path in contents if path in set(entries)]
    if not contents:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    destination = folder.parent / f"{folder.name}.previous-{stamp}"
    suffix = 1
    while destination.exists():
        suffix += 1
        destination = folder.parent / f"{folder.name}.previous-{stamp}-{suffix}"
    destination.mkdir(parents=True)
    for path in contents:
        path.rename(destination / path.name)
    return destination


def claim_output_dir(folder: str | Path, overwrite: bool, resuming: bool, command: str = "") -> OutputLock:
    """Make ``folder`` this run's: create it, lock it, and refuse or move aside what an earlier run left.

    A resume of the folder's own run continues in it as it is; ``overwrite`` moves earlier contents to
    ``<folder>.previous-*``; otherwise a non-empty folder is refused with a message naming both ways on. Returns the
    held lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"output_dir {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(folder)
        lock.acquire(command)
    except OSError as error:
        raise OutputDirError(disk_error_line(error, folder) or f"cannot use output_dir {folder}: {error}") from error
    try:
        if resuming:
            for leftover in folder.glob(f"{STAGING_NAME}*"):
                shutil.rmtree(leftover, ignore_errors=True)  # a final save the earlier run did not finish
            return lock
        if overwrite:
            moved = move_aside(folder)
            if moved is not None:
                print(f"note: moved the previous contents of {folder} to {moved}", file=sys.stderr)
        elif visible_contents(folder):
            raise OutputDirError(
                f"output_dir {folder} is not empty; pass --resume_from_checkpoint true to continue the run there or "
                "--overwrite_output_dir to move its contents aside and start afresh"
            )
    except BaseException:
        lock.release()
        raise
    return lock


# ------------------------------------------------------------------------------------------------ resuming
def is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in COMPLETE_MARKERS)


def checkpoints_in(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first (complete or not)."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)]
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))


def latest_complete_checkpoint(folder: Path) -> Path | None:
    complete = [path for path in checkpoints_in(folder) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def wants_resume(resume_from_checkpoint) -> bool:
    """Whether a ``--resume_from_checkpoint`` value asks for a resume (true or a path) at all."""
    return resume_from_checkpoint not in (None, False, "", "false", "False", "no")


def resumes_inside(folder: str | Path, resume_from_checkpoint) -> bool:
    """Whether the resume continues the run of ``folder`` itself (true, or a checkpoint inside it)."""
    if resume_from_checkpoint in (True, "true", "True", "yes"):
        return True
    return wants_resume(resume_from_checkpoint) and Path(resume_from_checkpoint).resolve().is_relative_to(
        Path(folder).resolve()
    )


def find_resume_checkpoint(folder: str | Path, resume_from_checkpoint, announce: bool = True) -> Path | None:
    """What ``--resume_from_checkpoint`` means: unset/false -> None; true -> the newest complete checkpoint in
    ``folder`` (half-written ones are skipped, with a note when ``announce``); a path -> that checkpoint, if
    complete."""
    if not wants_resume(resume_from_checkpoint):
        return None
    folder = Path(folder)
    if resume_from_checkpoint in (True, "true", "True", "yes"):
        for path in reversed(checkpoints_in(folder)):
            if is_complete_checkpoint(path):
                return path
            if announce:
                print(f"note: skipping {path}: half-written (no {' or '.join(COMPLETE_MARKERS)})", file=sys.stderr)
        raise OutputDirError(f"--resume_from_checkpoint true: {folder} holds no complete checkpoint to resume from")
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise OutputDirError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    if not is_complete_checkpoint(path):
        raise OutputDirError(f"--resume_from_checkpoint {path}: not a complete checkpoint (it has no trainer state)")
    return path


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records of a log file written after ``step``, so a resumed run's log reads as one run's."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------------------------------------ final save
def save_atomically(folder: str | Path, save: Callable[[Path], None], is_main_process: bool = True) -> None:
    """Run ``save(staging)`` into a temporary folder inside ``folder``, then rename its entries into place.

    Writing is what fails on a full disk; renames need no space. So a failed save leaves the earlier files of
    ``folder`` (a previous final model, the checkpoints) as they were, and the error names the file it could not
    write. Every process calls this (savers gather weights collectively); only the main one touches the folder.
    """
    folder = Path(folder)
    staging = folder / STAGING_NAME  # a leftover of a crashed save was removed when the folder was claimed
    try:
        save(staging)
    except BaseException:
        if is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not is_main_process:
        return
    for path in sorted(staging.iterdir()):
        target = folder / path.name
        if path.is_dir() and target.is_dir():
            # Swap whole sub-models (critic/, ema/) in one rename each; the old copy is removed afterwards.
            old = folder / f"{STAGING_NAME}-old-{path.name}"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            path.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(path, target)
    staging.rmdir()
