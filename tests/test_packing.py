"""Padding-free packing: token-budget micro-batches, the block-diagonal mask, and packed forwards equal to padded ones
for the tiny OPT and the tiny Llama- and Qwen2-style chat models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_trl.ppo.modeling import (
    PolicyAndValueWrapper,
    completion_logprobs,
    completion_values,
    position_ids_from_mask,
)
from rlhf_trl.ppo.packing import (
    pack_rollout,
    packed_attention_mask,
    packed_completion_logprobs,
    packed_completion_values,
    pad_share,
    token_budget_micro_batches,
)


@pytest.mark.parametrize("budget", [1, 7, 20, 64, 1000])
def test_token_budget_micro_batches_cover_every_sample_once_within_budget(budget):
    lengths = [5, 17, 3, 12, 12, 1, 30, 8, 8, 2]
    batches = token_budget_micro_batches(lengths, budget)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        tokens = sum(lengths[index] for index in batch)
        assert tokens <= budget or len(batch) == 1  # only a sample longer than the budget stands alone over it
    # longest first: the lengths along the concatenated order never increase
    ordered = [lengths[index] for index in flat]
    assert ordered == sorted(ordered, reverse=True)
    # greedy fill: a batch is closed only when the next sample would not fit
    for batch, following in zip(batches, batches[1:]):
        assert sum(lengths[index] for index in batch) + lengths[following[0]] > budget


def test_token_budget_rejects_a_budget_below_one():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        token_budget_micro_batches([3], 0)


def test_packed_attention_mask_matches_a_naive_loop():
    lengths = [3, 1, 4]
    mask = packed_attention_mask(lengths, torch.float32)[0, 0]
    owner = [sample for sample, length in enumerate(lengths) for _ in range(length)]
    for query in range(len(owner)):
        for key in range(len(owner)):
            allowed = owner[query] == owner[key] and key <= query
            assert (mask[query, key] == 0) == allowed


def _random_rollout(vocab_size: int, pad: int, seed: int = 0):
    """Left-padded prompts and right-padded answers of varied lengths (one answer of a single token)."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, completion_lengths = [4, 9, 2, 7], [6, 1, 10, 3]
    prompt_width, completion_width = max(prompt_lengths), max(completion_lengths)
    batch = len(prompt_lengths)
    prompt_ids = torch.full((batch, prompt_width), pad)
    prompt_mask = torch.zeros(batch, prompt_width, dtype=torch.long)
    completion_ids = torch.full((batch, completion_width), pad)
    completion_mask = torch.zeros(batch, completion_width, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        prompt_ids[row, prompt_width - p :] = torch.randint(3, vocab_size, (p,), generator=generator)
        prompt_mask[row, prompt_width - p :] = 1
        completion_ids[row, :c] = torch.randint(3, vocab_size, (c,), generator=generator)
        completion_mask[row, :c] = 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _assert_packed_equals_padded(actor, critic, pad: int, temperature: float = 0.7):
    wrapper = PolicyAndValueWrapper(actor, critic).eval()
    vocab = min(actor.config.vocab_size, critic.config.vocab_size)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _random_rollout(vocab, pad)
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    prompt_width = prompt_ids.shape[1]
    with torch.no_grad():
        logits, values = wrapper(input_ids, attention_mask, position_ids_from_mask(attention_mask))
        padded_logprobs = completion_logprobs(logits, completion_ids, temperature)
        padded_values = completion_values(values, prompt_width)
        reference_logits = actor(input_ids=input_ids, attention_mask=attention_mask).logits
        padded_reference = completion_logprobs(reference_logits, completion_ids, temperature)

        lengths = (prompt_mask.sum(1) + completion_mask.sum(1)).tolist()
        for indices in token_budget_micro_batches(lengths, max_tokens=20):  # several micro-batches of varied size
            packed = pack_rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, indices)
            assert packed.num_tokens == sum(lengths[index] for index in indices)  # no pad token left
            inputs = packed.model_inputs()
            packed_logits, packed_value = wrapper(
                inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
            )
            answers = completion_ids[indices]
            real = completion_mask[indices].bool()
            logprobs = packed_completion_logprobs(packed_logits, packed, answers, temperature)
            values = packed_completion_values(packed_value, packed, answers.shape[1])
            torch.testing.assert_close(logprobs[real], padded_logprobs[indices][real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values[real], padded_values[indices][real], atol=1e-5, rtol=1e-5)
            assert (logprobs[~real] == 0).all() and (values[~real] == 0).all()
            reference = packed_completion_logprobs(actor(**inputs).logits, packed, answers, temperature)
            torch.testing.assert_close(reference[real], padded_reference[indices][real], atol=1e-5, rtol=1e-5)


def test_packed_forward_equals_padded_tiny_opt(tiny_base_dir, tiny_reward_dir, tiny_tokenizer):
    actor = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, num_labels=1)
    _assert_packed_equals_padded(actor, critic, tiny_tokenizer.pad_token_id)


@pytest.mark.parametrize("fixture", ["tiny_chat_dir", "tiny_qwen2_chat_dir"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_padded_chat_models(request, fixture, attention):
    from transformers import AutoTokenizer

    path = request.getfixturevalue(fixture)
    actor = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention)
    critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, attn_implementation=attention)
    _assert_packed_equals_padded(actor, critic, AutoTokenizer.from_pretrained(path).pad_token_id)


def test_pad_share_counts_masked_positions():
    masks = [torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]])]
    assert pad_share(masks) == pytest.approx(3 / 12)
    assert pad_share([]) == 0.0


@pytest.mark.parametrize(
    ("recompute", "models"),
    [
        (True, ("tiny_base_dir", "tiny_reward_dir")),
        (False, ("tiny_base_dir", "tiny_reward_dir")),
        (True, ("tiny_chat_dir", "tiny_chat_reward_dir")),
    ],
)
def test_trainer_scores_packed_like_padded(request, tmp_path, recompute, models):
    import ppo_helpers

    actor_dir, reward_dir = (request.getfixturevalue(name) for name in models)
    trainer = ppo_helpers.build(
        tmp_path, actor_dir, reward_dir, max_steps=1, num_mini_batches=1, recompute_rollout_logprobs=recompute
    )
    rollout = trainer.generate(trainer.next_batch())
    from_generation = rollout.logprobs
    trainer.score(rollout)
    padded = (rollout.logprobs.clone(), rollout.ref_logprobs.clone(), rollout.values.clone())
    rollout.logprobs = from_generation
    trainer.args.max_tokens_per_micro_batch = 40  # several packed micro-batches
    trainer.score(rollout)
    real = rollout.completion_mask.bool()
    for packed_values, padded_values in zip((rollout.logprobs, rollout.ref_logprobs, rollout.values), padded):
        torch.testing.assert_close(packed_values[real], padded_values[real], atol=1e-5, rtol=1e-5)
    trainer.compute_advantages(rollout)
    assert trainer.update(rollout)["policy/ratio_max"] < 1.01
