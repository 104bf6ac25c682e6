"""Padding-free packing: token-budget micro-batches, the block-diagonal mask, and packed forwards equal to padded ones
for the tiny OPT and the tiny Llama- and Qwen2-style chat models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ppo_helpers import UPDATE_SETUPS
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_trl.ppo.losses import entropy_from_logits
from rlhf_trl.ppo.modeling import (
    PolicyAndValueWrapper,
    completion_logits,
    completion_logprobs,
    completion_values,
    position_ids_from_mask,
)
from rlhf_trl.ppo.packing import (
    pack_rollout,
    packed_attention_mask,
    packed_forward,
    pad_share,
    token_budget_micro_batches,
)

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


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


def test_pack_rollout_holds_only_real_tokens_with_restarting_positions():
    prompt_ids, prompt_mask, completion_ids, completion_mask = _random_rollout(50, pad=1)
    packed = pack_rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, [3, 1])
    expected = []
    for index in [3, 1]:
        expected += prompt_ids[index][prompt_mask[index].bool()].tolist()
        expected += completion_ids[index][completion_mask[index].bool()].tolist()
    assert packed.input_ids[0].tolist() == expected  # no pad token left
    assert packed.position_ids[0].tolist() == list(range(7 + 3)) + list(range(9 + 1))
    assert packed.starts.tolist() == [0, 10]


def _assert_packed_equals_padded(actor, critic, pad: int, temperature: float = 0.7, device="cpu", tolerance=None):
    """Log-probs, entropies and values of packed rows (several, under a 20-token budget) equal the padded forward's
    on every real answer token, are 0 past each answer's end, and come back in the order of the indices asked for;
    so do the gradients of a loss over them."""
    tolerance = tolerance or TOLERANCE
    wrapper = PolicyAndValueWrapper(actor, critic).to(device).eval()
    vocab = min(actor.config.vocab_size, critic.config.vocab_size)
    prompt_ids, prompt_mask, completion_ids, completion_mask = (
        tensor.to(device) for tensor in _random_rollout(vocab, pad)
    )
    rollout = SimpleNamespace(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask
    )
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    real = completion_mask.bool()

    logits, values = wrapper(input_ids, attention_mask, position_ids_from_mask(attention_mask))
    padded = (
        completion_logprobs(logits, completion_ids, temperature),
        entropy_from_logits(completion_logits(logits, completion_ids.shape[1]), temperature),
        completion_values(values, prompt_ids.shape[1]),
    )
    padded_loss = sum(tensor[real].sum() for tensor in padded)
    padded_gradients = torch.autograd.grad(padded_loss, list(wrapper.parameters()))

    def forward(ids, mask, positions, keep):
        assert keep.dim() == 1  # the head runs on the answer states only
        return wrapper(ids, mask, positions, logits_to_keep=keep)

    indices = [2, 0, 3, 1]  # not in row order: the outputs must follow it
    lengths = (prompt_mask.sum(1) + completion_mask.sum(1)).tolist()
    assert len(token_budget_micro_batches([lengths[index] for index in indices], 20)) > 1  # several packed rows
    (packed,) = packed_forward(
        [forward], rollout, indices, 20, torch.float32, temperature, entropy=True, entropy_grad=True
    )
    for packed_values, padded_values in zip(packed, padded):
        torch.testing.assert_close(packed_values[real[indices]], padded_values[indices][real[indices]], **tolerance)
        assert (packed_values[~real[indices]] == 0).all()
    packed_loss = sum(tensor[real[indices]].sum() for tensor in packed)
    packed_gradients = torch.autograd.grad(packed_loss, list(wrapper.parameters()))
    for packed_gradient, padded_gradient in zip(packed_gradients, padded_gradients):
        torch.testing.assert_close(packed_gradient, padded_gradient, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_padded_on_cuda(tiny_chat_dir, attention):
    """The same check on CUDA kernels (fp32; SDPA takes the packed rows' 4D mask on its CUDA paths)."""
    from transformers import AutoTokenizer

    actor = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, attn_implementation=attention)
    critic = AutoModelForSequenceClassification.from_pretrained(
        tiny_chat_dir, num_labels=1, attn_implementation=attention
    )
    pad = AutoTokenizer.from_pretrained(tiny_chat_dir).pad_token_id
    _assert_packed_equals_padded(actor, critic, pad, device="cuda", tolerance={"atol": 1e-4, "rtol": 1e-4})


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


