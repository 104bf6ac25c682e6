"""The project's generation library: how a prompt becomes token ids and new tokens become answer text.

Every command renders a prompt the same way: a conversation (TRL's list of messages) through the chat template,
tokenized without adding special tokens (the template already wrote its BOS); a plain text prompt with the
tokenizer's special tokens, unless it already starts with the BOS token. An answer ends at its first end-of-text
token (:func:`completion_mask`); its text is decoded after the prompt so a leading space survives
(:func:`completion_texts`). :class:`Generator` generates answers in batches with a Hugging Face model; evaluation,
gold scoring, the e2e sample table and the chat UI use it, and PPO's rollout backends use the same cut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SENTINEL = "RLHF_TRL_SENTINEL_MESSAGE"
# DS-Chat's transcript speakers: ``Human: <text> Assistant: <answer> Human: ...``.
TRANSCRIPT_USER = "Human:"
TRANSCRIPT_ASSISTANT = "Assistant:"


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


def pad_after_end(
    completion_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int
) -> torch.LongTensor:
    """completion_ids: [B, T] new tokens. Returns [B, W]: each row up to and including its first end-of-text token
    (:func:`completion_mask`), padded after it, the width cut to the longest kept row, which is what Hugging Face
    ``generate`` returns. No end ids: the tokens come back unchanged."""
    if completion_ids.numel() == 0:
        return completion_ids
    mask = completion_mask(completion_ids, eos_token_id, pad_token_id)  # [B, T]
    padded = completion_ids.masked_fill(mask == 0, pad_token_id)  # [B, T]
    return padded[:, : int(mask.sum(dim=1).max())]  # [B, W]


def _ids_tensor(token_ids: int | Sequence[int], device) -> torch.Tensor:
    ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
    return torch.tensor(ids, dtype=torch.long, device=device)


class Generator:
    """Answers of one causal LM to prompts (plain texts or conversations), generated in batches.

    ``generate(prompts) -> GeneratedBatch`` (token ids, masks and texts of one batch) and ``complete(prompts) ->
    texts`` (any number of prompts, in batches of ``settings.batch_size``). An answer ends at its first end-of-text
    token (:func:`end_token_ids`) and its text is cut where the model starts writing the next user turn by itself
    (``Human:`` or the chat template's user marker). Prompts longer than the model allows keep their end.
    """

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batched generation needs one")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        marker = user_turn_marker(tokenizer)
        self.stop_markers = [TRANSCRIPT_USER] + ([marker] if marker and marker != TRANSCRIPT_USER else [])
        # A marker made of special tokens vanishes when decoding without them, so it is also looked for in the ids.
        self.stop_token_sequences = [tokenizer.encode(marker, add_special_tokens=False)] if marker else []
        self.end_token_ids = end_token_ids(model, tokenizer)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, settings: GenerationSettings | None = None, trust_remote_code: bool = False
    ) -> Generator:
        """A generator over the checkpoint in ``path`` (a full model or a LoRA adapter folder)."""
        from rlhf_trl.models import load_causal_lm

        return cls(*load_causal_lm(path, trust_remote_code), settings)

    def prompt_limit(self) -> int | None:
        """Most prompt tokens: the model's positions minus the room kept for the answer (at most half of them,
        so a large ``max_new_tokens`` on a small model still leaves space for the prompt). None: no limit known."""
        if self.max_positions is None:
            return None
        return self.max_positions - min(self.settings.max_new_tokens, self.max_positions // 2)

    def fits(self, prompt: Prompt) -> bool:
        """Whether ``prompt`` is read whole (not cut from the left, see :meth:`prompt_limit`)."""
        limit = self.prompt_limit()
        return limit is None or len(encode_prompts(self.tokenizer, [prompt])[0]) <= limit

    def complete(self, prompts: list[Prompt]) -> list[str]:
        """Answers (clean text, see :meth:`generate`) for prompts, generated in batches of ``settings.batch_size``."""
        answers = []
        for start in range(0, len(prompts), self.settings.batch_size):
            answers.extend(self.generate(prompts[start : start + self.settings.batch_size]).texts)
        return answers

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> GeneratedBatch:
        """Generate for one batch of prompts; prompts longer than the model allows keep their end.

        ``texts`` are the answers without special tokens, cut at the next user turn; the leading space a model
        writes after a plain prompt is kept (a reward model reads prompt and answer joined as they are)."""
        limit = self.prompt_limit()
        encoded = encode_prompts(self.tokenizer, prompts)
        sequences = [ids[-limit:] if limit is not None else ids for ids in encoded]
        truncated = sum(len(ids) != len(kept) for ids, kept in zip(encoded, sequences))
        if truncated:
            logger.warning("%d prompt(s) longer than %d tokens were cut from the left", truncated, limit)
        batch = self.tokenizer.pad({"input_ids": sequences}, padding=True, padding_side="left", return_tensors="pt")
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        sampling = (
            {"do_sample": True, "temperature": self.settings.temperature}
            if self.settings.do_sample
            else {"do_sample": False}
        )
        max_new_tokens = self.settings.max_new_tokens
        if self.max_positions is not None and prompt_ids.shape[1] + max_new_tokens > self.max_positions:
            max_new_tokens = self.max_positions - prompt_ids.shape[1]
            logger.info(
                "answers limited to %d new tokens by the model's %d positions", max_new_tokens, self.max_positions
            )
        output = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.end_token_ids,
            **sampling,
        )
        completion_ids = output[:, prompt_ids.shape[1] :]
        answer_mask = completion_mask(completion_ids, self.end_token_ids, self.tokenizer.pad_token_id)
        # Everything after the first end-of-text token is padding that generate() appended.
        completion_ids = completion_ids.masked_fill(answer_mask == 0, self.tokenizer.pad_token_id)
        texts = [
            self._answer_text(prompt, ids[mask.bool()])
            for prompt, ids, mask in zip(prompt_ids, completion_ids, answer_mask)
        ]
        return GeneratedBatch(prompt_ids, prompt_mask, completion_ids, answer_mask, texts)

    def _answer_text(self, prompt_ids: torch.LongTensor, token_ids: torch.LongTensor) -> str:
        """Decode the new tokens of one answer without special tokens and cut it at the next user turn (the text
        before the cut loses its trailing spaces)."""
        ids = token_ids.tolist()
        for sequence in self.stop_token_sequences:
            for start in range(len(ids) - len(sequence) + 1):
                if sequence and ids[start : start + len(sequence)] == sequence:
                    ids = ids[:start]
                    break
        new_tokens = torch.tensor([ids], dtype=torch.long, device=prompt_ids.device).reshape(1, -1)
        text = completion_texts(self.tokenizer, prompt_ids.unsqueeze(0), new_tokens)[0]
        cut = len(text)
        for marker in self.stop_markers:
            position = text.find(marker)
            if position != -1:
                cut = min(cut, position)
        return text[:cut].rstrip() if cut < len(text) else text
