"""PPOTrainer: DeepSpeed-Chat's step 3 as a TRL-style trainer on Accelerate.

One PPO step = ``generate`` (rollout backend) -> ``score`` (actor, reference, critic forwards + rewards) ->
``compute_advantages`` (KL-shaped rewards, GAE) -> ``update`` (clipped policy and value losses). Each is a method
that a subclass can override.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import GenerationConfig

from rlhf_trl.generation import (
    as_completions,
    completion_mask,
    completion_texts,
    encode_prompts,
    has_eos,
    is_conversation,
)
from rlhf_trl.guards import InvalidRewardError, TrainingDivergedError, agree_any, any_process
from rlhf_trl.ppo import checkpoint as checkpoints
from rlhf_trl.ppo import losses, packing
from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.distributed import DistributedSetupMixin
from rlhf_trl.ppo.experience import PromptSampler, Rollout, ScoreNormalizer
from rlhf_trl.ppo.kl_control import build_kl_controller
from rlhf_trl.ppo.metrics import MetricsMixin
from rlhf_trl.ppo.modeling import (
    PolicyAndValueWrapper,
    completion_logprobs,
    completion_values,
    disable_dropout,
    position_ids_from_mask,
)
from rlhf_trl.ppo.optim import build_optimizer_and_scheduler
from rlhf_trl.ppo.persistence import PersistenceMixin
from rlhf_trl.ppo.run_logger import RunLogger, build_trackers
from rlhf_trl.reward.functions import TRLRewardKwargs
from rlhf_trl.reward.sources import CombinedReward, RewardModelScorer, first_invalid_score

logger = logging.getLogger(__name__)

__all__ = ["PPOTrainer", "TrainingDivergedError", "InvalidRewardError"]


class PPOTrainer(DistributedSetupMixin, MetricsMixin, PersistenceMixin):
    """PPO with an actor, a frozen reference, a critic and reward sources (reward model and/or functions).

    Args:
        args: PPOConfig.
        processing_class: the actor's tokenizer (needs a pad token distinct from EOS).
        model: the actor (from SFT), a PreTrainedModel; wrapped with LoRA when ``peft_config`` is given.
        ref_model: frozen reference; None -> a frozen copy of the actor, or the actor with adapters disabled (LoRA).
        reward_model: sequence-classification reward model (optional when reward_funcs are given).
        reward_processing_class: the reward model's tokenizer (defaults to ``processing_class``).
        value_model: the critic, a sequence-classification model (DS-Chat: initialised from the reward model).
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
        if self.tokenizer.pad_token_id is None or self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            raise ValueError("the actor tokenizer needs a pad token distinct from EOS (see rlhf_trl.models)")
        critic_rows = value_model.get_input_embeddings().num_embeddings
        if critic_rows < len(self.tokenizer):
            raise ValueError(
                f"the critic has {critic_rows} token embeddings, the actor's tokenizer {len(self.tokenizer)} tokens: "
                "the critic reads the actor's token ids, so it needs the actor's vocabulary"
            )
        # Accelerate turns DeepSpeed off when cpu=True; under a DeepSpeed launch DeepSpeed picks the device itself
        # (its CPU accelerator on machines without a GPU), so use_cpu only applies to non-DeepSpeed runs.
        deepspeed_launch = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision="bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
            cpu=args.use_cpu and not deepspeed_launch,
            log_with=build_trackers(args),
        )
        set_seed(args.seed)
        plugin = self.accelerator.state.deepspeed_plugin
        logger.info(
            "accelerate: %s on %s, %d process(es)%s",
            self.accelerator.distributed_type,
            self.accelerator.device,
            self.accelerator.num_processes,
            f", DeepSpeed ZeRO-{plugin.zero_stage}" if plugin is not None else "",
        )
        self.is_peft = peft_config is not None
        if self.is_peft:
            model, value_model = self._add_adapters(model, value_model, peft_config)
        self.ref_model = None
        if not self.is_peft:
            # DeepSpeed tags the parameters it partitioned (ZeRO-3 loading) with ds_id; those cannot be copied.
            if ref_model is None and any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
                raise ValueError(
                    "the actor's weights were partitioned by ZeRO-3 at load time and cannot be copied into a "
                    "reference: pass ref_model loaded with from_pretrained"
                )
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
        if args.disable_dropout:
            for module in (model, value_model, self.ref_model, reward_model):
                if module is not None:
                    disable_dropout(module)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.ema = None
        if args.ema_beta is not None:
            self.ema = copy.deepcopy(model).requires_grad_(False).eval()

        self.train_prompts = self._prepare_prompts(train_dataset, "train_dataset")
        self.eval_prompts = self._prepare_prompts(eval_dataset, "eval_dataset") if eval_dataset is not None else None
        self.sampler = PromptSampler(
            len(self.train_prompts["prompt"]),
            args.per_device_train_batch_size,
            self.accelerator.process_index,
            self.accelerator.num_processes,
            args.seed,
        )
        if self.sampler.dropped_per_epoch:
            logger.warning(
                "%d of %d prompts per epoch are left out: they do not fill a whole batch of %d across processes",
                self.sampler.dropped_per_epoch,
                self.sampler.size,
                self.sampler.global_batch,
            )
        self.max_steps = self._total_steps()

        wrapper = PolicyAndValueWrapper(model, value_model)
        optimizer, scheduler = build_optimizer_and_scheduler(wrapper, args, self.max_steps)
        self._configure_deepspeed(model)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(wrapper, optimizer, scheduler)
        self.ref_model = self._prepare_frozen(self.ref_model)
        reward_model = self._prepare_frozen(reward_model)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)

        sources = []
        if reward_model is not None:
            scorer = RewardModelScorer(
                reward_model, reward_processing_class or processing_class, args.micro_batch_size
            )
            if not scorer.tokenizer.chat_template and any(map(is_conversation, self.train_prompts["prompt"])):
                raise ValueError(
                    "the prompts are conversations but the reward model's tokenizer has no chat template: it would "
                    "not read them in the format it was trained on"
                )
            sources.append(scorer)
        sources.extend(reward_funcs or [])
        self.reward = CombinedReward(sources, args.reward_weights)
        # TRL's extra reward-function arguments (completion_ids, trainer_state, log_metric), built per batch.
        self.reward_kwargs = TRLRewardKwargs()
        self.gold = CombinedReward(gold_funcs) if gold_funcs else None
        self.kl_controller = build_kl_controller(args.kl_coef, args.adaptive_kl, args.kl_target, args.kl_horizon)
        self.score_normalizer = ScoreNormalizer(args.score_normalization)
        self.ptx_texts = list(ptx_dataset["text"]) if ptx_dataset is not None else None
        self.generation_config = self._generation_config()
        self.rollout = self._build_rollout()

        self.state = {"global_step": 0, "consecutive_skips": 0, "episodes": 0}
        self.timings = {"generation_s": 0.0, "scoring_s": 0.0, "training_s": 0.0}
        self.output_dir = Path(args.output_dir)
        self.log_history: list[dict] = []
        self.run_logger = RunLogger(self.accelerator, args, self.max_steps)

    # ------------------------------------------------------------------------------------------------ set-up helpers
    def _add_adapters(self, model, value_model, peft_config):
        """LoRA on the actor, and (critic_lora) on the critic with its score head fully trained. Quantized (8/4-bit)
        bases are first prepared for training (norms in fp32, input gradients for checkpointing)."""
        from dataclasses import replace as replace_fields

        from peft import get_peft_model, prepare_model_for_kbit_training

        def prepare(module):
            if getattr(module.config, "quantization_config", None) is not None:  # loaded in 8/4-bit
                return prepare_model_for_kbit_training(module, self.args.gradient_checkpointing)
            return module

        model = get_peft_model(prepare(model), peft_config)
        if self.args.critic_lora:
            critic_config = replace_fields(peft_config, task_type="SEQ_CLS", modules_to_save=["score"])
            value_model = get_peft_model(prepare(value_model), critic_config)
        return model, value_model

    def _prepare_prompts(self, dataset, name: str) -> dict:
        """Prompts as the dataset gives them (text, or TRL messages: reward functions receive them so) and their
        token ids, left-truncated: conversations rendered by the chat template without a second BOS."""
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"{name} is empty: PPO needs prompts")
        if "prompt" not in dataset.column_names:
            raise ValueError(f"{name} has no 'prompt' column (columns: {dataset.column_names})")
        prompts = list(dataset["prompt"])
        for index, prompt in enumerate(prompts):
            if is_conversation(prompt):
                if not self.tokenizer.chat_template:
                    raise ValueError(
                        f"{name} record {index}: conversational prompt but the tokenizer has no chat template"
                    )
            elif not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{name} record {index}: field 'prompt' is empty or not text")
        token_ids = encode_prompts(self.tokenizer, prompts)
        limit = self.args.max_prompt_length
        truncated = sum(len(ids) > limit for ids in token_ids)
        if truncated:
            logger.warning("%s: %d prompts longer than %d tokens were left-truncated", name, truncated, limit)
        columns = {key: dataset[key] for key in dataset.column_names if key != "prompt"}
        return {"prompt": prompts, "ids": [ids[-limit:] for ids in token_ids], "columns": columns}

    def _total_steps(self) -> int:
        if self.args.max_steps and self.args.max_steps > 0:
            return self.args.max_steps
        per_epoch = self.sampler.batches_per_epoch // self.args.generation_batches
        return max(1, int(math.ceil(self.args.num_train_epochs * per_epoch)))

    def _generation_config(self) -> GenerationConfig:
        # PPOConfig has parsed and validated generation_kwargs; the tokenizer gives the end and padding ids.
        return self.args.sampling_config(
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id
        )

    def _build_rollout(self):
        from rlhf_trl.ppo.rollout_deepspeed import build_rollout

        options = {}
        if self.args.rollout_backend == "deepspeed":
            options = {
                "inference_tp_size": self.args.inference_tp_size,
                "release_inference_cache": self.args.release_inference_cache,
                "pin_parameters": self.args.pin_parameters,
                "cuda_graph": self.args.cuda_graph,
                "max_prompt_length": self.args.max_prompt_length,
            }
        backend = build_rollout(
            self.args.rollout_backend,
            self.model,
            self.tokenizer,
            self.generation_config,
            accelerator=self.accelerator,
            **options,
        )
        self.rollout_backend_in_use = backend.active_backend
        logger.info("rollout backend: %s", self.rollout_backend_in_use)
        return backend

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    # ------------------------------------------------------------------------------------------------ one PPO step
    def next_batch(self) -> dict:
        """The next per-device batch of prompts, left-padded."""
        indices = self.sampler.next_indices()
        return self._collate(
            [self.train_prompts["prompt"][i] for i in indices],
            [self.train_prompts["ids"][i] for i in indices],
            {key: [values[i] for i in indices] for key, values in self.train_prompts["columns"].items()},
        )

    def _collate(self, prompts, id_lists, columns) -> dict:
        length = max(len(ids) for ids in id_lists)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in id_lists])
        mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in id_lists])
        device = self.accelerator.device
        return {
            "prompts": prompts,
            "columns": columns,
            "prompt_ids": input_ids.to(device),
            "prompt_mask": mask.to(device),
        }

    @torch.no_grad()
    def generate(self, batch: dict) -> Rollout:
        """Sample completions for a batch of prompts; everything after the first EOS becomes padding."""
        # Speed hook: log-probs from the decoding logits (rollout.py) spare score() the actor's forward.
        if self.args.recompute_rollout_logprobs:
            completion_ids, rollout_logprobs = self.rollout.generate(batch["prompt_ids"], batch["prompt_mask"]), None
        else:
            completion_ids, rollout_logprobs = self.rollout.generate_with_logprobs(
                batch["prompt_ids"], batch["prompt_mask"], self.args.temperature
            )
        if completion_ids.shape[1] == 0:  # every sequence stopped at once; keep one pad column so shapes hold
            rollout_logprobs = None
            completion_ids = torch.full(
                (completion_ids.shape[0], 1), self.tokenizer.pad_token_id, device=completion_ids.device
            )
        mask = completion_mask(completion_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        completions = completion_texts(self.tokenizer, batch["prompt_ids"], completion_ids)
        return Rollout(
            prompts=batch["prompts"],
            columns=batch["columns"],
            prompt_ids=batch["prompt_ids"],
            prompt_mask=batch["prompt_mask"],
            completion_ids=completion_ids,
            completion_mask=mask,
            completions=completions,
            logprobs=rollout_logprobs.float() if rollout_logprobs is not None else None,
        )

    def _micro_batches(self, size: int, batch_size: int):
        for start in range(0, size, batch_size):
            yield slice(start, min(start + batch_size, size))

    def _reference_logits(self, input_ids, attention_mask, position_ids):
        if self.ref_model is not None:
            return self.ref_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        # LoRA: the reference is the same base with the adapters switched off, so no second copy is held.
        with self.policy.disable_adapter():
            return self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    @torch.no_grad()
    def score(self, rollout: Rollout) -> None:
        """Actor and reference log-probs, critic values and reward scores of a rollout (no gradients)."""
        args = self.args
        input_ids, attention_mask = rollout.input_ids(), rollout.attention_mask()
        position_ids = position_ids_from_mask(attention_mask)
        prompt_length = rollout.prompt_ids.shape[1]
        logprobs, ref_logprobs, values = [], [], []
        self.model.eval()
        # Speed hook: padding-free scoring (packing.py) replaces the padded micro-batches below.
        packed = args.max_tokens_per_micro_batch is not None
        if packed:
            actor, reference, value = packing.score_packed(
                self.model, self._reference_logits, rollout, args.temperature, args.max_tokens_per_micro_batch,
                self.policy.dtype,
            )  # fmt: skip
            logprobs, ref_logprobs, values = [actor] if actor is not None else [], [reference], [value]
        for part in self._micro_batches(0 if packed else len(rollout), args.micro_batch_size):
            ids, mask, positions = input_ids[part], attention_mask[part], position_ids[part]
            completion = rollout.completion_ids[part]
            # Speed hook: no actor forward when generation gave the log-probs (recompute_rollout_logprobs off).
            logits, value = self.model(ids, mask, positions, with_logits=rollout.logprobs is None)
            if logits is not None:
                logprobs.append(completion_logprobs(logits, completion, prompt_length, args.temperature))
            values.append(completion_values(value, prompt_length))
            ref_logits = self._reference_logits(ids, mask, positions)
            ref_logprobs.append(completion_logprobs(ref_logits, completion, prompt_length, args.temperature))
            del logits, ref_logits
        self.model.train()
        rollout.logprobs = torch.cat(logprobs) if logprobs else rollout.logprobs
        rollout.ref_logprobs = torch.cat(ref_logprobs)
        rollout.values = torch.cat(values).float()  # GAE sums over the whole answer: bf16 would lose precision

        completions = as_completions(rollout.prompts, rollout.completions)
        raw, parts = self.reward(
            rollout.prompts, completions, **rollout.columns, **self._reward_call_kwargs(rollout.completion_ids)
        )
        rollout.valid = self._valid_scores(raw, parts, rollout.prompts)
        # Samples left out (drop_invalid_rewards) get score 0 here and no weight in the update.
        raw = torch.where(rollout.valid.cpu(), raw, 0.0)
        rollout.raw_scores, rollout.score_parts = raw, parts
        scores = raw.clone()
        if args.missing_eos_penalty is not None:
            ended = has_eos(rollout.completion_ids, self.tokenizer.eos_token_id).cpu()
            scores = torch.where(ended, scores, scores - args.missing_eos_penalty)
        if args.score_normalization != "none":
            self._update_normalizer(scores, rollout.valid)
            scores = self.score_normalizer.normalize(scores)
        if args.reward_clip is not None:
            scores = scores.clamp(-args.reward_clip, args.reward_clip)
        rollout.scores = scores.to(self.accelerator.device)
        if self.gold is not None:
            rollout.gold_scores = self._gold_scores(rollout.prompts, completions, rollout.columns)

    def _valid_scores(self, total: torch.Tensor, parts: dict[str, torch.Tensor], prompts) -> torch.Tensor:
        """[B] bool on the device: which samples every reward source scored with a finite number.

        NaN/inf stops training with an error naming the source and the sample (agreed across processes, so every
        rank stops), unless drop_invalid_rewards: then the samples are left out and logged."""
        valid = torch.isfinite(total)
        problem = None
        if not bool(valid.all()):
            problem = first_invalid_score(total, parts, prompts)
        if self.args.drop_invalid_rewards:
            if problem:
                logger.warning("step %d: %s; left out of the update", self.state["global_step"], problem)
        elif any_process(problem is not None, self.accelerator.device):
            raise InvalidRewardError(
                f"step {self.state['global_step']}: {problem or 'a reward source returned NaN/inf on another process'}"
                "; fix the reward source or set drop_invalid_rewards: true to leave such samples out"
            )
        return valid.to(self.accelerator.device)

    def _gold_scores(self, prompts, completions, columns) -> torch.Tensor:
        """Gold scores [B]; a NaN/inf one is an error like a reward's, or NaN (left out of the means) when dropping."""
        total, parts = self.gold(prompts, completions, **columns)
        valid = self._valid_scores(total, parts, prompts).cpu()
        return torch.where(valid, total, float("nan"))

    def _update_normalizer(self, scores: torch.Tensor, valid: torch.Tensor) -> None:
        """Running/reference score statistics from every process's valid scores."""
        device = self.accelerator.device
        gathered = self.accelerator.gather(scores.to(device)).cpu()
        gathered_valid = self.accelerator.gather(valid.to(device)).cpu().bool()
        self.score_normalizer.update(gathered[gathered_valid])

    def _loss_mask(self, rollout: Rollout) -> torch.Tensor:
        """[B, C] float: real completion tokens of the samples that count (invalid rewards dropped)."""
        mask = rollout.completion_mask.float()
        if rollout.valid is not None:
            mask = mask * rollout.valid.to(mask.device, mask.dtype)[:, None]
        return mask

    @torch.no_grad()
    def compute_advantages(self, rollout: Rollout) -> None:
        """KL-shaped per-token rewards, then GAE advantages and returns."""
        args = self.args
        mask = rollout.completion_mask.float()
        loss_mask = self._loss_mask(rollout)
        # Log-probs filled at padding before the estimator (k3 takes an exp): padding must not turn into NaN.
        logprobs = losses.fill_padding(rollout.logprobs, mask)
        ref_logprobs = losses.fill_padding(rollout.ref_logprobs, mask)
        rollout.kl = losses.fill_padding(losses.kl_estimate(logprobs, ref_logprobs, args.kl_estimator), mask)
        kl_coef = self.kl_controller.value if args.kl_in_reward else 0.0
        rewards = losses.shaped_rewards(rollout.scores, rollout.kl, mask, kl_coef)
        if args.whiten_rewards:
            rewards = losses.masked_whiten(rewards, loss_mask, shift_mean=False)
        advantages, returns = losses.gae_advantages(rollout.values, rewards, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = losses.masked_whiten(advantages, loss_mask)
        rollout.rewards, rollout.advantages, rollout.returns = rewards, advantages, returns

    def _ptx_loss(self):
        texts = random.sample(self.ptx_texts, min(self.args.micro_batch_size, len(self.ptx_texts)))
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=self.args.max_prompt_length + self.args.max_new_tokens,
        )
        batch = batch.to(self.accelerator.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return self.policy(**batch, labels=labels).loss

    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over mini-batches of the rollout; returns mean statistics of the updates."""
        args = self.args
        input_ids, attention_mask = rollout.input_ids(), rollout.attention_mask()
        position_ids = position_ids_from_mask(attention_mask)
        prompt_length = rollout.prompt_ids.shape[1]
        mask = self._loss_mask(rollout)
        stats: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(rollout)).tolist()
            for mini in self._micro_batches(len(rollout), args.local_mini_batch_size):
                for micro in self._micro_batches(mini.stop - mini.start, args.micro_batch_size):
                    index = torch.tensor(order[mini][micro], device=input_ids.device)
                    with self.accelerator.accumulate(self.model):
                        step_stats, loss, problem, blown_up = self._micro_batch_loss(
                            rollout, index, input_ids, attention_mask, position_ids, prompt_length, mask
                        )
                        # Decided together: a rank stopping or skipping alone would leave the others waiting in
                        # the next collective (the gradient all-reduce).
                        diverged, blown_up = agree_any([problem is not None, blown_up], self.accelerator.device)
                        if diverged:
                            problem = problem or "a loss is NaN/inf on another process"
                            raise TrainingDivergedError(
                                f"step {self.state['global_step']}: {problem}; stopping (last checkpoint kept)"
                            )
                        if blown_up:
                            skipped += 1
                            loss = loss * 0.0  # keeps gradient-accumulation bookkeeping consistent on every rank
                        self._count_blow_up(blown_up, step_stats)
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients:
                            self._check_gradients()
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad()
                        if self.accelerator.sync_gradients and self.ema is not None:
                            self._update_ema()
                    for key, value in step_stats.items():
                        stats.setdefault(key, []).append(value)
        summary = {key: float(np.mean(values)) for key, values in stats.items()}
        summary["policy/skipped_micro_batches"] = float(skipped)
        return summary

    def _micro_batch_loss(self, rollout, index, input_ids, attention_mask, position_ids, prompt_length, mask):
        args = self.args
        logits, values = self.model(input_ids[index], attention_mask[index], position_ids[index])
        completion = rollout.completion_ids[index]
        micro_mask = mask[index]
        new_logprobs = completion_logprobs(logits, completion, prompt_length, args.temperature)
        new_values = completion_values(values, prompt_length)
        policy_loss, policy_stats = losses.policy_loss(
            new_logprobs, rollout.logprobs[index], rollout.advantages[index], micro_mask, args.cliprange
        )
        value_loss, value_stats = losses.value_loss(
            new_values, rollout.values[index], rollout.returns[index], micro_mask, args.cliprange_value
        )
        problems = [self._non_finite(policy_loss, "policy loss"), self._non_finite(value_loss, "value loss")]
        loss = policy_loss + args.vf_coef * value_loss
        with torch.set_grad_enabled(args.entropy_coef > 0):
            completion_logits = logits[:, prompt_length - 1 : -1]
            entropy = losses.masked_mean(losses.entropy_from_logits(completion_logits, args.temperature), micro_mask)
        if args.entropy_coef:
            loss = loss - args.entropy_coef * entropy
        stats = {
            "policy/loss": policy_loss.item(),
            "value/loss": value_loss.item(),
            "policy/entropy": entropy.item(),
            "policy/approx_kl": policy_stats["approx_kl"].item(),
            "policy/clip_fraction": policy_stats["clip_fraction"].item(),
            "policy/ratio_mean": policy_stats["ratio_mean"].item(),
            "policy/ratio_max": policy_stats["ratio_max"].item(),
            "value/clip_fraction": value_stats["clip_fraction"].item(),
        }
        if not args.kl_in_reward:
            kl_term = losses.kl_loss(new_logprobs, rollout.ref_logprobs[index], micro_mask, args.kl_loss_estimator)
            loss = loss + self.kl_controller.value * kl_term
            stats["policy/kl_loss"] = kl_term.item()
        if args.ptx_coef > 0:
            ptx_loss = self._ptx_loss()
            problems.append(self._non_finite(ptx_loss, "ptx loss"))
            loss = loss + args.ptx_coef * ptx_loss
            stats["ptx/loss"] = ptx_loss.item()
        blown_up = stats["policy/ratio_max"] > args.ratio_threshold or (
            args.approx_kl_threshold is not None and stats["policy/approx_kl"] > args.approx_kl_threshold
        )
        problem = next((problem for problem in problems if problem), None)
        return stats, loss, problem, blown_up

    def _count_blow_up(self, blown_up: bool, stats: dict[str, float]) -> None:
        """Track blown-up micro-batches in a row; too many stop training (earlier checkpoints stay intact)."""
        self.state["consecutive_skips"] = self.state["consecutive_skips"] + 1 if blown_up else 0
        if self.state["consecutive_skips"] >= self.args.max_consecutive_skips:
            raise TrainingDivergedError(
                f"step {self.state['global_step']}: {self.state['consecutive_skips']} micro-batches in a row blew up "
                f"(ratio max {stats['policy/ratio_max']:.3g}); lower the learning rate or raise ratio_threshold"
            )

    @staticmethod
    def _non_finite(tensor: torch.Tensor, name: str) -> str | None:
        """'policy loss is nan' when the scalar is NaN/inf, else None."""
        return None if bool(torch.isfinite(tensor).all()) else f"{name} is {tensor.item()}"

    def _check_gradients(self) -> None:
        if self.accelerator.state.deepspeed_plugin is not None:
            return  # DeepSpeed clips and checks overflow inside its own step
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        bad = norm is not None and not bool(torch.isfinite(torch.as_tensor(norm)))
        if any_process(bad, self.accelerator.device):
            raise TrainingDivergedError(
                f"step {self.state['global_step']}: gradient norm is {float(norm)}; stopping (last checkpoint kept)"
            )

    @torch.no_grad()
    def _update_ema(self) -> None:
        losses.ema_update(list(self.ema.parameters()), list(self.policy.parameters()), self.args.ema_beta)

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint=None) -> dict[str, float]:
        """Run PPO steps until max_steps; returns the last logged metrics."""
        args = self.args
        resume = checkpoints.resolve_resume_path(args.output_dir, resume_from_checkpoint)
        if resume is not None:
            self._load_checkpoint(resume)
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

    def _reward_call_kwargs(self, completion_ids: torch.Tensor) -> dict:
        """TRL's per-batch reward-function arguments for completions [B, C] (real tokens up to the first EOS)."""
        mask = completion_mask(completion_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        return self.reward_kwargs.for_batch(completion_ids, mask, self.state["global_step"], self.max_steps)

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
        self.rollout.sync_weights()
        trained = time.perf_counter()
        self.timings["generation_s"] += generated - started
        self.timings["scoring_s"] += scored - generated
        self.timings["training_s"] += trained - scored
        self.state["global_step"] += 1
        self.state["episodes"] += len(rollout) * self.accelerator.num_processes
        metrics = self._rollout_metrics(rollout)
        metrics.update(update_stats)
        metrics.update(self.reward_kwargs.pop_metrics())  # what reward functions logged with log_metric
        metrics.update(
            {
                "time/generation_s": generated - started,
                "time/scoring_s": scored - generated,
                "time/training_s": trained - scored,
                "lr/actor": self.scheduler.get_last_lr()[0],
                "lr/critic": self.scheduler.get_last_lr()[-1],
                "objective/kl_coef": self.kl_controller.value,
            }
        )
        self.kl_controller.update(metrics["objective/kl"], self.args.rollout_batch_size)
        step = self.state["global_step"]
        evaluating = str(getattr(self.args.eval_strategy, "value", self.args.eval_strategy)) == "steps"
        if (
            evaluating
            and self.eval_prompts is not None
            and self.args.eval_steps
            and step % int(self.args.eval_steps) == 0
        ):
            metrics.update(self.evaluate())
        if step % max(1, int(self.args.logging_steps)) == 0 or step == self.max_steps:
            self._log(metrics, rollout)
        self.run_logger.advance(step, metrics)
        return metrics

    def _measure_reference_scores(self) -> None:
        """score_normalization='reference': fix mean/std once from samples of the untrained (reference) policy."""
        saved_sampler = self.sampler.state_dict()
        rollout = self.generate(self.next_batch())
        completions = as_completions(rollout.prompts, rollout.completions)
        scores, parts = self.reward(
            rollout.prompts, completions, **rollout.columns, **self._reward_call_kwargs(rollout.completion_ids)
        )
        self._update_normalizer(scores, self._valid_scores(scores, parts, rollout.prompts))
        self.sampler.load_state_dict(saved_sampler)
        logger.info(
            "reference score normalisation: mean %.4f std %.4f", self.score_normalizer.mean, self.score_normalizer.std
        )
