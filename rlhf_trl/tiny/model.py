"""Build the tiny base model of the embedded default: a word-level tokenizer and a small OPT model, briefly
pretrained on the task's corpus so it knows the chat format but not how to sort. Cached after the first build."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from .task import DIGITS, make_records

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
WORDS = ["Human:", "Assistant:", "sort", *DIGITS]
# The version suffix changes whenever the build does, so a base cached by an older build is never reused.
DEFAULT_CACHE = Path(os.environ.get("RLHF_TRL_CACHE", Path.home() / ".cache" / "rlhf_trl")) / "tiny-base-v2"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer; pad is separate from EOS (PPO must tell padding from a real end)."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS.values(), *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    tokenizer.padding_side = "left"  # generation batches are left-padded; trainers set their own side as needed
    return tokenizer


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    layers: int = 2,
    *,
    max_positions: int = 64,
    dropout: float = 0.0,
    projected: bool = False,
) -> OPTConfig:
    """A small OPT config for ``tokenizer``. ``projected``: OPT-350m's layout, which embeds in a smaller space
    (project_in/project_out) and normalises after each block; the other sizes (1.3b, 13b, ...) embed at the hidden
    size and normalise before. A tokenizer without a BOS token begins sequences with its EOS, as OPT does."""
    bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        word_embed_proj_dim=hidden_size // 2 if projected else hidden_size,
        do_layer_norm_before=not projected,
        num_hidden_layers=layers,
        num_attention_heads=4,
        ffn_dim=4 * hidden_size,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=bos_token_id,
        dropout=dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


@contextmanager
def one_thread_deterministic():
    """One torch thread and deterministic algorithms for the block: the summation order of every matrix product is
    then the same whatever the core count, so the base model is the same on every machine (of one instruction set).
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def pretrain(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int, seed: int) -> list[float]:
    """Plain next-token training on the format corpus; returns the loss per step."""
    torch.manual_seed(seed)
    texts = [record["text"] + " " + tokenizer.eos_token for record in make_records("pretrain", 4096)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokenizer.padding_side = "right"
    losses = []
    model.train()
    for step in range(steps):
        batch_texts = [texts[(step * 64 + offset) % len(texts)] for offset in range(64)]
        batch = tokenizer(batch_texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tokenizer.padding_side = "left"
    return losses


def build_tiny_base(output_dir: str | os.PathLike | None = None, steps: int = 150, seed: int = 0) -> Path:
    """Return a folder with the pretrained tiny base model and tokenizer, building it once if missing.

    The folder is written under a temporary name and renamed, so an interrupted build never leaves half a model.
    """
    target = Path(output_dir) if output_dir is not None else DEFAULT_CACHE
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    with one_thread_deterministic():
        torch.manual_seed(seed)
        model = OPTForCausalLM(build_config(tokenizer))
        pretrain(model, tokenizer, steps, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    staging = Path(tempfile.mkdtemp(prefix=".tiny-base-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target
