"""Each update micro-batch runs on its own width (``Rollout.select``): the columns that are padding in all of its
samples are cut, and its loss, statistics and gradient are those of the same samples at the rollout's full width."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ppo_helpers import UPDATE_SETUPS

from rlhf_trl.ppo.experience import ROW_TENSORS, Rollout

PAD = 0


def hand_rollout() -> Rollout:
    """Four samples: prompts of 3, 1, 2 and 4 tokens (left-padded to 4), answers of 2, 5, 1 and 0 tokens (right-padded
    to 5), every per-sample field filled with values that tell the rows apart."""
    prompt_lengths, answer_lengths = [3, 1, 2, 4], [2, 5, 1, 0]
    prompt_mask = torch.tensor([[0] * (4 - n) + [1] * n for n in prompt_lengths])
    completion_mask = torch.tensor([[1] * n + [0] * (5 - n) for n in answer_lengths])
    row = torch.arange(4)[:, None]
    per_token = (row * 10 + torch.arange(5)).float()
    return Rollout(
        prompts=["p0", "p1", "p2", "p3"],
        columns={"gold": ["g0", "g1", "g2", "g3"]},
        prompt_ids=torch.where(prompt_mask.bool(), row * 100 + torch.arange(4) + 1, PAD),
        prompt_mask=prompt_mask,
        completion_ids=torch.where(completion_mask.bool(), row * 100 + 50 + torch.arange(5), PAD),
        completion_mask=completion_mask,
        completions=["c0", "c1", "c2", "c3"],
        score_parts={"reward_model": torch.tensor([0.5, 1.5, 2.5, 3.5])},
        **{name: per_token + offset for offset, name in enumerate(("logprobs", "ref_logprobs", "values"))},
        **{name: per_token - offset for offset, name in enumerate(("kl", "rewards", "advantages", "returns"))},
        scores=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        raw_scores=torch.tensor([-1.0, -2.0, -3.0, -4.0]),
        gold_scores=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        valid=torch.tensor([True, False, True, True]),
    )


def test_every_rollout_field_is_selected():
    handled = {"prompts", "columns", "prompt_ids", "prompt_mask", "completions", "score_parts", *ROW_TENSORS}
    assert {field.name for field in dataclasses.fields(Rollout)} == handled


def test_select_cuts_the_columns_padded_in_every_chosen_sample():
    rollout = hand_rollout()
    rows = rollout.select(torch.tensor([2, 0]))  # prompts 2 and 3 tokens, answers 1 and 2 tokens
    assert rows.prompt_ids.shape == (2, 3) and rows.completion_ids.shape == (2, 2)
    assert rows.prompt_ids.tolist() == [[PAD, 203, 204], [2, 3, 4]]
    assert rows.completion_ids.tolist() == [[250, PAD], [50, 51]]
    assert rows.prompts == ["p2", "p0"] and rows.completions == ["c2", "c0"] and rows.columns == {"gold": ["g2", "g0"]}
    for name in ("logprobs", "ref_logprobs", "values", "kl", "rewards", "advantages", "returns"):
        torch.testing.assert_close(getattr(rows, name), getattr(rollout, name)[[2, 0], :2])
    for name in ("scores", "raw_scores", "gold_scores", "valid"):
        assert getattr(rows, name).tolist() == getattr(rollout, name)[[2, 0]].tolist()
    assert rows.score_parts["reward_model"].tolist() == [2.5, 0.5]
    # the masks of the cut rollout are the full ones without their all-zero columns
    assert rows.attention_mask().sum().item() == rollout.attention_mask()[[2, 0]].sum().item()
    assert rows.loss_mask().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    # positions of the kept tokens are unchanged
    from rlhf_trl.ppo.modeling import position_ids_from_mask

    full = position_ids_from_mask(rollout.attention_mask()[[2, 0]])
    cut = position_ids_from_mask(rows.attention_mask())
    kept = rows.attention_mask().bool()
    assert cut[kept].tolist() == full[:, 1:6][kept].tolist()


def test_select_keeps_one_answer_column_and_the_whole_width_when_nothing_is_padding():
    rollout = hand_rollout()
    empty = rollout.select(torch.tensor([3]))  # a 4-token prompt and no answer token
    assert empty.prompt_ids.shape == (1, 4) and empty.completion_ids.shape == (1, 1)
    assert empty.loss_mask().sum().item() == 0
    everything = rollout.select(torch.arange(4))
    assert everything.prompt_ids.shape == rollout.prompt_ids.shape
    assert everything.completion_ids.shape == rollout.completion_ids.shape
    uncut = rollout.select(torch.tensor([2, 0]), cut=False)
    assert uncut.prompt_ids.tolist() == rollout.prompt_ids[[2, 0]].tolist()
    assert uncut.advantages.tolist() == rollout.advantages[[2, 0]].tolist()


@pytest.mark.parametrize(("models", "overrides"), UPDATE_SETUPS)
def test_cut_micro_batch_has_the_full_width_loss_and_gradient(request, tmp_path, models, overrides):
    import ppo_helpers

    actor_dir, reward_dir = (request.getfixturevalue(name) for name in models)
    trainer = ppo_helpers.build(tmp_path, actor_dir, reward_dir, max_steps=1, num_mini_batches=1, **overrides)
    trainer.train()  # the actor moves away from its rollout policy: ratios, clipping and KL are not trivial
    rollout = trainer.generate(trainer.next_batch())
    trainer.score(rollout)
    trainer.compute_advantages(rollout)
    # the samples with the shortest answers, then the shortest prompts: their micro-batch is narrower
    answer_lengths, prompt_lengths = rollout.completion_mask.sum(1), rollout.prompt_mask.sum(1)
    index = torch.argsort(answer_lengths * 100 + prompt_lengths)[:3]
    cut = rollout.select(index)
    assert cut.completion_ids.shape[1] + cut.prompt_ids.shape[1] < rollout.input_ids().shape[1], "nothing was cut"
    results = []
    for rows in (rollout.select(index, cut=False), cut):
        trainer.model.zero_grad()
        stats, loss, problem, _ = trainer.objective(trainer.model, trainer.policy, rows)
        assert problem is None
        loss.backward()
        gradients = [parameter.grad.clone() for parameter in trainer.model.parameters() if parameter.grad is not None]
        results.append((stats, loss.detach(), gradients))
    (full_stats, full_loss, full_gradients), (cut_stats, cut_loss, cut_gradients) = results
    torch.testing.assert_close(cut_loss, full_loss, atol=1e-6, rtol=1e-5)
    assert cut_stats.keys() == full_stats.keys()
    for name, value in full_stats.items():
        assert cut_stats[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert len(cut_gradients) == len(full_gradients) > 0
    assert any(gradient.abs().sum() > 0 for gradient in full_gradients)
    for cut_gradient, full_gradient in zip(cut_gradients, full_gradients):
        torch.testing.assert_close(cut_gradient, full_gradient, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packed", [False, True])
def test_ppo_on_cuda_trains_the_chat_model_in_bf16(tmp_path, tiny_chat_dir, tiny_chat_reward_dir, packed):
    """Two PPO steps of the tiny Llama chat model on CUDA in bf16 (micro-batches cut to their width, or packed): the
    actor moves, every logged loss is finite, and the first update's importance ratio stays near 1 although the
    rollout log-probs come from generation's bf16 logits."""
    import math

    import ppo_helpers

    trainer = ppo_helpers.build(
        tmp_path, tiny_chat_dir, tiny_chat_reward_dir, max_steps=2, use_cpu=False, bf16=True,
        max_tokens_per_micro_batch=64 if packed else None,
    )  # fmt: skip
    assert trainer.accelerator.device.type == "cuda"
    start = [parameter.detach().float().clone() for parameter in trainer.policy.parameters()]
    trainer.train()
    moved = max((p.detach().float() - s).abs().max().item() for p, s in zip(trainer.policy.parameters(), start))
    assert moved > 0, "the actor did not change"
    logged = [entry for entry in trainer.log_history if "policy/loss" in entry]
    assert logged and all(math.isfinite(entry["policy/loss"]) for entry in logged)
    assert all(math.isfinite(entry["value/loss"]) for entry in logged)
    assert logged[0]["policy/ratio_max"] < 1.5


