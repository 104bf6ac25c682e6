"""Writing what a PPO run produces: per-step logs, atomic checkpoints with everything a resume needs, and the final
models. Mixed into PPOTrainer; uses its accelerator, args, state and models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rlhf_trl.guards import warn_if_rng_state_unusable
from rlhf_trl.output_dir import truncate_jsonl
from rlhf_trl.ppo import checkpoint as checkpoints
from rlhf_trl.ppo.experience import Rollout
from rlhf_trl.ppo.run_logger import SHOWN

logger = logging.getLogger("rlhf_trl.ppo.trainer")


class PersistenceMixin:
    def _log(self, metrics: dict[str, float], rollout: Rollout) -> None:
        step = self.state["global_step"]
        record = {"step": step, **{key: round(float(value), 6) for key, value in metrics.items()}}
        self.log_history.append(record)
        samples = [
            {
                "step": step,
                "prompt": rollout.prompts[index],
                "completion": rollout.completions[index],
                "score": float(rollout.raw_scores[index]),
                "gold_score": None if rollout.gold_scores is None else float(rollout.gold_scores[index]),
            }
            for index in range(min(self.args.num_samples_to_log, len(rollout)))
        ]
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            with (self.output_dir / "samples.jsonl").open("a") as handle:
                handle.writelines(json.dumps(sample) + "\n" for sample in samples)
        # Trackers see exactly the rounded values of metrics.jsonl, at the same step.
        self.run_logger.log(record, samples)
        if self.accelerator.is_main_process:
            logger.info(
                "step %d/%d  %s",
                step,
                self.max_steps,
                "  ".join(f"{key.split('/')[-1]}={metrics[key]:.3f}" for key in SHOWN if key in metrics),
            )

    @torch.no_grad()
    def save_checkpoint(self) -> Path:
        """Everything a resume needs, written atomically; the oldest beyond save_total_limit are removed."""
        step = self.state["global_step"]
        if self.accelerator.is_main_process:
            checkpoints.staging_dir(self.output_dir, step)
        self.accelerator.wait_for_everyone()
        staging = checkpoints.staging_path(self.output_dir, step)
        # Model, optimizer, scheduler and every RNG (python, numpy, torch) go through Accelerate.
        self.accelerator.save_state(str(staging / "accelerator"))
        if self.ema is not None and self.accelerator.is_main_process:
            torch.save(self.ema.state_dict(), staging / "ema.pt")
        state = {
            "trainer": self.state,
            "sampler": self.sampler.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "score_normalizer": self.score_normalizer.state_dict(),
            "timings": self.timings,
        }
        final = None
        if self.accelerator.is_main_process:
            final = checkpoints.commit(staging, self.output_dir, step, state, self.args.save_total_limit)
            logger.info("saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path) -> None:
        state = checkpoints.read_state(path)
        self.accelerator.load_state(str(path / "accelerator"))
        warn_if_rng_state_unusable(path / "accelerator", self.accelerator.process_index)
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(path / "ema.pt", map_location=self.accelerator.device))
        self.state.update(state["trainer"])
        self.sampler.load_state_dict(state["sampler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_normalizer.load_state_dict(state["score_normalizer"])
        self.timings.update(state["timings"])
        self._truncate_metrics(self.state["global_step"])
        logger.info("resumed from %s at step %d", path, self.state["global_step"])

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed run's logs read like an uninterrupted one."""
        if not self.accelerator.is_main_process:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(self.output_dir / name, step)

    def save_model(self, output_dir: str | None = None) -> None:
        """Actor (full weights or LoRA adapter) to output_dir, critic to output_dir/critic, EMA to output_dir/ema."""
        output_dir = Path(output_dir or self.args.output_dir)
        self.accelerator.wait_for_everyone()
        unwrapped = self.accelerator.unwrap_model(self.model)
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            policy_state = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
            critic_state = {
                k[len("critic.model.") :]: v for k, v in state_dict.items() if k.startswith("critic.model.")
            }
            unwrapped.policy.save_pretrained(output_dir, state_dict=policy_state)
            unwrapped.critic.model.save_pretrained(output_dir / "critic", state_dict=critic_state)
            self.tokenizer.save_pretrained(output_dir)
            self.tokenizer.save_pretrained(output_dir / "critic")
            if self.ema is not None:
                self.ema.save_pretrained(output_dir / "ema")
                self.tokenizer.save_pretrained(output_dir / "ema")
        self.accelerator.wait_for_everyone()
