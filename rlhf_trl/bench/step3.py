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
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, OPTConfig, PretrainedConfig

OPT_VOCAB = 50272
OPT_PAD, OPT_EOS = 1, 2


def opt_config(hidden: int, ffn: int, heads: int, layers: int, projection: int | None = None, **extra) -> OPTConfig:
    """An OPT configuration as published with the facebook/opt-* checkpoints (pre-layer-norm unless stated)."""
    return OPTConfig(
        vocab_size=extra.pop("vocab_size", OPT_VOCAB),
        hidden_size=hidden,
        ffn_dim=ffn,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        word_embed_proj_dim=projection or hidden,
        max_position_embeddings=extra.pop("max_position_embeddings", 2048),
        do_layer_norm_before=extra.pop("do_layer_norm_before", True),
        pad_token_id=OPT_PAD,
        eos_token_id=OPT_EOS,
        bos_token_id=OPT_EOS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        **extra,
    )


# facebook/opt-* shapes: hidden size, FFN size, attention heads, layers. OPT-350M alone projects its 1024-wide
# layers to 512-wide embeddings and puts layer norms after the blocks.
OPT_SIZES: dict[str, Callable[[], OPTConfig]] = {
    "opt-125m": lambda: opt_config(768, 3072, 12, 12),
    "opt-350m": lambda: opt_config(1024, 4096, 16, 24, projection=512, do_layer_norm_before=False),
    "opt-1.3b": lambda: opt_config(2048, 8192, 32, 24),
    "opt-2.7b": lambda: opt_config(2560, 10240, 32, 32),
    "opt-6.7b": lambda: opt_config(4096, 16384, 32, 32),
    "opt-13b": lambda: opt_config(5120, 20480, 40, 40),
    "opt-30b": lambda: opt_config(7168, 28672, 56, 48),
    "opt-66b": lambda: opt_config(9216, 36864, 72, 64),
}


def llama_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> LlamaConfig:
    """Llama-3-style shape (128k vocabulary, grouped-query attention, tied embeddings as in Llama-3.2-1B)."""
    return LlamaConfig(
        vocab_size=128256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048, rope_theta=500000.0,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip


@dataclass
class Preset:
    description: str
    actor: Callable[[], PretrainedConfig]
    critic: Callable[[], PretrainedConfig]
    prompt_length: int = 256
    answer_length: int = 256
    batch_size: int = 16
    steps: int = 5
    warmup_steps: int = 1


PRESETS = {
    "opt-1.3b": Preset("DS-Chat: OPT-1.3B actor, OPT-350M critic and reward", OPT_SIZES["opt-1.3b"],
                       OPT_SIZES["opt-350m"]),
    "llama-1b": Preset(
        "Llama-3.2-1B-shaped actor (1.24B), Llama-style 0.32B critic and reward",
        lambda: llama_config(2048, 8192, 16, 32, 8),
        lambda: llama_config(1024, 2816, 16, 16, 8),
    ),
    "cpu": Preset(
        "tiny OPT actor and critic for a CPU run",
        lambda: opt_config(64, 256, 4, 2, vocab_size=512, max_position_embeddings=160),
        lambda: opt_config(32, 128, 2, 2, vocab_size=512, max_position_embeddings=160),
        prompt_length=32, answer_length=32, batch_size=4, steps=2, warmup_steps=0,
    ),
}  # fmt: skip
for _size in ("opt-125m", "opt-2.7b", "opt-6.7b", "opt-13b", "opt-30b", "opt-66b"):
    # Actor sizes for --memory-search (and for anyone curious), always with DS-Chat's OPT-350M critic.
    PRESETS[_size] = Preset(
        f"{_size.upper()} actor, OPT-350M critic and reward", OPT_SIZES[_size], OPT_SIZES["opt-350m"], batch_size=4
    )


def build_tokenizer(config: PretrainedConfig):
    """Word-level tokenizer over the model's whole vocabulary ("t<id>" words), so random ids decode to text that
    tokenizes back to exactly the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {config.pad_token_id: "<pad>", config.eos_token_id: "<eos>"}
    unk_id = next(index for index in range(config.vocab_size) if index not in special)
    special[unk_id] = "<unk>"
    vocab = {special.get(index, f"t{index}"): index for index in range(config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[str]:
    """``count`` prompts of exactly ``length`` random ordinary tokens each."""
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([index for index in range(len(tokenizer)) if index not in special])
    picks = ordinary[torch.randint(len(ordinary), (count, length), generator=generator)]
    return [" ".join(f"t{index}" for index in row.tolist()) for row in picks]


def build_models(preset: Preset, dtype: torch.dtype, load_in_8bit: bool, workdir: Path):
    """Actor (causal LM), critic and reward model (one-label sequence classifiers) with random weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    torch.manual_seed(0)  # every process builds identical weights
    actor_config, critic_config = preset.actor(), preset.critic()
    critic_config.num_labels = 1
    actor = AutoModelForCausalLM.from_config(actor_config, dtype=dtype)
    if load_in_8bit:
        # bitsandbytes quantizes while loading, so the random actor is saved once and loaded back in 8 bits
        # (needs disk space for the model in 16 bits).
        actor.save_pretrained(workdir / "random-actor")
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        actor = AutoModelForCausalLM.from_pretrained(
            workdir / "random-actor", quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=dtype,
            device_map={"": device},
        )  # fmt: skip
    critic = AutoModelForSequenceClassification.from_config(critic_config, dtype=dtype)
    reward = AutoModelForSequenceClassification.from_config(critic_config, dtype=dtype)
    return actor, critic, reward


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def readable_count(count: float) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


def step_flops(actor_params: int, critic_params: int, samples: int, tokens_per_sample: float, epochs: int) -> dict:
    """Model FLOPs of one PPO step, split by phase (see the module docstring)."""
    tokens = samples * tokens_per_sample
    return {
        "generation": 2 * actor_params * tokens,
        "scoring": 2 * (2 * actor_params + 2 * critic_params) * tokens,
        "training": 6 * (actor_params + critic_params) * tokens * epochs,
    }


def device_description() -> str:
    if torch.cuda.is_available():
        count = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return f"{count} x {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


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
        bf16=options.bf16,
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
    answer_lengths = [trainer.step()["response/length"] for _ in range(steps)]
    wall = time.perf_counter() - started
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
        "active_backend": getattr(trainer.rollout, "active_backend", trainer.rollout.name),
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


def append_section(path: Path, section: str) -> None:
    if not path.exists():
        path.write_text("# Benchmarks\n\nAppended by `rlhf-trl bench`; newest last.\n")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + section)


