"""Atomic, rotating PPO checkpoints: written under a temporary name and renamed, so a crash mid-save never leaves
a half-written checkpoint that a resume could pick up."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

PREFIX = "checkpoint-"
STATE_FILE = "ppo_state.json"
_PATTERN = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders never match the pattern)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and _PATTERN.match(path.name)]
    found = [path for path in found if (path / STATE_FILE).exists()]
    return sorted(found, key=lambda path: int(_PATTERN.match(path.name).group(1)))


def resolve_resume_path(output_dir, resume_from_checkpoint) -> Path | None:
    """``True``/"true" -> the latest checkpoint in output_dir; a path -> that path; falsy -> None."""
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True"):
        found = checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint=true but {output_dir} holds no complete checkpoint")
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a complete PPO checkpoint (no {STATE_FILE})")
    return path


def staging_path(output_dir, step: int) -> Path:
    return Path(output_dir) / f".tmp-{PREFIX}{step}"


def staging_dir(output_dir, step: int) -> Path:
    """A fresh, empty staging folder for the checkpoint of ``step``."""
    path = staging_path(output_dir, step)
    if path.exists():
        shutil.rmtree(path)  # left over from a crash during an earlier save
    path.mkdir(parents=True)
    return path


def commit(staging: Path, output_dir, step: int, state: dict, keep_last: int | None) -> Path:
    """Write the trainer state last, rename into place, then drop the oldest checkpoints beyond keep_last."""
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    final = Path(output_dir) / f"{PREFIX}{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    if keep_last:
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    return final


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())
