"""Profile one PPO step (step 3): time per phase and per model forward, and the share of pad tokens in each forward.

Timings depend on the machine and its load; pad shares do not (they follow from the prompt and answer lengths
only), so they are the numbers to compare between runs on a shared machine.

Workloads:
  shared   OPT-shaped 3.4M-parameter actor, critic and reward model (hidden 64, 2 layers, OPT's 50,272-token
           vocabulary), 64-token random prompts, answers forced to 64 tokens, 16 prompts per step, one PPO epoch,
           fp32. Built with rlhf_trl.bench.step3's model and tokenizer builders.
  demo     the tiny demo's PPO setting (recipes/tiny/ppo.yaml: 16-token prompts, up to 12 new tokens, batch 64,
           2 mini-batches, 2 PPO epochs) on the tiny base model and a reward model made from it, or on the demo's
           own step-1/step-2 outputs (--sft-model, --reward-model).

    PYTHONPATH=. python benchmarks/step3_profile.py --workload shared --workload demo --output-json /tmp/p.json

Each workload runs three ways: with the actor's scoring forward (``recompute_rollout_logprobs: true``, the old
path), with log-probs taken from generation, and with that plus padding-free packed scoring and update
(``max_tokens_per_micro_batch``). Prints a markdown section; ``--append BENCHMARKS.md`` appends it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from rlhf_trl.bench.workloads import Preset, build_models, build_tokenizer, opt_config, random_prompts
from rlhf_trl.bench.workloads import device_description as bench_device_description
from rlhf_trl.reporting.benchmarks_file import publish_section

WORKLOADS = ("shared", "demo")
# (recompute_rollout_logprobs, packed?): as before; log-probs from generation; and packed scoring and update too.
VARIANTS = ((True, False), (False, False), (False, True))
# Token budget of a packed micro-batch, about four samples: the 4D mask makes attention cost grow with the square
# of the packed row, so long rows would trade pad tokens for masked-out attention scores.
PACKED_TOKENS = {"shared": 512, "demo": 128}
PHASES = ("generation", "scoring", "training")


def shared_preset() -> Preset:
    """The shared CPU workload: the ``cpu`` preset's shape with OPT's full vocabulary (3.4M parameters, most of
    them in the tied embedding), 64 + 64 tokens, 16 prompts."""
    return Preset(
        "OPT-shaped 3.4M-parameter actor, critic and reward (hidden 64, 2 layers, 50,272-token vocabulary)",
        lambda: opt_config(64, 256, 4, 2),
        lambda: opt_config(64, 256, 4, 2),
        prompt_length=64,
        answer_length=64,
        batch_size=16,
        steps=3,
        warmup_steps=1,
    )


class ForwardProbe:
    """Forward hooks that add up, per model and phase, the wall time of each forward and the pad tokens it read.

    Pad tokens are counted from the 2D attention mask a forward receives (0 = pad); a forward given a 4D (packed)
    mask or none counts every position as real. Generation's forwards are not counted here: with a KV cache their
    attention mask spans the cache, not the new tokens (see ``generation_pad_shares``)."""

    def __init__(self):
        self.phase: str | None = None
        self.seconds = defaultdict(float)
        self.positions = defaultdict(int)
        self.real = defaultdict(int)
        self.calls = defaultdict(int)
        self._started: dict[int, float] = {}

    def attach(self, name: str, module: torch.nn.Module) -> None:
        def before(module, args, kwargs):
            if self.phase is None or self.phase == "generation":
                return
            _synchronize()
            self._started[id(module)] = time.perf_counter()
            mask = kwargs.get("attention_mask")
            if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
                mask = args[1]
            ids = kwargs.get("input_ids", args[0] if args else None)
            key = (self.phase, name)
            self.calls[key] += 1
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                self.positions[key] += mask.numel()
                self.real[key] += int(mask.sum())
            elif isinstance(ids, torch.Tensor):
                self.positions[key] += ids.numel()
                self.real[key] += ids.numel()

        def after(module, args, kwargs, output):
            started = self._started.pop(id(module), None)
            if started is not None:
                _synchronize()
                self.seconds[(self.phase, name)] += time.perf_counter() - started

        module.register_forward_pre_hook(before, with_kwargs=True)
        module.register_forward_hook(after, with_kwargs=True)

    def table(self) -> list[dict]:
        rows = []
        for key in sorted(self.calls):
            phase, name = key
            positions = self.positions[key]
            rows.append(
                {
                    "phase": phase,
                    "model": name,
                    "forwards": self.calls[key],
                    "seconds": self.seconds[key],
                    "positions": positions,
                    "pad_share": 1.0 - self.real[key] / positions if positions else 0.0,
                }
            )
        return rows


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generation_pad_shares(rollout) -> dict[str, float]:
    """Pad shares of generation: prefill reads the left-padded prompts; each decode step computes one token per
    sample, wasted for samples that already ended (EOS) until the longest answer ends."""
    prompt_mask, completion_mask = rollout.prompt_mask, rollout.completion_mask
    return {
        "prefill_pad_share": 1.0 - prompt_mask.sum().item() / prompt_mask.numel(),
        "decode_wasted_share": 1.0 - completion_mask.sum().item() / completion_mask.numel(),
        "mean_answer_tokens": completion_mask.sum(1).float().mean().item(),
        "answer_width": completion_mask.shape[1],
    }


def build_shared_trainer(recompute: bool, generation_kwargs: dict | None, workdir: Path, max_tokens: int | None):
    from datasets import Dataset

    from rlhf_trl.ppo.config import PPOConfig
    from rlhf_trl.ppo.trainer import PPOTrainer

    preset = shared_preset()
    actor, critic, reward = build_models(preset, torch.float32, False, workdir)
    tokenizer = build_tokenizer(actor.config)
    steps = preset.warmup_steps + preset.steps
    config = PPOConfig(
        output_dir=str(workdir / "ppo"), max_steps=steps, per_device_train_batch_size=preset.batch_size,
        max_prompt_length=preset.prompt_length, max_new_tokens=preset.answer_length,
        min_new_tokens=preset.answer_length, bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none",
        save_steps=0, seed=0, recompute_rollout_logprobs=recompute, generation_kwargs=generation_kwargs,
        max_tokens_per_micro_batch=max_tokens,
    )  # fmt: skip
    prompts = random_prompts(tokenizer, steps * preset.batch_size, preset.prompt_length, seed=0)
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=actor, value_model=critic, reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )  # fmt: skip
    return trainer, preset.warmup_steps, preset.steps, reward


def build_demo_trainer(
    recompute: bool, generation_kwargs: dict | None, workdir: Path, sft_model, reward_model, max_tokens: int | None
):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_trl.ppo.config import PPOConfig
    from rlhf_trl.ppo.trainer import PPOTrainer
    from rlhf_trl.tiny.model import build_tiny_base
    from rlhf_trl.tiny.task import make_records

    if sft_model is None:
        sft_model = build_tiny_base()
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    actor = AutoModelForCausalLM.from_pretrained(sft_model)
    critic = AutoModelForSequenceClassification.from_pretrained(reward_model or sft_model, num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model or sft_model, num_labels=1)
    warmup, steps = 1, 2
    # recipes/tiny/ppo.yaml's batch and lengths
    config = PPOConfig(
        output_dir=str(workdir / "ppo"), max_steps=warmup + steps, per_device_train_batch_size=64,
        num_mini_batches=2, num_ppo_epochs=2, max_prompt_length=16, max_new_tokens=12, temperature=1.0,
        bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none", save_steps=0, seed=42,
        recompute_rollout_logprobs=recompute, generation_kwargs=generation_kwargs,
        max_tokens_per_micro_batch=max_tokens,
    )  # fmt: skip
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=actor, value_model=critic, reward_model=reward,
        train_dataset=Dataset.from_list(make_records("ppo", 64 * (warmup + steps))),
    )  # fmt: skip
    return trainer, warmup, steps, reward


def profile(trainer, warmup: int, steps: int, reward_model) -> dict:
    """Run warm-up steps, then measured steps phase by phase (as ``PPOTrainer.step`` orders them)."""
    from rlhf_trl.ppo.rollout import actor_of

    for _ in range(warmup):
        trainer.step()
    probe = ForwardProbe()
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    probe.attach("actor", actor_of(trainer.model, trainer.accelerator))
    probe.attach("critic", wrapper.critic)
    if trainer.ref_model is not None:
        probe.attach("reference", trainer.ref_model)
    probe.attach("reward", reward_model)
    phase_seconds = defaultdict(float)
    generation = []
    for _ in range(steps):
        marks = [time.perf_counter()]
        probe.phase = "generation"
        rollout = trainer.generate(trainer.next_batch())
        _synchronize()
        marks.append(time.perf_counter())
        probe.phase = "scoring"
        trainer.score(rollout)
        trainer.compute_advantages(rollout)
        _synchronize()
        marks.append(time.perf_counter())
        probe.phase = "training"
        trainer.update(rollout)
        trainer.generator.sync_weights()
        _synchronize()
        marks.append(time.perf_counter())
        probe.phase = None
        for index, phase in enumerate(PHASES):
            phase_seconds[phase] += marks[index + 1] - marks[index]
        generation.append(generation_pad_shares(rollout))
    forwards = probe.table()
    for row in forwards:
        row["seconds"] /= steps
        row["forwards"] /= steps
    return {
        "steps": steps,
        "phase_s": {phase: seconds / steps for phase, seconds in phase_seconds.items()},
        "step_s": sum(phase_seconds.values()) / steps,
        "generation": {key: sum(item[key] for item in generation) / steps for key in generation[0]},
        "forwards": forwards,
    }


def run(options: argparse.Namespace) -> list[dict]:
    results = []
    generation_kwargs = json.loads(options.generation_kwargs) if options.generation_kwargs else None
    for workload in options.workload:
        for recompute, packed in VARIANTS:
            max_tokens = PACKED_TOKENS[workload] if packed else None
            torch.manual_seed(0)
            workdir = Path(tempfile.mkdtemp(prefix=f"step3-profile-{workload}-"))
            if workload == "shared":
                built = build_shared_trainer(recompute, generation_kwargs, workdir, max_tokens)
            else:
                built = build_demo_trainer(
                    recompute, generation_kwargs, workdir, options.sft_model, options.reward_model, max_tokens
                )
            result = profile(*built)
            result.update(
                {
                    "workload": workload,
                    "recompute_rollout_logprobs": recompute,
                    "max_tokens_per_micro_batch": max_tokens,
                    "generation_kwargs": generation_kwargs,
                }
            )
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    return results


def variant_label(result: dict) -> str:
    label = "actor forward" if result["recompute_rollout_logprobs"] else "log-probs from generation"
    if result.get("max_tokens_per_micro_batch"):
        label += f", packed scoring and update ({result['max_tokens_per_micro_batch']} tokens)"
    return label


def format_section(results: list[dict], command: str, device: str, when: datetime.datetime, note: str) -> str:
    lines = [
        f"## Step-3 profile, {when:%Y-%m-%d %H:%M UTC}",
        "",
        f"- Command: `{command}`",
        f"- Device: {device}" + (f" — {note}" if note else ""),
        "- Pad share: positions of a forward that hold pad tokens (load-independent); decode waste: decode-step "
        "slots spent on answers that had already ended.",
        "",
        "| workload | variant | step s | generation s | scoring s | training s | prefill pad | "
        "decode waste | mean answer / width |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        phases, generation = result["phase_s"], result["generation"]
        lines.append(
            f"| {result['workload']} | {variant_label(result)} | "
            f"{result['step_s']:.2f} | {phases['generation']:.2f} | {phases['scoring']:.2f} | "
            f"{phases['training']:.2f} | {generation['prefill_pad_share']:.1%} | "
            f"{generation['decode_wasted_share']:.1%} | {generation['mean_answer_tokens']:.1f} / "
            f"{generation['answer_width']:.0f} |"
        )
    lines += ["", "| workload | variant | phase | model | forwards/step | s/step | pad share |"]
    lines.append("|---|---|---|---|---|---|---|")
    for result in results:
        for row in result["forwards"]:
            lines.append(
                f"| {result['workload']} | {variant_label(result)} | {row['phase']} "
                f"| {row['model']} | {row['forwards']:.0f} | {row['seconds']:.3f} | {row['pad_share']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=WORKLOADS, action="append", help="repeatable; default: both")
    parser.add_argument("--sft-model", help="demo workload: the actor folder (default: the tiny base model)")
    parser.add_argument("--reward-model", help="demo workload: the reward/critic folder (default: from the actor)")
    parser.add_argument(
        "--generation-kwargs",
        help='JSON of extra GenerationConfig fields, e.g. \'{"cache_implementation": "static"}\'',
    )
    parser.add_argument("--append", metavar="FILE", help="append the markdown section to this file")
    parser.add_argument("--note", default="", help="a remark on the device line (e.g. 'measured under shared load')")
    parser.add_argument("--output-json", help="write the raw measurements here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = make_parser().parse_args(argv)
    options.workload = options.workload or list(WORKLOADS)
    for option in ("sft_model", "reward_model"):
        folder = getattr(options, option)
        if folder is not None and not (Path(folder) / "config.json").is_file():
            print(f"--{option.replace('_', '-')} {folder}: no model folder here (no config.json)", file=sys.stderr)
            return 2
    if options.generation_kwargs:
        try:
            json.loads(options.generation_kwargs)
        except json.JSONDecodeError as error:
            print(f"--generation-kwargs: not JSON ({error})", file=sys.stderr)
            return 2
    results = run(options)
    device = bench_device_description()
    command = "python benchmarks/step3_profile.py " + shlex.join(argv)
    section = format_section(results, command, device, datetime.datetime.now(datetime.timezone.utc), options.note)
    publish_section(section, options.append)
    if options.output_json:
        Path(options.output_json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
