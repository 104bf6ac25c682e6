"""PPOTrainer: DeepSpeed-Chat's step 3 as a TRL-style trainer on Accelerate.

One PPO step = ``generate`` (the generator: a generation backend) -> ``score`` (actor, reference, critic forwards
+ rewards) -> ``compute_advantages`` (KL-shaped rewards, GAE; or a critic-free estimator: GRPO, RLOO, REINFORCE++)
-> ``update`` (clipped policy loss, and value loss with a critic) -> log.
Each is a method that a subclass can override. The trainer holds collaborators that each own one job: the prompt
set, the completion scorer (rewards), the evaluator (metrics), the run logger and the checkpoint manager.
"""

from __future__ import annotations

import logging
import math
import resource
import time

import numpy as np
import torch

from rlhf_trl.generation import as_completions, has_eos
from rlhf_trl.guards import InvalidRewardError, TrainingDivergedError, agree_on_micro_batch, check_gradient_norm
from rlhf_trl.ppo import checkpoint as checkpoints
from rlhf_trl.ppo import estimators
from rlhf_trl.ppo.advantages import penalize_missing_eos, shape_scores
from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.distributed import configure_deepspeed, prepare_frozen
from rlhf_trl.ppo.ema import ema_update
from rlhf_trl.ppo.evaluator import Evaluator
from rlhf_trl.ppo.experience import PromptSampler, PromptSet, Rollout, ScoreNormalizer, micro_batches
from rlhf_trl.ppo.forwards import score_forwards
from rlhf_trl.ppo.kl_control import build_kl_controller
from rlhf_trl.ppo.model_setup import build_accelerator, build_generator, check_tokenizer_and_critic, ready_models
from rlhf_trl.ppo.modeling import PolicyAndValueWrapper, causal_lm_logits
from rlhf_trl.ppo.objective import PPOObjective
from rlhf_trl.ppo.optim import build_optimizer_and_scheduler
from rlhf_trl.ppo.run_logger import RunLogger
from rlhf_trl.ppo.scoring import CompletionScorer, build_reward
from rlhf_trl.reward.sources import CombinedReward

logger = logging.getLogger(__name__)

__all__ = ["PPOTrainer", "TrainingDivergedError", "InvalidRewardError"]