# ---------------------------------------------------------------------------------------------------- memory search
MEMORY_MODES = ("lora-zero3-offload", "lora-8bit")


def largest_fitting(candidates: list[str], fits: Callable[[str], bool]) -> tuple[str | None, dict[str, bool]]:
    """Binary search for the last candidate that fits, assuming candidates are sorted by size and that a model
    which does not fit means no larger one fits. Returns (largest fitting or None, every trial's outcome)."""
    low, high, best, tried = 0, len(candidates) - 1, None, {}
    while low <= high:
        middle = (low + high) // 2
        tried[candidates[middle]] = fits(candidates[middle])
        if tried[candidates[middle]]:
            best, low = candidates[middle], middle + 1
        else:
            high = middle - 1
    return best, tried


def trial_command(size: str, mode: str, result_path: Path, lora_rank: int, batch_size: int) -> list[str]:
    """One single-GPU trial of ``size`` in its own process (an out-of-memory error must not poison the search)."""
    from rlhf_trl.launch import config_for_deployment, launch_command
    from rlhf_trl.resources import accelerate_config

    bench_args = [
        "--preset", size, "--steps", "1", "--warmup-steps", "0", "--batch-size", str(batch_size), "--bf16",
        "--no-append", "--lora-rank", str(lora_rank), "--result-json", str(result_path),
    ]  # fmt: skip
    if mode == "lora-zero3-offload":
        config = accelerate_config("zero3_offload")
    elif mode == "lora-8bit":
        config, bench_args = config_for_deployment("single_gpu", None), [*bench_args, "--load-in-8bit"]
    else:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {MEMORY_MODES}")
    return launch_command(config, "rlhf_trl.bench.step3", bench_args, num_processes=1)


def run_trial(command: list[str], result_path: Path) -> bool:
    """True if the trial finished; False on CUDA out-of-memory; any other failure stops the search."""
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode == 0 and result_path.exists():
        return True
    output = process.stdout + process.stderr
    if "OutOfMemoryError" in output or "CUDA out of memory" in output:
        return False
    raise RuntimeError(f"memory-search trial failed for a reason other than GPU memory:\n{output[-4000:]}")


def memory_search(options: argparse.Namespace) -> str:
    """Run the search for every memory mode asked for; returns the markdown section."""
    if not torch.cuda.is_available():
        raise SystemExit("--memory-search needs a CUDA GPU")
    workdir = Path(tempfile.mkdtemp(prefix="rlhf-trl-memory-"))
    batch_size, lora_rank = options.batch_size or 4, options.lora_rank or 128
    lines = [
        f"## Largest OPT actor for step 3 on one GPU, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"- Device: {device_description()}",
        f"- One PPO step of {batch_size} prompts, 256 + 256 tokens, bf16, OPT-350M critic and reward, LoRA rank "
        f"{lora_rank} on the actor",
    ]
    for mode in options.memory_modes:

        def fits(size: str, mode: str = mode) -> bool:
            result_path = workdir / f"{mode}-{size}.json"
            return run_trial(trial_command(size, mode, result_path, lora_rank, batch_size), result_path)

        best, tried = largest_fitting(list(OPT_SIZES), fits)
        outcomes = ", ".join(f"{size} {'fits' if ok else 'out of memory'}" for size, ok in tried.items())
        lines.append(f"- {mode}: largest fitting actor **{best or 'none'}** (trials: {outcomes})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- command line
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-trl bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="opt-1.3b", help="models and sizes")
    parser.add_argument("--steps", type=int, help="measured PPO steps (default: the preset's)")
    parser.add_argument("--warmup-steps", type=int, help="unmeasured steps first (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="prompts per process per step (default: the preset's)")
    parser.add_argument("--rollout-backend", choices=("hf", "deepspeed"), default="hf", help="generation engine")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and mixed precision")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on the actor")
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
