"""Padding-free scoring and training: pack prompt+answer sequences into one row without pad tokens.

A rollout is stored left-padded (prompts) and right-padded (answers): every forward over it pays for pad tokens,
and short answers next to long ones waste most of it. Packing concatenates the real tokens of several samples
into one row of ``T`` tokens; position ids restart at 0 for each sample and a block-diagonal causal mask keeps the
samples from attending to each other, so per-token log-probs and values equal the padded computation.

Why a 4D mask and not position ids alone: Transformers 5.24 infers packed sequences from restarting position ids
only where the model passes them to its mask builder and only without a cache (Llama, Qwen2 with
``use_cache=False``); OPT does not, and attends across samples. An additive float mask [1, 1, T, T] is honoured by
the eager and SDPA attention of OPT, Llama and Qwen2 (a boolean one is not by eager attention). FlashAttention
rejects 4D masks; on GPU with ``attn_implementation="flash_attention_2"`` pass ``position_ids`` only
(``PackedBatch.model_inputs(with_mask=False)``), which its variable-length kernel reads as sample boundaries.

Micro-batches are formed by a token budget over length-sorted samples (``token_budget_micro_batches``) instead of
a fixed number of samples, so each forward does about the same work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_trl.ppo.losses import logprobs_from_logits


def token_budget_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into micro-batches of at most ``max_tokens`` tokens in all.

    Samples are taken longest first (so a micro-batch holds samples of similar length and the last ones fill the
    gaps); each micro-batch is filled in that order until the next sample would exceed the budget. A sample longer
    than the budget gets a micro-batch of its own rather than being dropped. Every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens_per_micro_batch must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order:
        if current and used + lengths[index] > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += lengths[index]
    if current:
        batches.append(current)
    return batches


def packed_attention_mask(lengths: list[int], dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive causal mask [1, 1, T, T] for sequences of ``lengths`` laid end to end: 0 where a token may attend
    (same sequence, not later), the dtype's minimum elsewhere."""
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    total = segment.numel()
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    allowed = (segment[:, None] == segment[None, :]) & causal
    mask = torch.zeros(total, total, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@dataclass
class PackedBatch:
    """Samples packed into one row. ``starts[j]``: where sample j begins; its prompt has ``prompt_lengths[j]`` real
    tokens followed by ``completion_lengths[j]`` answer tokens."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for each sample
    attention_mask: torch.Tensor  # [1, 1, T, T] additive
    starts: torch.Tensor  # [n]
    prompt_lengths: torch.Tensor  # [n]
    completion_lengths: torch.Tensor  # [n]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def model_inputs(self, with_mask: bool = True) -> dict:
        """Keyword arguments of a Transformers forward (no cache: a packed row is scored, not continued)."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if with_mask:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def completion_positions(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(state index [n, width], valid [n, width]): the packed position of the state before each answer token
        (the last prompt token, then each answer token but the last), and which of the ``width`` slots are real."""
        offsets = torch.arange(width, device=self.starts.device)
        state = (self.starts + self.prompt_lengths - 1)[:, None] + offsets[None, :]
        valid = offsets[None, :] < self.completion_lengths[:, None]
        return state.clamp(max=self.num_tokens - 1), valid


def pack_rollout(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    indices: list[int],
    mask_dtype: torch.dtype = torch.float32,
) -> PackedBatch:
    """Pack samples ``indices`` of a padded rollout (prompts [B, P] left-padded, answers [B, C] right-padded, masks
    1 on real tokens) into one row holding only their real tokens."""
    pieces, positions, prompt_lengths, completion_lengths = [], [], [], []
    for index in indices:
        prompt = prompt_ids[index][prompt_mask[index].bool()]
        completion = completion_ids[index][completion_mask[index].bool()]
        pieces += [prompt, completion]
        positions.append(torch.arange(len(prompt) + len(completion), device=prompt_ids.device))
        prompt_lengths.append(len(prompt))
        completion_lengths.append(len(completion))
    lengths = [p + c for p, c in zip(prompt_lengths, completion_lengths)]
    device = prompt_ids.device
    lengths_tensor = torch.tensor(lengths, device=device)
    return PackedBatch(
        input_ids=torch.cat(pieces)[None],
        position_ids=torch.cat(positions)[None],
        attention_mask=packed_attention_mask(lengths, mask_dtype, device),
        starts=torch.cumsum(lengths_tensor, 0) - lengths_tensor,
        prompt_lengths=torch.tensor(prompt_lengths, device=device),
        completion_lengths=torch.tensor(completion_lengths, device=device),
    )


def packed_completion_logprobs(
    logits: torch.Tensor, packed: PackedBatch, completion_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """logits of a packed row [1, T, V] -> log-probs of each sample's answer tokens [n, C] in the padded layout
    (``completion_ids`` [n, C] are the samples' padded answers; slots past an answer's end are 0)."""
    state, valid = packed.completion_positions(completion_ids.shape[1])
    rows = logits[0, state[valid]]  # [N, V]: only the real answer positions
    values = logprobs_from_logits(rows[None], completion_ids[valid][None], temperature)[0]
    output = torch.zeros(completion_ids.shape, dtype=values.dtype, device=values.device)
    output[valid] = values
    return output


def packed_completion_values(values: torch.Tensor, packed: PackedBatch, width: int) -> torch.Tensor:
    """values of a packed row [1, T] -> value of the state before each answer token [n, width] (0 past the end)."""
    state, valid = packed.completion_positions(width)
    return torch.where(valid, values[0, state], torch.zeros((), dtype=values.dtype, device=values.device))


def pad_share(attention_masks: list[torch.Tensor]) -> float:
    """Share of the positions of padded forwards that are pad tokens (mask 0): the work packing removes."""
    total = sum(mask.numel() for mask in attention_masks)
    real = sum(int(mask.sum()) for mask in attention_masks)
    return 1.0 - real / total if total else 0.0


def score_packed(model, reference_logits, rollout, temperature: float, max_tokens: int, mask_dtype: torch.dtype):
    """The scoring forwards of a rollout without pad tokens: (actor log-probs [B, C] or None, reference log-probs
    [B, C], values [B, C] or None without a critic) in the rollout's padded layout, 0 past each answer's end.

    ``model``: the PolicyAndValueWrapper as prepared (called ``model(ids, mask, positions, with_logits=...)``);
    the actor forward is skipped when ``rollout.logprobs`` is already set (log-probs from generation).
    ``reference_logits``: ``f(ids, mask, positions) -> logits``. Micro-batches hold at most ``max_tokens`` tokens.
    """
    lengths = (rollout.prompt_mask.sum(1) + rollout.completion_mask.sum(1)).tolist()
    width = rollout.completion_ids.shape[1]
    with_logits = rollout.logprobs is None
    logprobs = torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device)
    ref_logprobs, values = torch.zeros_like(logprobs), torch.zeros_like(logprobs)
    for indices in token_budget_micro_batches(lengths, max_tokens):
        packed = pack_rollout(
            rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask, indices,
            mask_dtype,
        )  # fmt: skip
        index = torch.tensor(indices, device=logprobs.device)
        answers = rollout.completion_ids[index]
        logits, value = model(packed.input_ids, packed.attention_mask, packed.position_ids, with_logits=with_logits)
        if logits is not None:
            logprobs[index] = packed_completion_logprobs(logits, packed, answers, temperature).float()
        if value is not None:
            values[index] = packed_completion_values(value, packed, width).float()
        else:
            values = None
        del logits
        ref = reference_logits(packed.input_ids, packed.attention_mask, packed.position_ids)
        ref_logprobs[index] = packed_completion_logprobs(ref, packed, answers, temperature).float()
    return (logprobs if with_logits else None), ref_logprobs, values
