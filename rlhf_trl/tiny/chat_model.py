"""Tiny chat models of current architectures, built locally: a Llama-3-style or Qwen2-style decoder with a byte-level
BPE tokenizer, the family's special tokens and a Jinja chat template, briefly pretrained on the conversational form
of the tiny sorting task so it knows the chat format but not how to sort. Cached after the first build.

They stand in for the chat models users bring (Llama, Qwen): the tokenizer splits words into byte-level pieces,
the Llama style adds a BOS token both through the tokenizer and through its template (the double-BOS trap), the
Qwen2 style has no BOS at all, and each ends an assistant turn with its own end-of-turn token.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from . import task

CACHE_ROOT = Path(os.environ.get("RLHF_TRL_CACHE", Path.home() / ".cache" / "rlhf_trl"))

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFamily:
    """What distinguishes one chat-model family here: its special tokens, template and model classes."""

    name: str
    bos_token: str | None
    eos_token: str  # ends an assistant turn; generation stops on it
    pad_token: str
    other_special_tokens: tuple[str, ...]
    chat_template: str
    config_class: type
    model_class: type


FAMILIES = {
    "llama": ChatFamily(
        name="llama",
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        other_special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
        chat_template=LLAMA_TEMPLATE,
        config_class=LlamaConfig,
        model_class=LlamaForCausalLM,
    ),
    "qwen2": ChatFamily(
        name="qwen2",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        other_special_tokens=("<|im_start|>",),
        chat_template=QWEN2_TEMPLATE,
        config_class=Qwen2Config,
        model_class=Qwen2ForCausalLM,
    ),
}


def to_messages(prompt: str, completion: str | None = None) -> list[dict]:
    """The conversational form of a task record: ``Human: sort 3 1 4 Assistant:`` becomes one user turn."""
    question = prompt.removeprefix("Human:").removesuffix("Assistant:").strip()
    messages = [{"role": "user", "content": question}]
    if completion is not None:
        messages.append({"role": "assistant", "content": completion.strip()})
    return messages


def conversational_record(record: dict) -> dict:
    """One task record in TRL's conversational format: prompt/completion as message lists, a preference pair
    with a conversational prompt and assistant turns, a prompt-only record as a message list."""
    if "text" in record:
        prompt, answer = record["text"].split(" Assistant:", 1)
        return {"messages": to_messages(prompt + " Assistant:", answer)}
    converted = {"prompt": to_messages(record["prompt"])}
    for key in ("completion", "chosen", "rejected"):
        if key in record:
            converted[key] = [{"role": "assistant", "content": record[key].strip()}]
    return converted


def conversational_records(split: str, count: int) -> list[dict]:
    """``task.make_records`` in TRL's conversational formats (see ``conversational_record``)."""
    return [conversational_record(record) for record in task.make_records(split, count)]


def _corpus() -> list[str]:
    """Text the BPE tokenizer learns its merges from: the task's words in both conversational renderings."""
    rng = random.Random(0)
    lines = ["user assistant system Human: Assistant: sort"]
    for _ in range(2000):
        numbers = [rng.choice(task.DIGITS) for _ in range(rng.randint(task.MIN_LENGTH, task.MAX_LENGTH))]
        lines.append(f"sort {' '.join(numbers)}\n\n{' '.join(sorted(numbers))}")
    return lines


