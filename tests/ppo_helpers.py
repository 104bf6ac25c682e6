"""Building a PPOTrainer on the tiny models for tests."""

from __future__ import annotations

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.trainer import PPOTrainer
from rlhf_trl.tiny.task import gold_scores, make_records


def prompts(count=32):
    return Dataset.from_list(make_records("ppo", count))


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "ppo"),
        max_steps=2,
        per_device_train_batch_size=8,
        num_mini_batches=2,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        max_prompt_length=16,
        max_new_tokens=6,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_steps=0,
        logging_steps=1,
        lr_scheduler_type="constant",
        seed=0,
    )
    if overrides.get("advantage_estimator", "gae") != "gae":
        del values["critic_learning_rate"]  # refused without a critic
    values.update(overrides)
    return PPOConfig(**values)


# (model fixtures, PPOConfig overrides) whose update losses cover every term: PPO with a critic and an entropy
# bonus on the tiny OPT, the KL as a loss and GRPO on the tiny Llama chat model.
UPDATE_SETUPS = [
    (("tiny_base_dir", "tiny_reward_dir"), {"entropy_coef": 0.01}),
    (("tiny_chat_dir", "tiny_chat_reward_dir"), {"kl_in_reward": False, "kl_coef": 0.1}),
    (("tiny_chat_dir", "tiny_chat_reward_dir"), {"advantage_estimator": "grpo", "num_generations": 4}),
]

# Arguments of build() that are not PPOConfig fields.
BUILD_ONLY = ("peft_config", "reward_funcs", "ptx_dataset")


def build(tmp_path, base_dir, reward_dir, train=None, reward_model=True, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    actor = AutoModelForCausalLM.from_pretrained(base_dir)
    args = config(tmp_path, **{key: value for key, value in overrides.items() if key not in BUILD_ONLY})
    critic = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1) if args.uses_critic else None
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1) if reward_model else None
    peft_config = overrides.pop("peft_config", None)
    reward_funcs = overrides.pop("reward_funcs", None)
    ptx_dataset = overrides.pop("ptx_dataset", None)
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=actor,
        value_model=critic,
        reward_model=reward,
        reward_funcs=reward_funcs,
        gold_funcs=[gold_scores],
        train_dataset=train if train is not None else prompts(),
        eval_dataset=Dataset.from_list(make_records("eval", 16)),
        ptx_dataset=ptx_dataset,
        peft_config=peft_config,
    )