class PPOTrainer:
    """PPO with an actor, a frozen reference, a critic and reward sources (reward model and/or functions); without
    the critic for the advantage estimators that need none (``advantage_estimator``).

    Args:
        args: PPOConfig.
        processing_class: the actor's tokenizer (needs a pad token distinct from EOS).
        model: the actor (from SFT), a PreTrainedModel; wrapped with LoRA when ``peft_config`` is given.
        ref_model: frozen reference; None -> a frozen copy of the actor, or the actor with adapters disabled (LoRA).
        reward_model: sequence-classification reward model (optional when reward_funcs are given).
        reward_processing_class: the reward model's tokenizer (defaults to ``processing_class``).
        value_model: the critic, a sequence-classification model (DS-Chat: initialised from the reward model);
            None for an advantage estimator without a critic (anything but gae).
        reward_funcs: callables ``f(prompts, completions, **columns) -> list[float]``.
        gold_funcs: callables of the same form measuring true quality; logged, never trained on.
        train_dataset / eval_dataset: datasets with a ``prompt`` column (text or conversational messages).
        ptx_dataset: texts (``text`` column) for PPO-ptx.
    """

    def __init__(
        self,
        args: PPOConfig,
        processing_class,
        model,
        value_model,
        train_dataset,
        ref_model=None,
        reward_model=None,
        reward_processing_class=None,
        reward_funcs=None,
        gold_funcs=None,
        eval_dataset=None,
        ptx_dataset=None,
        peft_config=None,
    ):
        self.args = args
        self.tokenizer = processing_class
        check_tokenizer_and_critic(self.tokenizer, value_model, args)
        self.accelerator = build_accelerator(args)
        self.is_peft = peft_config is not None
        model, value_model, self.ref_model, self.ema = ready_models(
            args, model, value_model, ref_model, reward_model, peft_config
        )
        device = self.accelerator.device
        self.train_prompts = PromptSet(train_dataset, "train_dataset", self.tokenizer, args.max_prompt_length, device)
        self.eval_prompts = None
        if eval_dataset is not None:
            self.eval_prompts = PromptSet(eval_dataset, "eval_dataset", self.tokenizer, args.max_prompt_length, device)
        self.sampler = PromptSampler(
            len(self.train_prompts),
            args.per_device_train_batch_size,
            self.accelerator.process_index,
            self.accelerator.num_processes,
            args.seed,
        )
        self.max_steps = self._total_steps()

        wrapper = PolicyAndValueWrapper(model, value_model)
        optimizer, scheduler = build_optimizer_and_scheduler(wrapper, args, self.max_steps)
        configure_deepspeed(self.accelerator, args, model)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(wrapper, optimizer, scheduler)
        # The wrapper inside what prepare returned, found once: unwrap_model reads package metadata on every call
        # (about 3 ms, a tenth of a tiny PPO step when it ran for every micro-batch).
        self.wrapper = self.accelerator.unwrap_model(self.model)
        self.ref_model = prepare_frozen(self.ref_model, self.accelerator)
        reward_model = prepare_frozen(reward_model, self.accelerator)
        if self.ema is not None:
            self.ema.to(device)

        reward = build_reward(
            reward_model,
            reward_processing_class or processing_class,
            reward_funcs,
            args.reward_weights,
            args.micro_batch_size,
            self.train_prompts.prompts,
        )
        gold = CombinedReward(gold_funcs) if gold_funcs else None
        self.scorer = CompletionScorer(
            reward, gold, self.tokenizer, self.accelerator, args.drop_invalid_rewards, self.max_steps
        )
        self.kl_controller = build_kl_controller(args.kl_coef, args.adaptive_kl, args.kl_target, args.kl_horizon)
        self.score_normalizer = ScoreNormalizer(args.score_normalization)
        ptx_texts = list(ptx_dataset["text"]) if ptx_dataset is not None else None
        self.objective = PPOObjective(args, self.kl_controller, self.tokenizer, ptx_texts, self.accelerator.device)
        # PPOConfig has parsed and validated generation_kwargs; the tokenizer gives the end and padding ids.
        self.generation_config = args.sampling_config(
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id
        )
        self.generator = build_generator(args, self.model, self.tokenizer, self.generation_config, self.accelerator)
        self.rollout_backend_in_use = self.generator.active_backend
        logger.info("rollout backend: %s", self.rollout_backend_in_use)

        self.state = {"global_step": 0, "consecutive_skips": 0, "episodes": 0}
        self.timings = {"generation_s": 0.0, "scoring_s": 0.0, "training_s": 0.0, "step_s": 0.0}
        self.evaluator = Evaluator(
            self.accelerator,
            self.model,
            self.tokenizer,
            self.generation_config,
            self.scorer,
            self.eval_prompts,
            args.eval_prompts_limit,
            args.per_device_train_batch_size,
        )
        self.run_logger = RunLogger(self.accelerator, args, self.max_steps)
        self.checkpoints = checkpoints.CheckpointManager(
            self.accelerator, args.output_dir, args.save_total_limit, self.ema
        )

    # ------------------------------------------------------------------------------------------------ set-up helpers
    def _total_steps(self) -> int:
        if self.args.max_steps and self.args.max_steps > 0:
            return self.args.max_steps
        per_epoch = self.sampler.batches_per_epoch // self.args.generation_batches
        return max(1, int(math.ceil(self.args.num_train_epochs * per_epoch)))

    @property
    def policy(self):
        return self.wrapper.policy

    @property
    def log_history(self) -> list[dict]:
        """Every record written to metrics.jsonl by this run (this process's copy)."""
        return self.run_logger.history

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint=None) -> dict[str, float]:
        """Run PPO steps until max_steps; returns the last logged metrics."""
        args = self.args
        resume = checkpoints.resolve_resume_path(args.output_dir, resume_from_checkpoint)
        if resume is not None:
            self._resume(resume)
        elif args.score_normalization == "reference":
            self._measure_reference_scores()
        last = {}
        while self.state["global_step"] < self.max_steps:
            last = self.step()
            step = self.state["global_step"]
            saving = str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps"
            if saving and args.save_steps and step % int(args.save_steps) == 0 and step < self.max_steps:
                self.save_checkpoint()
        self.run_logger.finish()
        return last

    def step(self) -> dict[str, float]:
        """One PPO step: rollouts, scoring, advantages, update; logs and returns the metrics."""
        started = time.perf_counter()
        parts = [self.generate(self.next_batch()) for _ in range(self.args.generation_batches)]
        rollout = Rollout.concatenate(parts, self.tokenizer.pad_token_id)
        generated = time.perf_counter()
        self.score(rollout)
        self.compute_advantages(rollout)
        scored = time.perf_counter()
        update_stats = self.update(rollout)
        self.generator.sync_weights()
        trained = time.perf_counter()
        phases = {
            "generation_s": generated - started,
            "scoring_s": scored - generated,
            "training_s": trained - scored,
            "step_s": trained - started,
        }
        self.state["global_step"] += 1
        self.state["episodes"] += len(rollout) * self.accelerator.num_processes
        metrics = self._step_metrics(rollout, update_stats, phases)
        self._log(metrics, rollout)
        return metrics

    # ------------------------------------------------------------------------------------------------ generate
    def next_batch(self) -> dict:
        """The next per-device batch of prompts, left-padded, each repeated num_generations times in adjacent rows
        (a group). A process samples every completion of its prompts, so groups never span processes."""
        group_size = self.args.num_generations
        return self.train_prompts.batch([index for index in self.sampler.next_indices() for _ in range(group_size)])

    @torch.no_grad()
    def generate(self, batch: dict) -> Rollout:
        """Sample completions for a batch of prompts; everything after the first EOS becomes padding."""
        # Speed hook: log-probs from the decoding logits (rollout.py) spare score() the actor's forward.
        if self.args.recompute_rollout_logprobs:
            completion_ids, rollout_logprobs = self.generator.generate(batch["prompt_ids"], batch["prompt_mask"]), None
        else:
            completion_ids, rollout_logprobs = self.generator.generate_with_logprobs(
                batch["prompt_ids"], batch["prompt_mask"], self.args.temperature
            )
        return Rollout.from_generation(batch, completion_ids, rollout_logprobs, self.tokenizer)

    # ------------------------------------------------------------------------------------------------ score
    def _reference_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0):
        if self.ref_model is not None:
            return causal_lm_logits(self.ref_model, input_ids, attention_mask, position_ids, logits_to_keep)
        # LoRA: the reference is the same base with the adapters switched off, so no second copy is held.
        with self.policy.disable_adapter():
            return causal_lm_logits(self.policy, input_ids, attention_mask, position_ids, logits_to_keep)

    @torch.no_grad()
    def score(self, rollout: Rollout) -> None:
        """Actor and reference log-probs, critic values (with a critic) and reward scores of a rollout (no
        gradients)."""
        args = self.args
        self.model.eval()
        logprobs, rollout.ref_logprobs, values = score_forwards(
            self.model, self._reference_logits, rollout, args, self.policy.dtype
        )
        self.model.train()
        rollout.logprobs = logprobs if logprobs is not None else rollout.logprobs
        # GAE sums over the whole answer: bf16 would lose precision. No critic: no values.
        rollout.values = values.float() if values is not None else None

        step = self.state["global_step"]
        completions = as_completions(rollout.prompts, rollout.completions)
        raw, parts, rollout.valid = self.scorer.rewards(
            rollout.prompts, completions, rollout.columns, rollout.completion_ids, step
        )
        # Samples left out (drop_invalid_rewards) get score 0 here and no weight in the update.
        raw = torch.where(rollout.valid.cpu(), raw, 0.0)
        rollout.raw_scores, rollout.score_parts = raw, parts
        ended = has_eos(rollout.completion_ids, self.tokenizer.eos_token_id).cpu()
        if args.score_normalization != "none":
            penalized = penalize_missing_eos(raw, ended, args.missing_eos_penalty)
            self.score_normalizer.update_from_processes(penalized, rollout.valid, self.accelerator)
        scores = shape_scores(
            raw, ended, args.missing_eos_penalty, self.score_normalizer.statistics(), args.reward_clip
        )
        rollout.scores = scores.to(self.accelerator.device)
        if self.scorer.gold is not None:
            rollout.gold_scores = self.scorer.gold_scores(rollout.prompts, completions, rollout.columns, step)

    def _measure_reference_scores(self) -> None:
        """score_normalization='reference': fix mean/std once from samples of the untrained (reference) policy."""
        saved_sampler = self.sampler.state_dict()
        rollout = self.generate(self.next_batch())
        completions = as_completions(rollout.prompts, rollout.completions)
        scores, _, valid = self.scorer.rewards(
            rollout.prompts, completions, rollout.columns, rollout.completion_ids, self.state["global_step"]
        )
        self.score_normalizer.update_from_processes(scores, valid, self.accelerator)
        self.sampler.load_state_dict(saved_sampler)
        logger.info(
            "reference score normalisation: mean %.4f std %.4f", self.score_normalizer.mean, self.score_normalizer.std
        )

    # ------------------------------------------------------------------------------------------------ advantages
    @torch.no_grad()
    def compute_advantages(self, rollout: Rollout) -> None:
        """Per-token KL, rewards, advantages and returns of the rollout (estimators.rollout_advantages): GAE with the
        critic's values, or a critic-free estimator over this process's intact groups."""
        kl_coef = self.kl_controller.value if self.args.kl_in_reward else 0.0
        rollout.kl, rollout.rewards, rollout.advantages, rollout.returns = estimators.rollout_advantages(
            rollout.scores,
            rollout.values,
            rollout.logprobs,
            rollout.ref_logprobs,
            rollout.completion_mask.float(),
            rollout.loss_mask(),
            self.args,
            kl_coef,
        )

    # ------------------------------------------------------------------------------------------------ update
    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over mini-batches of the rollout; returns mean statistics of the updates."""
        args = self.args
        stats: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(args.num_ppo_epochs):
            # Mini-batches may mix the completions of different prompts: every advantage was computed on the whole
            # rollout before this split, so an estimator's groups need not stay together here.
            order = torch.randperm(len(rollout)).tolist()
            for mini in micro_batches(len(rollout), args.local_mini_batch_size):
                for micro in micro_batches(mini.stop - mini.start, args.micro_batch_size):
                    # Each micro-batch runs on its own width: columns that are padding in all its samples are cut.
                    rows = rollout.select(torch.tensor(order[mini][micro]))
                    with self.accelerator.accumulate(self.model):
                        step_stats, loss, problem, blown_up = self._micro_batch_loss(rows)
                        step = self.state["global_step"]
                        blown_up = agree_on_micro_batch(problem, blown_up, step, self.accelerator.device)
                        if blown_up:
                            skipped += 1
                            loss = loss * 0.0  # keeps gradient-accumulation bookkeeping consistent on every rank
                        self._count_blow_up(blown_up, step_stats)
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients:
                            check_gradient_norm(self.accelerator, self.model, args.max_grad_norm, step)
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad()
                        if self.accelerator.sync_gradients and self.ema is not None:
                            ema_update(list(self.ema.parameters()), list(self.policy.parameters()), args.ema_beta)
                    for key, value in step_stats.items():
                        stats.setdefault(key, []).append(value)
        summary = {key: float(np.mean(values)) for key, values in stats.items()}
        summary["policy/skipped_micro_batches"] = float(skipped)
        return summary

    def _micro_batch_loss(self, rows):
        """(stats, loss, problem or None, blown_up) of the micro-batch ``rows`` (PPOObjective)."""
        return self.objective(self.model, self.policy, rows)

    def _count_blow_up(self, blown_up: bool, stats: dict[str, float]) -> None:
        """Track blown-up micro-batches in a row; too many stop training (earlier checkpoints stay intact)."""
        self.state["consecutive_skips"] = self.state["consecutive_skips"] + 1 if blown_up else 0
        if self.state["consecutive_skips"] >= self.args.max_consecutive_skips:
            raise TrainingDivergedError(
                f"step {self.state['global_step']}: {self.state['consecutive_skips']} micro-batches in a row blew up "
                f"(ratio max {stats['policy/ratio_max']:.3g}); lower the learning rate or raise ratio_threshold"
            )

    # ------------------------------------------------------------------------------------------------ log
    def _step_metrics(self, rollout: Rollout, update_stats: dict, phases: dict[str, float]) -> dict[str, float]:
        """Rollout statistics over processes, update statistics, timings; the KL controller then adapts, and the
        greedy evaluation runs when due."""
        for name, seconds in phases.items():
            self.timings[name] += seconds
        metrics = self.evaluator.rollout_metrics(rollout, self.kl_controller.value, self.state["episodes"])
        metrics.update(update_stats)
        metrics.update(self.scorer.logged_metrics())  # what reward functions logged with log_metric
        metrics.update({f"time/{name}": seconds for name, seconds in phases.items()})
        metrics["memory/peak_rss_mib"] = peak_rss_mib()
        metrics["lr/actor"] = self.scheduler.get_last_lr()[0]
        if self.wrapper.critic is not None:
            metrics["lr/critic"] = self.scheduler.get_last_lr()[-1]
        metrics["objective/kl_coef"] = self.kl_controller.value
        self.kl_controller.update(metrics["objective/kl"], self.args.rollout_batch_size)
        step, args = self.state["global_step"], self.args
        evaluating = str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps"
        if evaluating and self.eval_prompts is not None and args.eval_steps and step % int(args.eval_steps) == 0:
            metrics.update(self.evaluate())
        return metrics

    def _log(self, metrics: dict[str, float], rollout: Rollout) -> None:
        step = self.state["global_step"]
        if step % max(1, int(self.args.logging_steps)) == 0 or step == self.max_steps:
            self.run_logger.log_step(step, metrics, rollout)
        self.run_logger.advance(step, metrics)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy answers on held-out prompts: mean reward score, and gold score where a gold scorer exists."""
        return self.evaluator.evaluate(self.state["global_step"])

    # ------------------------------------------------------------------------------------------------ saving
    def save_checkpoint(self):
        """Everything a resume needs, written atomically; the oldest beyond save_total_limit are removed."""
        state = {"trainer": self.state, "timings": self.timings}
        state.update({name: part.state_dict() for name, part in self._resumable_parts().items()})
        return self.checkpoints.save(self.state["global_step"], state)

    def _resumable_parts(self) -> dict:
        return {
            "sampler": self.sampler,
            "kl_controller": self.kl_controller,
            "score_normalizer": self.score_normalizer,
        }

    def _resume(self, path) -> None:
        state = self.checkpoints.load(path)
        self.state.update(state["trainer"])
        self.timings.update(state["timings"])
        for name, part in self._resumable_parts().items():
            part.load_state_dict(state[name])
        self.run_logger.truncate(self.state["global_step"])
        logger.info("resumed from %s at step %d", path, self.state["global_step"])

    def save_model(self, output_dir: str | None = None) -> None:
        """Actor (full weights or LoRA adapter) to output_dir, critic (if any) to output_dir/critic, EMA to
        output_dir/ema."""
        self.checkpoints.save_model(self.model, self.tokenizer, output_dir or self.args.output_dir)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
