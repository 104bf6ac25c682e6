"""``rlhf-trl bench``: DeepSpeed-Chat's step-3 throughput benchmark, run through our PPO trainer.

DS-Chat's setting: an OPT-1.3B actor with an OPT-350M critic and reward model, 256-token prompts, answers forced to
exactly 256 tokens, generation batch = training batch, one PPO epoch. Models are built from their configurations
with random weights and prompts are random token ids, so nothing is downloaded; throughput does not depend on the
weights. Each measured step is a real ``PPOTrainer.step()`` (generate, score, advantages, update).

Effective TFLOPs count model FLOPs per token with N parameters (tied embeddings counted once, attention-score FLOPs
ignored): generation 2·N_actor per prompt and answer token (prefill + decode with a KV cache); scoring 2·N for each
of the actor, reference, critic and reward forwards over prompt + answer; training 6·N (forward + backward) for the
actor and critic per PPO epoch. Totals are divided by wall time and by the number of GPUs. Recomputation from
gradient checkpointing is not counted, and with LoRA the frozen weights' gradients are counted as if computed.

``--memory-search`` (GPU only) finds the largest OPT actor, with an OPT-350M critic, whose step 3 fits on this GPU
with LoRA and either ZeRO-3 CPU offload or 8-bit base weights: each size is tried in its own process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhf_trl.bench.memory_search import MEMORY_MODES, memory_search
from rlhf_trl.bench.workloads import (
    PRESETS,
    build_models,
    build_tokenizer,
    device_description,
    parameter_count,
    random_prompts,
    readable_count,
    step_flops,
)
from rlhf_trl.ppo.config import ROLLOUT_BACKENDS
from rlhf_trl.reporting.benchmarks_file import append_section

# The update's importance-ratio statistics the benchmark reports (step metrics policy/<name>).
RATIO_STATS = ("ratio_mean", "ratio_max", "clip_fraction", "approx_kl")


def peak_memory_gib() -> tuple[str, float]:
    if torch.cuda.is_available():
        return "peak GPU memory (GiB, max allocated)", torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is in KiB on Linux
    return "peak CPU memory (GiB, max RSS)", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_benchmark(options: argparse.Namespace) -> dict:
    """Build everything, run warm-up and measured PPO steps, and return the measurements."""
    from datasets import Dataset

    from rlhf_trl.ppo.config import PPOConfig
    from rlhf_trl.ppo.trainer import PPOTrainer

    preset = PRESETS[options.preset]
    batch_size = options.batch_size or preset.batch_size
    steps = options.steps or preset.steps
    warmup = preset.warmup_steps if options.warmup_steps is None else options.warmup_steps
    dtype = torch.bfloat16 if options.bf16 else torch.float32
    workdir = Path(tempfile.mkdtemp(prefix="rlhf-trl-bench-"))
    actor, critic, reward = build_models(preset, dtype, options.load_in_8bit, workdir)
    actor_params, critic_params = parameter_count(actor), parameter_count(critic)
    tokenizer = build_tokenizer(actor.config)
    peft_config = None
    if options.lora_rank:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=options.lora_rank, lora_alpha=options.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    config = PPOConfig(
        output_dir=str(workdir / "ppo"),
        max_steps=warmup + steps,
        per_device_train_batch_size=batch_size,
        generation_batches=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        max_prompt_length=preset.prompt_length,
        max_new_tokens=preset.answer_length,
        min_new_tokens=preset.answer_length,
        rollout_backend=options.rollout_backend,
        recompute_rollout_logprobs=options.recompute_rollout_logprobs,
        bf16=options.bf16,
        # Without a GPU, Transformers accepts bf16 only with use_cpu (a CPU bf16 run: the same kernels' dtype).
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_steps=0,
        logging_steps=1,
        seed=0,
        # Passed only when asked: Transformers 5 warns about the field's name whenever it is given.
        **({"gradient_checkpointing": True} if options.gradient_checkpointing else {}),
    )
    world = max(config.world_size, 1)
    prompts = random_prompts(tokenizer, (warmup + steps) * batch_size * world, preset.prompt_length, seed=0)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=actor,
        value_model=critic,
        reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        peft_config=peft_config,
    )
    for _ in range(warmup):
        trainer.step()
    before = dict(trainer.timings)
    started = time.perf_counter()
    step_metrics = [trainer.step() for _ in range(steps)]
    wall = time.perf_counter() - started
    answer_lengths = [metrics["response/length"] for metrics in step_metrics]
    # One epoch of one mini-batch: the update's only optimizer step comes after every ratio is taken, so these are
    # the importance ratios of unchanged weights, new forward over rollout log-probs: the rollout's log-prob error.
    ratio = {
        name: (max if name == "ratio_max" else statistics.fmean)(
            [metrics[f"policy/{name}"] for metrics in step_metrics]
        )
        for name in RATIO_STATS
    }
    phases = {
        name: trainer.timings[f"{name}_s"] - before[f"{name}_s"] for name in ("generation", "scoring", "training")
    }

    samples = batch_size * world * steps
    answer_length = sum(answer_lengths) / len(answer_lengths)
    flops = step_flops(actor_params, critic_params, batch_size * world, preset.prompt_length + answer_length, 1)
    devices = world if torch.cuda.is_available() else 1
    memory_label, memory = peak_memory_gib()
    return {
        "preset": options.preset,
        "description": preset.description,
        "device": device_description(),
        "is_main_process": trainer.accelerator.is_main_process,
        "rollout_backend": options.rollout_backend,
        "active_backend": trainer.rollout_backend_in_use,
        "recompute_rollout_logprobs": options.recompute_rollout_logprobs,
        "first_update_ratio": ratio,
        "actor_params": actor_params,
        "critic_params": critic_params,
        "prompt_length": preset.prompt_length,
        "answer_length": answer_length,
        "forced_answer_length": preset.answer_length,
        "batch_size": batch_size,
        "processes": world,
        "steps": steps,
        "warmup_steps": warmup,
        "precision": "bf16" if options.bf16 else "fp32",
        "lora_rank": options.lora_rank,
        "load_in_8bit": options.load_in_8bit,
        "wall_s": wall,
        "phase_s": phases,
        "samples_per_s": samples / wall,
        "tokens_per_s": samples * (preset.prompt_length + answer_length) / wall,
        "generated_tokens_per_s": samples * answer_length / phases["generation"],
        "memory_label": memory_label,
        "peak_memory_gib": memory,
        "tflops_per_device": {
            "overall": sum(flops.values()) * steps / wall / devices / 1e12,
            **{name: flops[name] * steps / phases[name] / devices / 1e12 for name in flops},
        },
    }


def format_section(result: dict, command: str, when: datetime.datetime) -> str:
    """One markdown section for the benchmarks file."""
    phases, tflops, wall = result["phase_s"], result["tflops_per_device"], result["wall_s"]
    per_step = wall / result["steps"]
    setup = (
        f"actor {readable_count(result['actor_params'])} parameters, critic and reward "
        f"{readable_count(result['critic_params'])} each, reference = "
        f"{'the actor with adapters off' if result['lora_rank'] else 'a copy of the actor'}; "
        f"{result['prompt_length']}-token random prompts; answers forced to {result['forced_answer_length']} tokens "
        f"(min_new_tokens = max_new_tokens), measured mean {result['answer_length']:.1f}; generation batch = training "
        f"batch = {result['batch_size']} per process x {result['processes']} process(es); 1 PPO epoch, 1 mini-batch; "
        f"{result['precision']}"
        + (f"; LoRA rank {result['lora_rank']} on the actor" if result["lora_rank"] else "")
        + ("; actor base weights in 8 bits" if result["load_in_8bit"] else "")
        + f"; rollout backend {result['rollout_backend']} (active: {result['active_backend']}); "
        f"{result['steps']} measured step(s) after {result['warmup_steps']} warm-up step(s)."
    )
    rows = [
        ("samples/s", f"{result['samples_per_s']:.3f}"),
        ("tokens/s (prompt + answer)", f"{result['tokens_per_s']:.1f}"),
        ("generated tokens/s (generation phase)", f"{result['generated_tokens_per_s']:.1f}"),
        ("time per step (s)", f"{per_step:.2f}"),
    ]
    for name, label in (
        ("generation", "generation"),
        ("scoring", "scoring (actor, ref, critic, reward forwards)"),
        ("training", "training"),
    ):
        rows.append(
            (f"{label} (s per step)", f"{phases[name] / result['steps']:.2f} ({100 * phases[name] / wall:.0f}%)")
        )
    rows.append((result["memory_label"], f"{result['peak_memory_gib']:.2f}"))
    source = "a separate actor forward" if result["recompute_rollout_logprobs"] else "generation's logits"
    rows.append(
        (
            f"first-update importance ratio, rollout log-probs from {source} (mean over steps, max: largest): "
            + " / ".join(RATIO_STATS),
            " / ".join(f"{result['first_update_ratio'][name]:.4g}" for name in RATIO_STATS),
        )
    )
    rows.append(
        (
            "effective TFLOPs per device: overall / generation / scoring / training",
            " / ".join(f"{tflops[name]:.3g}" for name in ("overall", "generation", "scoring", "training")),
        )
    )
    table = "\n".join(["| metric | value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])
    return (
        f"## Step 3, preset `{result['preset']}`, {when.strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        f"- Command: `{command}`\n- Device: {result['device']}\n- Preset: {result['description']}\n"
        f"- Setting: {setup}\n\n{table}\n\n"
        "TFLOPs are model FLOPs: 2·params·tokens per forward (generation: actor over prompt + answer; scoring: actor, "
        "reference, critic, reward), 6·params·tokens for training actor and critic, divided by wall time and "
        "devices.\n"
    )


# ---------------------------------------------------------------------------------------------------- command line
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-trl bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="opt-1.3b", help="models and sizes")
    parser.add_argument("--steps", type=int, help="measured PPO steps (default: the preset's)")
    parser.add_argument("--warmup-steps", type=int, help="unmeasured steps first (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="prompts per process per step (default: the preset's)")
    parser.add_argument("--rollout-backend", choices=ROLLOUT_BACKENDS, default="hf", help="generation engine")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and mixed precision")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on the actor")
    parser.add_argument(
        "--recompute-rollout-logprobs",
        action="store_true",
        help="the actor's rollout log-probs from a scoring forward instead of generation's logits",
    )
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="LoRA on the actor's linear layers (0: off; DS-Chat's actor LoRA dim is 128)",
    )
    parser.add_argument("--load-in-8bit", action="store_true", help="actor base weights in 8 bits (bitsandbytes)")
    parser.add_argument("--benchmarks-file", default="BENCHMARKS.md", help="markdown file the section is appended to")
    parser.add_argument("--no-append", action="store_true", help="print the section only")
    parser.add_argument("--result-json", help="also write the raw measurements here")
    parser.add_argument("--memory-search", action="store_true", help="largest OPT actor that fits (GPU only)")
    parser.add_argument(
        "--memory-modes",
        nargs="+",
        choices=MEMORY_MODES,
        default=list(MEMORY_MODES),
        help="memory-saving setups tried by --memory-search",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    options = parser.parse_args(argv)
    if options.load_in_8bit and not options.lora_rank:
        parser.error("--load-in-8bit needs --lora-rank: 8-bit weights are frozen, only adapters can train")
    command = "rlhf-trl bench " + shlex.join(argv)
    if options.memory_search:
        section = memory_search(options) + f"\n- Command: `{command}`\n"
        is_main = True
    else:
        result = run_benchmark(options)
        section = format_section(result, command, datetime.datetime.now(datetime.timezone.utc))
        is_main = result["is_main_process"]
        if options.result_json and is_main:
            Path(options.result_json).write_text(json.dumps(result, indent=2))
    if is_main:
        print(section)
        if not options.no_append:
            append_section(Path(options.benchmarks_file), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
