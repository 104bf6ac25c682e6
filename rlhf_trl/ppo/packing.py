"""Padding-free scoring and training: pack prompt+answer sequences into rows without pad tokens.

A rollout is stored left-padded (prompts) and right-padded (answers): every forward over it pays for pad tokens,
and short answers next to long ones waste most of it. Packing concatenates the real tokens of several samples
into one row of ``T`` tokens; position ids restart at 0 for each sample and a block-diagonal causal mask keeps the
samples from attending to each other, so per-token log-probs and values equal the padded computation.

Why a 4D mask and not position ids alone: Transformers 5.24 infers packed sequences from restarting position ids
only where the model passes them to its mask builder and only without a cache (Llama, Qwen2 with
``use_cache=False``); OPT does not, and attends across samples. An additive float mask [1, 1, T, T] is honoured by
the eager and SDPA attention of OPT, Llama and Qwen2 (a boolean one is not by eager attention). FlashAttention
rejects 4D masks, so the PPO script refuses ``max_tokens_per_micro_batch`` with it.

Rows are formed by a token budget over length-sorted samples (``token_budget_micro_batches``) instead of a fixed
number of samples, so each forward does about the same work, and the budget bounds the T x T mask and attention.
Scoring packs the whole rollout into such rows. The update keeps its micro-batches of ``micro_batch_size``
samples (their loss, gradient accumulation and optimizer steps are the padded update's) and packs each of them
into rows under the same budget (``packed_forward``), so packing changes the work and not the update. The
language-model head runs on the answer states only (Transformers' ``logits_to_keep`` as a tensor of positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_trl.ppo.losses import entropy_from_logits, logprobs_from_logits


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


def pad_share(attention_masks: list[torch.Tensor]) -> float:
    """Share of the positions of padded forwards that are pad tokens (mask 0): the work packing removes."""
    total = sum(mask.numel() for mask in attention_masks)
    real = sum(int(mask.sum()) for mask in attention_masks)
    return 1.0 - real / total if total else 0.0


def scatter_answers(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Values of the real answer slots in order [N] -> the padded layout [n, width] (0 past each answer's end);
    differentiable in ``values``."""
    return torch.zeros(valid.shape, dtype=values.dtype, device=values.device).masked_scatter(valid, values)


def packed_forward(
    forwards, rollout, indices: list[int], max_tokens: int, mask_dtype, temperature, entropy=False, entropy_grad=False
):
    """Forwards over samples ``indices`` of a rollout, packed without pad tokens into rows of at most ``max_tokens``
    tokens (a sample longer than the budget gets a row of its own); each row is packed once and run through every
    one of ``forwards``.

    A forward ``f(input_ids, attention_mask, position_ids, logits_to_keep)`` returns (logits [1, N, V] of the ``N``
    kept positions or None, values [1, T] or None); ``logits_to_keep`` is the 1D tensor of the positions whose
    logits are read (the state before each answer token), so the language-model head never runs on a prompt token.
    Returns, for each forward, (log-probs, entropies, values), each [len(indices), C] in the rollout's padded
    layout, 0 past each answer's end, or None where the forward gave nothing (entropies: unless ``entropy``),
    differentiable when the forward is (entropies only with ``entropy_grad``).
    """
    width = rollout.completion_ids.shape[1]
    lengths = (rollout.prompt_mask[indices].sum(1) + rollout.completion_mask[indices].sum(1)).tolist()
    rows = token_budget_micro_batches(lengths, max_tokens)
    parts: list[dict[str, list[torch.Tensor]]] = [{"logprobs": [], "entropy": [], "values": []} for _ in forwards]
    for row in rows:
        samples = [indices[position] for position in row]
        packed = pack_rollout(
            rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask, samples,
            mask_dtype,
        )  # fmt: skip
        state, valid = packed.completion_positions(width)
        keep = state[valid]
        answers = rollout.completion_ids[samples][valid][:, None]  # [N, 1]
        for forward, part in zip(forwards, parts):
            logits, values = forward(packed.input_ids, packed.attention_mask, packed.position_ids, keep)
            if logits is not None:
                answer_logits = logits[0][:, None]  # [N, 1, V]: chunked row by row in the log-softmax
                part["logprobs"].append(
                    scatter_answers(logprobs_from_logits(answer_logits, answers, temperature)[:, 0], valid)
                )
                if entropy:
                    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                        part["entropy"].append(
                            scatter_answers(entropy_from_logits(answer_logits, temperature)[:, 0], valid)
                        )
            if values is not None:
                part["values"].append(scatter_answers(values[0, keep], valid))
            logits = values = answer_logits = None  # freed before the next forward's
    # Rows hold the samples longest first: put them back in the order of ``indices``.
    order = torch.tensor([position for row in rows for position in row], device=rollout.completion_ids.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    names = ("logprobs", "entropy", "values")
    return [tuple(torch.cat(part[name])[inverse] if part[name] else None for name in names) for part in parts]


@torch.no_grad()
def score_packed(model, reference_logits, rollout, temperature: float, max_tokens: int, mask_dtype: torch.dtype):
    """The scoring forwards of a rollout without pad tokens: (actor log-probs [B, C] or None, reference log-probs
    [B, C], values [B, C] or None without a critic) in the rollout's padded layout, 0 past each answer's end.

    ``model``: the PolicyAndValueWrapper as prepared; the actor forward is skipped when ``rollout.logprobs`` is
    already set (log-probs from generation). ``reference_logits``: ``f(ids, mask, positions, logits_to_keep) ->
    logits``. Rows hold at most ``max_tokens`` tokens.
    """
    indices = list(range(len(rollout)))
    with_logits = rollout.logprobs is None

    def policy_and_value(ids, mask, positions, keep):
        return model(ids, mask, positions, with_logits=with_logits, logits_to_keep=keep)

    def reference(ids, mask, positions, keep):
        return reference_logits(ids, mask, positions, keep), None

    (logprobs, _, values), (ref_logprobs, _, _) = packed_forward(
        [policy_and_value, reference], rollout, indices, max_tokens, mask_dtype, temperature
    )
    return (logprobs.float() if logprobs is not None else None), ref_logprobs.float(), values
