"""The project's generation library: how a prompt becomes token ids and new tokens become answer text.

Every command renders a prompt the same way: a conversation (TRL's list of messages) through the chat template,
tokenized without adding special tokens (the template already wrote its BOS); a plain text prompt with the
tokenizer's special tokens, unless it already starts with the BOS token. An answer ends at its first end-of-text
token (:func:`completion_mask`); its text is decoded after the prompt so a leading space survives
(:func:`completion_texts`). PPO's rollout, evaluation, gold scoring, the e2e sample table and the chat UI use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_SENTINEL = "RLHF_TRL_SENTINEL_MESSAGE"


@dataclass
class GenerationSettings:
    """How answers are generated: greedy unless ``do_sample``; ``temperature`` only applies when sampling."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    do_sample: bool = False
    batch_size: int = 16

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) and batch_size ({self.batch_size}) must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature}); use greedy decoding instead of 0")


@dataclass
class GeneratedBatch:
    """Token-level result of one batch: prompts left-padded, completions right-padded with the pad token.

    ``completion_mask`` is 1 for the tokens the model produced up to and including its first end-of-text token.
    """

    prompt_ids: torch.LongTensor  # [batch, prompt_len]
    prompt_mask: torch.LongTensor  # [batch, prompt_len]
    completion_ids: torch.LongTensor  # [batch, completion_len]
    completion_mask: torch.LongTensor  # [batch, completion_len]
    texts: list[str] = field(default_factory=list)


def end_token_ids(model, tokenizer) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS and those of the model's generation config (chat models
    often end a turn with their own token, such as ``<|im_end|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    generation_config = getattr(model, "generation_config", None)
    configured = generation_config.eos_token_id if generation_config is not None else None
    for token_id in configured if isinstance(configured, list) else [configured]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an end-of-text token")
    return ids


Prompt = str | list[dict]  # plain text, or a conversation in TRL's format (list of {"role", "content"})


def is_conversation(prompt: Prompt) -> bool:
    return isinstance(prompt, list)


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text the model continues: a conversation rendered by the chat template up to the assistant cue;
    plain text unchanged."""
    if not is_conversation(prompt):
        return prompt
    if not tokenizer.chat_template:
        raise ValueError("a conversational prompt needs a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def encode_text(tokenizer, text: str, rendered: bool = False) -> list[int]:
    """Token ids of one text without a second BOS: a rendered chat template (``rendered``) or a text that already
    starts with the BOS token is tokenized without adding special tokens."""
    starts_with_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    add_special_tokens = not (rendered or starts_with_bos)
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def encode_prompts(tokenizer, prompts: list[Prompt]) -> list[list[int]]:
    """Token ids of prompts (conversations through the chat template, see :func:`render_prompt`)."""
    return [encode_text(tokenizer, render_prompt(tokenizer, prompt), is_conversation(prompt)) for prompt in prompts]


def as_chat_prompt(tokenizer, prompt: Prompt) -> Prompt:
    """A plain prompt becomes a conversation when the tokenizer has a chat template, as ``rlhf-trl chat`` does with
    what the user types: a DS-Chat transcript (``Human: ... Assistant:``) is split into its turns, other text is one
    user message. Conversations, and prompts for models without a template, stay as they are."""
    from rlhf_trl.data.conversation import transcript_to_messages

    if tokenizer.chat_template and not is_conversation(prompt):
        return transcript_to_messages(prompt)
    return prompt


def as_completions(prompts: list[Prompt], texts: list[str]) -> list[Prompt]:
    """Completions in TRL's form, as reward functions receive them: one assistant message for a conversational
    prompt, the text itself for a plain one."""
    return [
        [{"role": "assistant", "content": text}] if is_conversation(prompt) else text
        for prompt, text in zip(prompts, texts)
    ]


def completion_texts(tokenizer, prompt_ids: torch.Tensor, completion_ids: torch.Tensor) -> list[str]:
    """Text of the new tokens of each row, without special tokens.

    Decoded after the prompt and then cut off it, so a leading space survives (SentencePiece tokenizers drop it
    when a completion is decoded alone). prompt_ids [B, P] (padding is a special token and vanishes), completion_ids
    [B, C] with padding after the end.
    """
    prompt_texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
    whole_texts = tokenizer.batch_decode(torch.cat([prompt_ids, completion_ids], dim=1), skip_special_tokens=True)
    alone = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return [
        whole[len(prompt) :] if whole.startswith(prompt) else fallback
        for prompt, whole, fallback in zip(prompt_texts, whole_texts, alone)
    ]


def user_turn_marker(tokenizer) -> str | None:
    """The text a chat template puts before a user message (for instance ``<|user|>``), found by rendering a
    conversation with and without a trailing user turn. None when the tokenizer has no template."""
    if not tokenizer.chat_template:
        return None
    first = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    second = [*first, {"role": "user", "content": _SENTINEL}]
    without_turn = tokenizer.apply_chat_template(first, tokenize=False)
    with_turn = tokenizer.apply_chat_template(second, tokenize=False)
    if not with_turn.startswith(without_turn) or _SENTINEL not in with_turn:
        return None
    marker = with_turn[len(without_turn) : with_turn.index(_SENTINEL)].strip()
    return marker or None


def completion_mask(
    completion_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int | None
) -> torch.LongTensor:
    """completion_ids: [B, T] generated tokens, right-padded. Returns a LongTensor [B, T]: 1 up to and including the
    first end-of-text token of each row, 0 after it. A row without one stopped at the length limit, so all of it is
    real. ``eos_token_id`` is one id or several (chat models end a turn with their own token, see
    :func:`end_token_ids`).

    The first EOS ends a row whatever follows, so the mask does not depend on ``pad_token_id``: this also covers
    tokenizers whose pad token equals their EOS. A pad id sampled before the first EOS is a real (generated) token.
    ``pad_token_id`` is taken so that callers state both ids explicitly.
    """
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be [batch, length], got shape {tuple(completion_ids.shape)}.")
    is_eos = torch.isin(completion_ids, _ids_tensor(eos_token_id, completion_ids.device))  # [B, T]
    # Number of EOS tokens strictly before each position: 0 means "still inside the answer or on its first EOS".
    eos_seen_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # [B, T]
    return (eos_seen_before == 0).long()  # [B, T]


def has_eos(completion_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.BoolTensor:
    """completion_ids: [B, T]. Returns [B] bool: whether the row produced an end-of-text token (False: cut at the
    length limit)."""
    return torch.isin(completion_ids, _ids_tensor(eos_token_id, completion_ids.device)).any(dim=1)  # [B]


def _ids_tensor(token_ids: int | Sequence[int], device) -> torch.Tensor:
    return torch.tensor([token_ids] if isinstance(token_ids, int) else list(token_ids), device=device)
