"""PPOConfig: TrainingArguments plus DeepSpeed-Chat's step-3 options. Defaults follow DS-Chat (see the README's
flag table); fields marked "DS-Chat: ..." give its value where ours differs."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import GenerationConfig, TrainingArguments

from rlhf_trl.configs import ConfigError, check_ranges, check_training_arguments
from rlhf_trl.ppo.advantages import KL_ESTIMATORS
from rlhf_trl.ppo.config_fields import (
    GENERATION_KWARG_RANGES,
    PPO_RANGES,
    check_inherited_fields,
    field_default,
    is_default,
)
from rlhf_trl.ppo.estimators import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATORS_NEEDING_CRITIC,
    ESTIMATORS_NEEDING_GROUPS,
    ESTIMATORS_WITH_KL_IN_REWARD,
)
from rlhf_trl.ppo.group_batches import group_batch_sizes
from rlhf_trl.ppo.losses import LOSS_TYPES

ROLLOUT_BACKENDS = ("hf", "deepspeed")
SCORE_NORMALIZATIONS = ("none", "running", "reference")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class PPOConfig(TrainingArguments):
    # Models and rewards -------------------------------------------------------------------------------------------
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Reward model (AutoModelForSequenceClassification, one label) from step 2."}
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Critic initialisation; defaults to reward_model_path (as DS-Chat)."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Python reward functions 'module:function' (TRL GRPO signature), used with or without "
            "a reward model."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of the reward sources: the reward model first (if any), then reward_funcs."},
    )
    pad_token: str | None = field(
        default=None,
        metadata={
            "help": "Pad token of the actor's tokenizer when it has none distinct from EOS (as in TRL's SFTConfig and "
            "RewardConfig); by default an unused special token of the vocabulary, else a new '<pad>'."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow models and tokenizers that ship their own Python code (as in TRL's configs)."},
    )
    # Learning rates and schedule ------------------------------------------------------------------------------------
    learning_rate: float = field(default=9.65e-6, metadata={"help": "Actor learning rate (DS-Chat 9.65e-6)."})
    critic_learning_rate: float = field(default=5e-6, metadata={"help": "Critic learning rate (DS-Chat 5e-6)."})
    critic_lr_scheduler_type: str | None = field(
        default=None, metadata={"help": f"Critic schedule, one of {SCHEDULES}; defaults to lr_scheduler_type."}
    )
    generation_batches: int = field(
        default=1,
        metadata={
            "help": "Rollout batches of per_device_train_batch_size prompts collected before each update "
            "round (DS-Chat generation_batches)."
        },
    )
    num_mini_batches: int = field(
        default=1, metadata={"help": "Mini-batches each rollout is split into for the PPO updates."}
    )
    num_ppo_epochs: int = field(default=1, metadata={"help": "Passes over each rollout (DS-Chat ppo_epochs)."})
    # Generation -----------------------------------------------------------------------------------------------------
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts are left-truncated to this many tokens."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer in tokens."})
    min_new_tokens: int = field(default=0, metadata={"help": "Shortest answer (EOS is suppressed before it)."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; log-probs are computed with the same temperature."}
    )
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1.0: off)."})
    stop_strings: list[str] | None = field(default=None, metadata={"help": "Strings that end an answer."})
    generation_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Any other GenerationConfig fields, as a dict (YAML) or JSON string."}
    )
    rollout_backend: str = field(default="hf", metadata={"help": f"Generation engine, one of {ROLLOUT_BACKENDS}."})
    inference_tp_size: int = field(default=1, metadata={"help": "deepspeed backend: inference tensor-parallel size."})
    release_inference_cache: bool = field(
        default=False, metadata={"help": "deepspeed backend: free the inference KV cache after each rollout."}
    )
    pin_parameters: bool = field(
        default=True, metadata={"help": "deepspeed backend: keep gathered parameters pinned between rollouts."}
    )
    cuda_graph: bool = field(default=False, metadata={"help": "deepspeed backend: CUDA-graph greedy decode."})
    # KL and reward shaping ------------------------------------------------------------------------------------------
    kl_coef: float = field(default=0.1, metadata={"help": "KL coefficient (initial value when adaptive)."})
    kl_estimator: str = field(default="k1", metadata={"help": f"Per-token KL estimator, one of {KL_ESTIMATORS}."})
    kl_in_reward: bool | None = field(
        default=None,
        metadata={
            "help": "True: KL penalty in the reward (DS-Chat). False: KL as a loss term weighted by kl_coef. Unset: "
            "True, except for grpo and dr_grpo, which take the KL in the loss (TRL's beta is kl_coef)."
        },
    )
    kl_loss_estimator: str = field(
        default="k3",
        metadata={
            "help": "Estimator of the KL loss term when kl_in_reward is False. k1 has zero expected gradient as a "
            "loss, so it is refused; k3's gradient is that of KL(ref||policy), k2's that of KL(policy||ref)."
        },
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "KL loss only: weight each token's KL term by its (differentiated) importance ratio, so the "
            "gradient is that of KL(policy||ref) (TRL GRPOTrainer's option, on there by default)."
        },
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef toward kl_target (Ziegler et al.)."})
    kl_target: float | None = field(default=None, metadata={"help": "Target KL per answer for adaptive_kl."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller."})
    reward_clip: float | None = field(
        default=5.0, metadata={"help": "Clip the score to [-reward_clip, reward_clip] (DS-Chat 5; None: off)."}
    )
    score_normalization: str = field(
        default="none",
        metadata={
            "help": f"One of {SCORE_NORMALIZATIONS}: running mean/std of scores, or a fixed mean/std measured "
            "once on reference-policy samples before training."
        },
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtract this from the score of answers that never produced EOS."}
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the shaped per-token rewards."})
    # Advantages and losses ------------------------------------------------------------------------------------------
    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": f"One of {ADVANTAGE_ESTIMATORS}: gae is PPO with a critic (DS-Chat); the others need no critic "
            "(rlhf_trl.ppo.estimators); grpo, dr_grpo, rloo and reinforce_pp_baseline compare the num_generations "
            "completions of each prompt."
        },
    )
    num_generations: int = field(
        default=1,
        metadata={
            "help": "Completions sampled per prompt (a group, adjacent rows on one process). "
            "per_device_train_batch_size counts prompts; the rollout holds prompts x num_generations completions."
        },
    )
    loss_type: str = field(
        default="token_mean",
        metadata={
            "help": f"How the policy loss is reduced, one of {LOSS_TYPES} (TRL's bnpo/dapo, grpo, dr_grpo): mean "
            "over the tokens, mean over the sequences of their token means, or sum / (sequences x max_new_tokens)."
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount (DS-Chat 1.0)."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (DS-Chat 0.95)."})
    whiten_advantages: bool = field(default=False, metadata={"help": "Whiten advantages (DS-Chat: off)."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip (DS-Chat 0.2)."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip (DS-Chat 0.2)."})
    vf_coef: float = field(default=1.0, metadata={"help": "Weight of the value loss (its own lr already scales it)."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus weight (0: off)."})
    # EMA and PPO-ptx ------------------------------------------------------------------------------------------------
    ema_beta: float | None = field(
        default=None, metadata={"help": "Keep an EMA copy of the actor with this beta (DS-Chat 0.992); None: off."}
    )
    ptx_datasets: list[str] | None = field(
        default=None, metadata={"help": "Datasets (as in step 1) whose LM loss is mixed into the actor loss."}
    )
    ptx_coef: float = field(default=0.0, metadata={"help": "PPO-ptx coefficient (DS-Chat 27.8 when enabled)."})
    # Stability ------------------------------------------------------------------------------------------------------
    ratio_threshold: float = field(
        default=10.0, metadata={"help": "Skip a micro-batch whose importance ratio exceeds this (a blow-up)."}
    )
    approx_kl_threshold: float | None = field(
        default=None, metadata={"help": "Skip a micro-batch whose approx-KL to the rollout policy exceeds this."}
    )
    max_consecutive_skips: int = field(
        default=8, metadata={"help": "Stop with an error after this many blown-up micro-batches in a row."}
    )
    drop_invalid_rewards: bool = field(
        default=False,
        metadata={
            "help": "A reward source (reward model, reward or gold function) returning NaN or inf for a sample: "
            "False stops with an error naming the source and the sample; True leaves that sample out of the "
            "update (and gold scores) and counts it (reward/invalid_samples)."
        },
    )
    critic_lora: bool = field(
        default=True,
        metadata={"help": "With LoRA (use_peft): train the critic through adapters too (its score head fully)."},
    )
    # Speed ----------------------------------------------------------------------------------------------------------
    recompute_rollout_logprobs: bool = field(
        default=False,
        metadata={
            "help": "Score the rollout with a separate actor forward instead of taking the actor's log-probs from the "
            "logits generation already produced (the hf backend gives them; others always recompute)."
        },
    )
    max_tokens_per_micro_batch: int | None = field(
        default=None,
        metadata={
            "help": "Padding-free scoring and training: samples packed without pad tokens into rows of at most this "
            "many tokens (rlhf_trl.ppo.packing). Scoring packs the whole rollout; the update packs each micro-batch "
            "of micro_batch_size samples, so its loss and gradient are the padded ones. None: padded rows."
        },
    )
    # Misc -----------------------------------------------------------------------------------------------------------
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in every model (DS-Chat)."})
    num_samples_to_log: int = field(default=4, metadata={"help": "Sample answers written to samples.jsonl per log."})
    eval_prompts_limit: int = field(default=200, metadata={"help": "Held-out prompts used for each evaluation."})
    logging_steps: float = field(default=1, metadata={"help": "Log every this many PPO steps."})
    logging_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where tracker files (TensorBoard events, ...) go; default: $TENSORBOARD_LOGGING_DIR, else "
            "output_dir/runs (as Trainer)."
        },
    )

    def __post_init__(self):
        check_inherited_fields(self)  # before TrainingArguments rewrites report_to and friends
        super().__post_init__()
        check_training_arguments(self)
        check_ranges(self, PPO_RANGES)
        self._check_choices()
        self._check_estimator_settings()
        self._check_generation()
        world = max(self.world_size, 1)
        # Honest batch names, derived once. A rollout is what one process generates between two update rounds:
        # local_rollout_prompts prompts, each sampled num_generations times. The sizes below count completions.
        self.local_rollout_prompts = self.per_device_train_batch_size * self.generation_batches
        if self.local_rollout_prompts % self.num_mini_batches:
            raise ValueError(
                f"per_device_train_batch_size * generation_batches = {self.local_rollout_prompts} prompts is not "
                f"divisible by num_mini_batches = {self.num_mini_batches}: change one of them"
            )
        self.group_batch_sizes = group_batch_sizes(
            self.local_rollout_prompts, self.num_generations, world, self.num_mini_batches, self.advantage_estimator
        )
        self.local_rollout_batch_size = self.group_batch_sizes.per_device_rollout_batch_size
        self.rollout_batch_size = self.group_batch_sizes.global_rollout_batch_size
        self.local_mini_batch_size = self.group_batch_sizes.per_device_mini_batch_size
        if self.local_mini_batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"the mini-batch of {self.local_mini_batch_size} completions per device is not divisible by "
                f"gradient_accumulation_steps = {self.gradient_accumulation_steps}: lower it or raise the batch"
            )
        self.micro_batch_size = self.local_mini_batch_size // self.gradient_accumulation_steps

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator in ESTIMATORS_NEEDING_CRITIC

    def _check_estimator_settings(self):
        """One line for a setting the chosen advantage estimator does not use, set away from its default; then
        kl_in_reward resolved (unset: in the reward, except for the estimators that take the KL in the loss)."""
        estimator = self.advantage_estimator
        if estimator in ESTIMATORS_NEEDING_GROUPS and self.num_generations < 2:
            raise ConfigError(
                f"advantage_estimator {estimator} compares the completions of one prompt: set num_generations to 2 "
                f"or more (got {self.num_generations}), or use gae or reinforce_pp"
            )
        unused = {}
        if not self.uses_critic:
            reason = f"advantage_estimator {estimator} has no critic"
            for name in ("value_model_path", "critic_learning_rate", "critic_lr_scheduler_type", "critic_lora"):
                unused[name] = reason
            for name in ("vf_coef", "cliprange_value", "lam"):
                unused[name] = reason
            unused["whiten_rewards"] = f"advantage_estimator {estimator} whitens by its own definition"
            if estimator not in ("reinforce_pp", "reinforce_pp_baseline"):
                unused["gamma"] = f"advantage_estimator {estimator} scores whole completions (no discounting)"
        defaults = {config_field.name: config_field for config_field in dataclasses.fields(self)}
        for name, reason in unused.items():
            value = getattr(self, name)
            if not is_default(value, field_default(defaults[name])):
                raise ConfigError(f"{name}={value!r} does not apply: {reason}; remove it")
        if estimator not in ESTIMATORS_WITH_KL_IN_REWARD:
            if self.kl_in_reward:
                raise ConfigError(
                    f"kl_in_reward=True does not apply: advantage_estimator {estimator} takes the KL in the loss "
                    "(weighted by kl_coef); remove it"
                )
            self.kl_in_reward = False
        elif self.kl_in_reward is None:
            self.kl_in_reward = True
        if self.use_bias_correction_kl and self.kl_in_reward:
            raise ConfigError("use_bias_correction_kl=True does not apply: the KL is in the reward; remove it")

    def _check_generation(self):
        """generation_kwargs parsed (JSON text allowed) and every generation setting validated as the GenerationConfig
        the trainer will build, strictly, so a bad value fails here instead of at the first rollout."""
        extra = self.generation_kwargs or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as error:
                raise ConfigError(f"generation_kwargs is not valid JSON ({error})") from error
        if not isinstance(extra, dict):
            raise ConfigError(f"generation_kwargs must be a mapping of GenerationConfig fields, got {extra!r}")
        own = {"max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "stop_strings"}
        clashing = sorted(own & set(extra))
        if clashing:
            raise ConfigError(f"generation_kwargs sets {', '.join(clashing)}: use the PPOConfig field(s) instead")
        unknown = sorted(key for key in extra if not hasattr(GenerationConfig(), key))
        if unknown:
            raise ConfigError(f"generation_kwargs: unknown GenerationConfig field(s) {', '.join(unknown)}")
        for key, allowed in GENERATION_KWARG_RANGES.items():
            value = extra.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed.allows(value)
            ):
                raise ConfigError(f"generation_kwargs: {key} must be {allowed.describe()}, got {value!r}")
        if self.stop_strings is not None and not all(isinstance(text, str) and text for text in self.stop_strings):
            raise ConfigError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        try:
            self.sampling_config(extra).validate(strict=True)
        except (ValueError, TypeError) as error:
            # Transformers lists the problems on separate lines under a heading: join them into one.
            lines = [line.strip(" -") for line in str(error).splitlines() if line.strip(" -")]
            raise ConfigError(f"generation settings: {'; '.join(lines) or type(error).__name__}") from error
        self.generation_kwargs = extra or None

    def sampling_config(self, extra: dict | None = None, **token_ids) -> GenerationConfig:
        """The rollout's sampling settings as a GenerationConfig: these fields, then ``extra`` (default: the
        validated generation_kwargs), then ``token_ids`` (eos_token_id, pad_token_id) from the tokenizer."""
        extra = (self.generation_kwargs or {}) if extra is None else extra
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_strings=self.stop_strings,
            **extra,
            **token_ids,
        )

    def _check_choices(self):
        checks = {
            "rollout_backend": (self.rollout_backend, ROLLOUT_BACKENDS),
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
            "score_normalization": (self.score_normalization, SCORE_NORMALIZATIONS),
            "advantage_estimator": (self.advantage_estimator, ADVANTAGE_ESTIMATORS),
            "loss_type": (self.loss_type, LOSS_TYPES),
        }
        if self.critic_lr_scheduler_type is not None:
            checks["critic_lr_scheduler_type"] = (self.critic_lr_scheduler_type, SCHEDULES)
        for name, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.kl_loss_estimator not in ("k2", "k3"):
            raise ValueError(
                f"kl_loss_estimator must be k2 or k3 (k1 has no useful gradient), got {self.kl_loss_estimator!r}"
            )
        if self.adaptive_kl and self.kl_target is None:
            raise ValueError("adaptive_kl needs kl_target")
        if self.ptx_coef > 0 and not self.ptx_datasets:
            raise ValueError("ptx_coef > 0 needs ptx_datasets")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        if self.ema_beta is not None and not 0.0 < self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must be in (0, 1), got {self.ema_beta}")
        if self.reward_weights is not None and not all(
            isinstance(weight, (int, float)) and math.isfinite(weight) for weight in self.reward_weights
        ):
            raise ConfigError(f"reward_weights must be finite numbers, got {self.reward_weights!r}")
