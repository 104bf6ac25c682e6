"""Step-3 throughput of TRL 1.12's PPOTrainer (``trl.experimental.ppo``) on the shared CPU workload.

Runs in its own virtual environment (``setup_venv.sh`` next to this file) and does not import the rlhf_trl package,
so its dependencies never meet ours. It builds the same workload as ``benchmarks/step3_profile.py --workload shared``:
OPT-shaped actor, critic and reward model (hidden 64, FFN 256, 4 heads, 2 layers, OPT's 50,272-token vocabulary,
random weights from seed 0, built in the same order), a word-level tokenizer over that vocabulary, 64-token random
prompts (seed 0), answers of exactly 64 tokens, 16 prompts per step, one PPO epoch, fp32. The models, tokenizer and
prompts come from rlhf_trl/bench/workloads.py itself, loaded from its file.

    .venv-trl112/bin/python benchmarks/trl_ppo_peer/run_trl_ppo.py --warmup-steps 2 --steps 6 --output /tmp/trl.json

Prints one JSON object on the last line of stdout (and writes it to ``--output``): wall time of every step, the
samples/s of the steps after warm-up, versions and the settings used. Settings that cannot be matched with ours are
listed under ``unmatched``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

PROMPT_LENGTH = 64
ANSWER_LENGTH = 64
BATCH_SIZE = 16
SEED = 0

# Where TRL 1.12's PPOTrainer cannot be set up like ours; reported with the result.
UNMATCHED = [
    "one AdamW optimizer and one learning rate for actor and critic together (ours: two optimizers, actor 9.65e-6 "
    "and critic 5e-6); the speed is the same, the update is not",
    "answer length is forced by turning end-of-text off (stop_token_id None) rather than by min_new_tokens: EOS can "
    "be sampled but does not end an answer; a sampled pad token (id 1) ends TRL's answer mask early (the compute "
    "is the same)",
    "TRL takes the actor's rollout log-probs from generation's scores, as our default does; it has no packed "
    "(padding-free) scoring",
    "TRL's training step computes the full-vocabulary entropy of every micro-batch, and calls gc.collect() twice "
    "per step",
    "value head: TRL reads the critic backbone's hidden states and applies its score layer (the same computation as "
    "our critic forward)",
]


# ---------------------------------------------------------------------------------------------------------- workload
WORKLOADS_FILE = Path(__file__).resolve().parents[2] / "rlhf_trl" / "bench" / "workloads.py"


def workloads():
    """rlhf_trl/bench/workloads.py loaded from its file, not through the rlhf_trl package: the same builders as our
    side (it needs only torch and transformers), while nothing else of ours enters this environment."""
    import importlib.util

    name = "rlhf_trl_bench_workloads"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, WORKLOADS_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_models():
    """Actor, critic and reward model with random weights (seed 0, built in this order), by our builder."""
    import torch

    shapes = workloads()

    def config():
        return shapes.opt_config(64, 256, 4, 2)

    return shapes.build_models(shapes.Preset("shared workload", config, config), torch.float32, False, Path("."))


def build_tokenizer(config):
    """Our word-level tokenizer over the whole vocabulary ("t<id>" words; <pad>, <eos>, <unk>)."""
    return workloads().build_tokenizer(config)


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[str]:
    """Our ``count`` seeded prompts of ``length`` ordinary tokens."""
    return workloads().random_prompts(tokenizer, count, length, seed)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("trl", "transformers", "accelerate", "torch", "datasets")}


def measure(warmup_steps: int, steps: int, threads: int) -> dict:
    """Build the workload, train ``warmup_steps + steps`` PPO steps with TRL and time each step."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(threads)
    actor, critic, reward = build_models()
    tokenizer = build_tokenizer(actor.config)
    total = warmup_steps + steps
    prompts = random_prompts(tokenizer, total * BATCH_SIZE, PROMPT_LENGTH, seed=SEED)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(prompt)["input_ids"] for prompt in prompts]})
    if any(len(ids) != PROMPT_LENGTH for ids in dataset["input_ids"]):
        raise RuntimeError("a prompt did not tokenize to exactly PROMPT_LENGTH tokens")

    class StepClock(TrainerCallback):
        """Wall-clock mark at the start of training and at the end of every PPO step (TRL's train() is one loop)."""

        def __init__(self):
            self.marks: list[float] = []
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    workdir = Path(tempfile.mkdtemp(prefix="trl-ppo-peer-"))
    config = PPOConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=BATCH_SIZE,  # generation batch = training batch = 16 prompts
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=BATCH_SIZE,  # scoring micro-batch: our micro_batch_size (16)
        total_episodes=total * BATCH_SIZE,
        response_length=ANSWER_LENGTH,
        stop_token=None,
        stop_token_id=None,  # no end-of-text: every answer is exactly response_length tokens
        temperature=1.0,
        missing_eos_penalty=None,
        learning_rate=9.65e-6,
        kl_coef=0.1,
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        num_sample_generations=0,  # no sample generations (evaluation) during training
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=SEED,
        dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=actor,
        ref_model=None,  # TRL makes a copy of the actor, as our trainer does
        reward_model=reward,
        train_dataset=dataset,
        value_model=critic,
        callbacks=[clock],
    )
    trainer.train()
    step_seconds = [later - earlier for earlier, later in zip(clock.marks, clock.marks[1:])]
    if len(step_seconds) != total:
        raise RuntimeError(f"expected {total} timed steps, got {len(step_seconds)}")
    measured = step_seconds[warmup_steps:]
    eos_counts = [log["val/num_eos_tokens"] for log in clock.logs if "val/num_eos_tokens" in log]
    return {
        "trainer": "trl.experimental.ppo.PPOTrainer",
        "versions": versions(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch_size": BATCH_SIZE,
        "prompt_length": PROMPT_LENGTH,
        "answer_length": ANSWER_LENGTH,
        "warmup_steps": warmup_steps,
        "steps": steps,
        "step_s": step_seconds,
        "samples_per_s": BATCH_SIZE * len(measured) / sum(measured),
        "eos_tokens_sampled": eos_counts,
        "settings": {
            "per_device_train_batch_size": BATCH_SIZE,
            "gradient_accumulation_steps": 1,
            "num_mini_batches": 1,
            "num_ppo_epochs": 1,
            "local_rollout_forward_batch_size": BATCH_SIZE,
            "response_length": ANSWER_LENGTH,
            "stop_token_id": None,
            "temperature": 1.0,
            "precision": "fp32",
        },
        "unmatched": UNMATCHED,
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup-steps", type=int, default=2, help="PPO steps run first and not measured")
    parser.add_argument("--steps", type=int, default=6, help="measured PPO steps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--output", help="also write the JSON result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = make_parser().parse_args(argv)
    if options.steps < 1 or options.warmup_steps < 0 or options.threads < 1:
        print("--steps and --threads must be >= 1, --warmup-steps >= 0", file=sys.stderr)
        return 2
    result = measure(options.warmup_steps, options.steps, options.threads)
    text = json.dumps(result)
    if options.output:
        Path(options.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