@pytest.mark.parametrize("models", [("tiny_base_dir", "tiny_reward_dir"), ("tiny_chat_dir", "tiny_chat_reward_dir")])
def test_scoring_cuts_its_micro_batches_and_gives_the_full_width_outputs(request, tmp_path, monkeypatch, models):
    """Padded scoring runs each micro-batch on its own width: actor, reference and critic outputs on every real
    answer token equal those of the whole width, and are 0 past each micro-batch's longest answer."""
    import functools

    import ppo_helpers

    actor_dir, reward_dir = (request.getfixturevalue(name) for name in models)
    trainer = ppo_helpers.build(
        tmp_path, actor_dir, reward_dir, max_steps=1, per_device_train_batch_size=16, gradient_accumulation_steps=4,
        recompute_rollout_logprobs=True,
    )  # fmt: skip
    assert trainer.args.micro_batch_size == 2
    rollout = trainer.generate(trainer.next_batch())
    # answers ended at uneven lengths (the untrained chat model seldom ends by itself)
    lengths = torch.tensor([6, 1, 2, 3, 6, 4, 2, 2, 5, 1, 6, 6, 3, 3, 1, 6])
    assert rollout.completion_ids.shape[1] == 6
    keep = torch.arange(6)[None] < lengths[:, None]
    rollout.completion_mask = rollout.completion_mask * keep
    rollout.completion_ids = rollout.completion_ids.masked_fill(~keep, trainer.tokenizer.pad_token_id)
    lengths = rollout.completion_mask.sum(1)
    narrower = [lengths[start : start + 2].max() < rollout.completion_ids.shape[1] for start in range(0, 16, 2)]
    assert any(narrower), "every micro-batch holds a longest answer: nothing to cut"
    trainer.score(rollout)
    cut = (rollout.logprobs.clone(), rollout.ref_logprobs.clone(), rollout.values.clone())
    monkeypatch.setattr(Rollout, "select", functools.partialmethod(Rollout.select, cut=False))
    trainer.score(rollout)
    whole = (rollout.logprobs, rollout.ref_logprobs, rollout.values)
    real = rollout.completion_mask.bool()
    for cut_values, whole_values in zip(cut, whole):
        torch.testing.assert_close(cut_values[real], whole_values[real], atol=1e-5, rtol=1e-5)
        for start, is_narrower in zip(range(0, 16, 2), narrower):
            if is_narrower:
                assert (cut_values[start : start + 2, int(lengths[start : start + 2].max()) :] == 0).all()
