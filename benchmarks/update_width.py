"""Time of PPO's update (step 3's training phase) on answers of uneven length: each micro-batch cut to its own width
(``Rollout.select``, the default) against every micro-batch at the whole rollout's width, on the same rollout,
side by side.

Workload: the shared CPU workload's models (OPT-shaped 3.4M-parameter actor and critic: hidden 64, 2 layers, OPT's
50,272-token vocabulary), --prompts random prompts of 64 tokens whose answers are sampled to --answer-length tokens
and then ended at lengths drawn uniformly from 1 to --answer-length (seeded), as a chat model's answers end at
different points; one PPO epoch, one mini-batch, micro-batches of --micro-batch samples, fp32 (CUDA when there is
one). The sides alternate repeat by repeat after one warm-up update each.

    PYTHONPATH=. python benchmarks/update_width.py --repeats 5 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from step3_vs_trl import machine_description  # benchmarks/ is on sys.path when this script runs

from rlhf_trl.reporting.benchmarks_file import publish_section

# torch and the project are imported once the options are checked: bad input gets its one line and nothing else.
PROMPT_LENGTH = 64
SIDES = (("cut", True), ("whole rollout width", False))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="samples in the rollout")
    parser.add_argument("--answer-length", type=int, default=128, help="the longest answer, in tokens")
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per update micro-batch")
    parser.add_argument("--repeats", type=int, default=3, help="measured updates per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", help="append the markdown section to this file")
    options = parser.parse_args(argv)
    for name in ("prompts", "answer_length", "micro_batch", "repeats"):
        if getattr(options, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.prompts % options.micro_batch:
        fail(f"--prompts {options.prompts} is not a multiple of --micro-batch {options.micro_batch}")
    return options


def fail(message: str):
    """Bad input: one line naming the option, exit 2."""
    print(f"update_width.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_trainer(options, workdir: Path):
    import torch
    from datasets import Dataset

    from rlhf_trl.bench.workloads import Preset, build_models, build_tokenizer, opt_config, random_prompts
    from rlhf_trl.ppo.config import PPOConfig
    from rlhf_trl.ppo.trainer import PPOTrainer

    preset = Preset(
        "OPT-shaped 3.4M-parameter actor and critic",
        lambda: opt_config(64, 256, 4, 2),
        lambda: opt_config(64, 256, 4, 2),
        prompt_length=PROMPT_LENGTH,
        answer_length=options.answer_length,
        batch_size=options.prompts,
    )
    actor, critic, reward = build_models(preset, torch.float32, False, workdir)
    tokenizer = build_tokenizer(actor.config)
    config = PPOConfig(
        output_dir=str(workdir / "ppo"), max_steps=1, per_device_train_batch_size=options.prompts,
        gradient_accumulation_steps=options.prompts // options.micro_batch, max_prompt_length=PROMPT_LENGTH,
        max_new_tokens=options.answer_length, min_new_tokens=options.answer_length, bf16=False,
        use_cpu=not torch.cuda.is_available(), report_to="none", save_steps=0, seed=options.seed,
    )  # fmt: skip
    prompts = random_prompts(tokenizer, options.prompts, PROMPT_LENGTH, seed=options.seed)
    return PPOTrainer(
        args=config, processing_class=tokenizer, model=actor, value_model=critic, reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )  # fmt: skip


def uneven_rollout(trainer, answer_length: int, seed: int):
    """A scored rollout with advantages whose answers end at seeded uniform lengths in [1, answer_length]."""
    import torch

    rollout = trainer.generate(trainer.next_batch())
    lengths = torch.randint(1, answer_length + 1, (len(rollout),), generator=torch.Generator().manual_seed(seed))
    width = rollout.completion_ids.shape[1]
    keep = (torch.arange(width)[None] < lengths[:, None]).to(rollout.completion_ids.device)
    rollout.completion_mask = rollout.completion_mask * keep
    rollout.completion_ids = rollout.completion_ids.masked_fill(~keep, trainer.tokenizer.pad_token_id)
    rollout.logprobs = rollout.logprobs.masked_fill(~keep, 0.0)
    trainer.score(rollout)
    trainer.compute_advantages(rollout)
    return rollout


def timed_update(trainer, rollout, cut: bool) -> tuple[float, int]:
    """(seconds, positions read by the update's forwards) of one update, micro-batches cut or not."""
    import torch

    from rlhf_trl.ppo.experience import Rollout

    original = Rollout.select
    positions = []

    def select(self, index, **_):  # this side decides whether to cut, whatever the caller asks
        rows = original(self, index, cut=cut)
        positions.append(rows.prompt_ids.numel() + rows.completion_ids.numel())
        return rows

    Rollout.select = functools.wraps(original)(select)
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        trainer.update(rollout)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started, sum(positions)
    finally:
        Rollout.select = original


def measure(options) -> dict:
    import torch

    torch.manual_seed(options.seed)
    trainer = build_trainer(options, Path(tempfile.mkdtemp(prefix="update-width-")))
    rollout = uneven_rollout(trainer, options.answer_length, options.seed)
    for _, cut in SIDES:  # warm-up
        timed_update(trainer, rollout, cut)
    seconds = {name: [] for name, _ in SIDES}
    positions = {}
    for _ in range(options.repeats):
        for name, cut in SIDES:
            elapsed, positions[name] = timed_update(trainer, rollout, cut)
            seconds[name].append(elapsed)
    real = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
    return {"seconds": seconds, "positions": positions, "real_tokens": real, "device": device_line()}


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{machine_description()}, {torch.get_num_threads()} torch thread(s) (torch {torch.__version__})"


def format_section(result: dict, options, command: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"## Update on uneven answers, micro-batches cut to their own width, {when:%Y-%m-%d %H:%M UTC}",
        "",
        f"- Command: `{command}`",
        f"- Device: {result['device']}",
        f"- Workload: OPT-shaped 3.4M-parameter actor and critic, {options.prompts} random 64-token prompts, answers "
        f"sampled to {options.answer_length} tokens and ended at uniform random lengths (seed {options.seed}), one "
        f"epoch, one mini-batch, micro-batches of {options.micro_batch}; {options.repeats} measured updates per "
        "side after one warm-up each, the sides alternating",
        f"- Real (non-pad) tokens in the rollout: {result['real_tokens']:,}",
        "",
        "| side | update s per repeat | mean update s | positions read per update | speed-up |",
        "|---|---|---|---|---|",
    ]
    baseline = statistics.mean(result["seconds"][SIDES[1][0]])
    for name, _ in SIDES:
        values = result["seconds"][name]
        mean = statistics.mean(values)
        lines.append(
            f"| {name} | {' / '.join(f'{value:.3f}' for value in values)} | {mean:.3f} | "
            f"{result['positions'][name]:,} | {baseline / mean:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(argv)
    result = measure(options)
    command = "python benchmarks/update_width.py " + shlex.join(argv)
    section = format_section(result, options, command.strip())
    publish_section(section, options.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
