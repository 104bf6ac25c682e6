"""What ``rlhf-trl bench`` runs: model shapes (OPT and Llama presets with random weights), a tokenizer sized to
them, random prompts, parameter and FLOP counts, and a description of the device it runs on."""

from __future__ import annotations

import platform
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