@pytest.mark.parametrize(("models", "overrides"), UPDATE_SETUPS)
def test_packed_update_has_the_padded_loss_and_gradient(request, tmp_path, models, overrides):
    """A micro-batch of the update packed without pad tokens gives the loss, statistics and gradient of the same
    samples padded: packing changes the work, not the update."""
    import ppo_helpers

    actor_dir, reward_dir = (request.getfixturevalue(name) for name in models)
    trainer = ppo_helpers.build(tmp_path, actor_dir, reward_dir, max_steps=1, num_mini_batches=1, **overrides)
    rollout = trainer.generate(trainer.next_batch())
    trainer.score(rollout)
    trainer.compute_advantages(rollout)
    index = torch.tensor([5, 0, 3, 1, 6])
    lengths = (rollout.prompt_mask.sum(1) + rollout.completion_mask.sum(1))[index]
    assert (rollout.completion_mask.sum(1) < rollout.completion_ids.shape[1]).any()  # some padding to remove
    results = []
    for budget in (None, int(lengths.max()) + 1):  # padded, then packed into several rows
        trainer.args.max_tokens_per_micro_batch = budget
        trainer.model.zero_grad()
        stats, loss, problem, _ = trainer.objective(trainer.model, trainer.policy, rollout.select(index))
        loss.backward()
        assert problem is None
        gradients = [parameter.grad.clone() for parameter in trainer.model.parameters() if parameter.grad is not None]
        results.append((stats, loss.detach(), gradients))
    (padded_stats, padded_loss, padded_gradients), (packed_stats, packed_loss, packed_gradients) = results
    torch.testing.assert_close(packed_loss, padded_loss, **TOLERANCE)
    assert packed_stats.keys() == padded_stats.keys()
    for name, value in padded_stats.items():
        assert packed_stats[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert len(packed_gradients) == len(padded_gradients) > 0
    for packed_gradient, padded_gradient in zip(packed_gradients, padded_gradients):
        torch.testing.assert_close(packed_gradient, padded_gradient, atol=1e-5, rtol=1e-4)


def test_ppo_command_trains_a_chat_model_packed_as_it_does_padded(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    """`rlhf-trl ppo` on the tiny Llama-style chat model and conversational prompt files, with and without
    max_tokens_per_micro_batch: both train (the saved actor moved away from the start), and the packed run ends
    with the padded run's weights and statistics (same samples, same updates, only floating-point order differs)."""
    import json

    from safetensors.torch import load_file

    from rlhf_trl.scripts.ppo import cli as ppo_cli
    from rlhf_trl.tiny.chat_model import conversational_records

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in conversational_records("ppo", 32)))
    common = [
        "--model_name_or_path", str(tiny_chat_dir), "--reward_model_path", str(tiny_chat_reward_dir),
        "--datasets", str(data), "--max_steps", "3", "--per_device_train_batch_size", "8", "--num_mini_batches", "2",
        "--learning_rate", "1e-3", "--max_new_tokens", "8", "--logging_steps", "1", "--save_steps", "0",
        "--report_to", "none", "--eval_strategy", "no", "--use_cpu", "true", "--seed", "3",
    ]  # fmt: skip
    runs = {}
    for name, extra in (("padded", []), ("packed", ["--max_tokens_per_micro_batch", "64"])):
        output = tmp_path / name
        assert ppo_cli([*common, "--output_dir", str(output), *extra]) == 0
        metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (load_file(output / "model.safetensors"), metrics)
    start = load_file(tiny_chat_dir / "model.safetensors")
    (padded, padded_metrics), (packed, packed_metrics) = runs["padded"], runs["packed"]
    assert max((padded[key] - start[key]).abs().max().item() for key in start) > 1e-3, "the padded run did not train"
    for key, value in padded.items():
        torch.testing.assert_close(packed[key], value, atol=1e-4, rtol=1e-3)
    assert [m["response/length"] for m in packed_metrics] == [m["response/length"] for m in padded_metrics]
    for packed_step, padded_step in zip(packed_metrics, padded_metrics):
        assert packed_step["policy/loss"] == pytest.approx(padded_step["policy/loss"], abs=1e-4)
        assert packed_step["value/loss"] == pytest.approx(padded_step["value/loss"], rel=1e-3, abs=1e-5)


def test_lora_trainer_scores_and_updates_packed_like_padded(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    """LoRA on the tiny Llama-style chat actor: the reference is the base with adapters off, so the packed reference
    forward goes through PEFT with a tensor ``logits_to_keep``; packed scoring equals padded, and a packed update
    micro-batch gives the padded loss."""
    import ppo_helpers
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = ppo_helpers.build(
        tmp_path, tiny_chat_dir, tiny_chat_reward_dir, max_steps=1, num_mini_batches=1, peft_config=lora,
        recompute_rollout_logprobs=True,
    )  # fmt: skip
    assert trainer.ref_model is None, "LoRA: the reference is the actor with adapters disabled"
    rollout = trainer.generate(trainer.next_batch())
    trainer.score(rollout)
    padded = (rollout.logprobs.clone(), rollout.ref_logprobs.clone(), rollout.values.clone())
    trainer.args.max_tokens_per_micro_batch = 48
    trainer.score(rollout)
    real = rollout.completion_mask.bool()
    for packed_values, padded_values in zip((rollout.logprobs, rollout.ref_logprobs, rollout.values), padded):
        torch.testing.assert_close(packed_values[real], padded_values[real], **TOLERANCE)
    trainer.compute_advantages(rollout)
    losses = []
    for budget in (None, 48):
        trainer.args.max_tokens_per_micro_batch = budget
        _, loss, problem, _ = trainer.objective(trainer.model, trainer.policy, rollout)
        assert problem is None
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], **TOLERANCE)
