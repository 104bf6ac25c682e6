"""PPO checkpoints and final models. Checkpoints are atomic and rotating: written under a temporary name and
renamed, so a crash mid-save never leaves a half-written checkpoint that a resume could pick up."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from rlhf_trl.guards import warn_if_rng_state_unusable

logger = logging.getLogger("rlhf_trl.ppo.trainer")

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


class CheckpointManager:
    """Writes and reads a PPO run's checkpoints, and saves its final models.

    Args:
        accelerator: the trainer's Accelerator; model, optimizer, scheduler and every RNG go through its
            save_state/load_state.
        output_dir: where checkpoint-<step> folders are written.
        save_total_limit: keep at most this many checkpoints (None: all).
        ema: the EMA copy of the actor (None without EMA), saved beside the Accelerate state.
    """

    def __init__(self, accelerator, output_dir, save_total_limit: int | None, ema=None):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.save_total_limit = save_total_limit
        self.ema = ema

    @torch.no_grad()
    def save(self, step: int, state: dict) -> Path | None:
        """Checkpoint of ``step`` with the trainer's JSON ``state``; returns its path on the main process."""
        if self.accelerator.is_main_process:
            staging_dir(self.output_dir, step)
        self.accelerator.wait_for_everyone()
        staging = staging_path(self.output_dir, step)
        self.accelerator.save_state(str(staging / "accelerator"))
        if self.ema is not None and self.accelerator.is_main_process:
            torch.save(self.ema.state_dict(), staging / "ema.pt")
        final = None
        if self.accelerator.is_main_process:
            final = commit(staging, self.output_dir, step, state, self.save_total_limit)
            logger.info("saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def load(self, path: Path) -> dict:
        """Restores the Accelerate state (and EMA) of checkpoint ``path``; returns the trainer's JSON state."""
        state = read_state(path)
        self.accelerator.load_state(str(path / "accelerator"))
        warn_if_rng_state_unusable(path / "accelerator", self.accelerator.process_index)
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(path / "ema.pt", map_location=self.accelerator.device))
        return state

    def save_model(self, model, tokenizer, output_dir) -> None:
        """Actor (full weights or LoRA adapter) to output_dir, critic (if any) to output_dir/critic, EMA to
        output_dir/ema. ``model`` is the prepared PolicyAndValueWrapper."""
        output_dir = Path(output_dir)
        self.accelerator.wait_for_everyone()
        unwrapped = self.accelerator.unwrap_model(model)
        state_dict = self.accelerator.get_state_dict(model)
        if self.accelerator.is_main_process:
            policy_state = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
            critic_state = {
                k[len("critic.model.") :]: v for k, v in state_dict.items() if k.startswith("critic.model.")
            }
            unwrapped.policy.save_pretrained(output_dir, state_dict=policy_state)
            tokenizer.save_pretrained(output_dir)
            if unwrapped.critic is not None:
                unwrapped.critic.model.save_pretrained(output_dir / "critic", state_dict=critic_state)
                tokenizer.save_pretrained(output_dir / "critic")
            if self.ema is not None:
                self.ema.save_pretrained(output_dir / "ema")
                tokenizer.save_pretrained(output_dir / "ema")
        self.accelerator.wait_for_everyone()