def build_chat_tokenizer(family: str = "llama") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's special tokens and chat template; pad differs from EOS."""
    spec = FAMILIES[family]
    specials = [token for token in (spec.bos_token, spec.eos_token, spec.pad_token) if token]
    specials += list(spec.other_special_tokens)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    if spec.bos_token:
        # Llama-3 tokenizers prepend BOS to every encoded text, and their template writes it too.
        bos_id = backend.token_to_id(spec.bos_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos_token} $A",
            pair=f"{spec.bos_token} $A {spec.bos_token} $B",
            special_tokens=[(spec.bos_token, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        additional_special_tokens=list(spec.other_special_tokens),
        chat_template=spec.chat_template,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_config(tokenizer: PreTrainedTokenizerFast, family: str = "llama", hidden_size: int = 64, layers: int = 2):
    spec = FAMILIES[family]
    return spec.config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in the real families
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )


def pretrain(model, tokenizer: PreTrainedTokenizerFast, steps: int, seed: int) -> list[float]:
    """Next-token training on chat-templated conversations whose answers are the digits in random order (the
    format, not the skill); returns the loss per step."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    texts = []
    for record in task.make_records("pretrain", 2048):
        prompt, answer = record["text"].split(" Assistant:", 1)
        numbers = answer.split()
        rng.shuffle(numbers)
        messages = to_messages(prompt + " Assistant:", " ".join(numbers))
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for step in range(steps):
        batch_texts = [texts[(step * 32 + offset) % len(texts)] for offset in range(32)]
        # The template already wrote BOS; the tokenizer must not add a second one.
        batch = tokenizer(batch_texts, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def build_tiny_chat_base(
    output_dir: str | os.PathLike | None = None, family: str = "llama", steps: int = 150, seed: int = 0
) -> Path:
    """Return a folder with a pretrained tiny chat model of ``family`` ("llama" or "qwen2") and its tokenizer,
    building it once if missing (written under a temporary name and renamed: never half a model)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown chat family {family!r}; choose one of {', '.join(FAMILIES)}")
    target = Path(output_dir) if output_dir is not None else CACHE_ROOT / f"tiny-{family}-chat"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_chat_tokenizer(family)
    torch.manual_seed(seed)
    model = FAMILIES[family].model_class(build_config(tokenizer, family))
    tokenizer.padding_side = "right"
    pretrain(model, tokenizer, steps, seed)
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-{family}-chat-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


# Tiny *random* stand-ins for real checkpoints ----------------------------------------------------------------------
# Recipe tests replace a recipe's Hub model (facebook/opt-1.3b, Qwen/Qwen2.5-0.5B-Instruct, ...) with a model of the
# same class and the same tokenizer conventions, only tiny and untrained: what matters there is that the recipe's
# settings (LoRA target modules, 8-bit loading, chat template, special tokens, ZeRO) work with the architecture.

OPT_SPECIAL_TOKENS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"}


def build_opt_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with OPT's conventions: ``</s>`` is both BOS and EOS and is prepended to every
    encoded text, ``<pad>`` is separate, ids 0-3 are ``<s> <pad> </s> <unk>``, right padding and no chat template
    (OPT is a plain language model: DS-Chat feeds it ``Human: ... Assistant: ...`` text)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    bos = OPT_SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **OPT_SPECIAL_TOKENS)


# The layouts build_tiny_random_model can write, with the real checkpoints each stands in for.
RANDOM_FAMILIES = {
    "opt": "facebook/opt-1.3b, opt-6.7b, opt-13b layout (pre-norm, embeddings at the hidden size)",
    "opt-350m": "facebook/opt-350m layout (post-norm, projected embeddings)",
    "llama": "Llama-3 chat layout",
    "qwen2": "Qwen2/Qwen2.5 chat layout",
}


def build_tiny_random_model(
    output_dir: str | os.PathLike, family: str, hidden_size: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Write an untrained tiny causal LM of ``family`` (see ``RANDOM_FAMILIES``) and its tokenizer to ``output_dir``
    and return the folder. Chat families get the special tokens and chat template of ``build_chat_tokenizer``."""
    if family not in RANDOM_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(RANDOM_FAMILIES)}")
    torch.manual_seed(seed)
    if family.startswith("opt"):
        from transformers import OPTForCausalLM

        from rlhf_trl.tiny.model import build_config as build_opt_config

        tokenizer = build_opt_tokenizer()
        # dropout as the real checkpoints have it: the recipes must turn it off where DS-Chat does
        opt_config = build_opt_config(
            tokenizer, hidden_size, layers, max_positions=1024, dropout=0.1, projected=family == "opt-350m"
        )
        model = OPTForCausalLM(opt_config)
    else:
        tokenizer = build_chat_tokenizer(family)
        config = build_config(tokenizer, family, hidden_size=hidden_size, layers=layers)
        config.max_position_embeddings = 1024
        model = FAMILIES[family].model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    target = Path(output_dir)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
