"""The processed-data cache: one folder per (step, sources' content, data arguments), found by fingerprint.

A changed file changes its content hash and so the key: stale data is never read back. Entries are written to a
temporary folder and renamed, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .summary import ValidationSummary

logger = logging.getLogger(__name__)
# Bump when the processing changes so that entries written by older code are not reused.
CACHE_FORMAT_VERSION = 2


def cache_key(args, step: int, source_fingerprints: list[tuple[str, str]], eval_fingerprints: list) -> str:
    """SHA-256 of everything that decides the processed data (every data argument except the cache folder)."""
    settings = {name: value for name, value in dataclasses.asdict(args).items() if name != "data_cache_dir"}
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "step": step,
        "settings": settings,
        "sources": source_fingerprints,
        "eval_sources": eval_fingerprints,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, step: int, key: str) -> Path:
    return Path(cache_dir) / f"step{step}-{key[:24]}"


def load_entry(cache_dir: str | os.PathLike, step: int, key: str):
    """(train, eval or None, summary) from the cache, or None when there is no complete entry."""
    import datasets

    path = entry_path(cache_dir, step, key)
    if not (path / "summary.json").is_file():
        return None
    summary = ValidationSummary.from_dict(json.loads((path / "summary.json").read_text(encoding="utf-8")))
    train = datasets.load_from_disk(str(path / "train"))
    evaluation = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    logger.info("processed data for step %d read from cache %s", step, path)
    return train, evaluation, summary


def save_entry(cache_dir: str | os.PathLike, step: int, key: str, train, evaluation, summary) -> Path:
    """Write an entry atomically and return its folder.

    If another process (e.g. another data-parallel rank) finished the same entry first, its copy is kept: the key
    fixes the content, so both are the same.
    """
    target = entry_path(cache_dir, step, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        train.save_to_disk(str(staging / "train"))
        if evaluation is not None:
            evaluation.save_to_disk(str(staging / "eval"))
        # summary.json last: its presence marks a complete entry.
        (staging / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
        if not target.exists():
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / "summary.json").is_file():
                    raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
