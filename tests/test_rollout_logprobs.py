"""Rollout log-probs from generation: the ``hf`` backend's log-probs, read from the raw decoding logits at the
sampling temperature, agree with a fresh forward; the trainer then skips the actor's scoring forward, and
``recompute_rollout_logprobs`` restores it."""

from __future__ import annotations

import ppo_helpers
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rlhf_trl.generation import completion_mask
from rlhf_trl.ppo import losses
from rlhf_trl.ppo.modeling import completion_logprobs, position_ids_from_mask
from rlhf_trl.ppo.rollout import HFRollout

PROMPTS = ["Human: sort 3 1 2 Assistant:", "Human: sort 5 Assistant:", "Human: sort 9 8 7 6 5 Assistant:"]
TEMPERATURE = 0.7


def _sampling_config(tokenizer, **extra) -> GenerationConfig:
    # top-k and top-p make the processed ``scores`` differ from the raw logits: the log-probs must not use them.
    return GenerationConfig(
        max_new_tokens=10,
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=5,
        top_p=0.9,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _max_disagreement(model, tokenizer, **generation) -> float:
    """Largest |rollout log-prob - forward log-prob| over the real answer tokens of one sampled batch."""
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
    rollout = HFRollout(model, tokenizer, _sampling_config(tokenizer, **generation))
    torch.manual_seed(0)
    completion_ids, rollout_logprobs = rollout.generate_with_logprobs(prompt_ids, prompt_mask, TEMPERATURE)
    torch.manual_seed(0)
    assert torch.equal(rollout.generate(prompt_ids, prompt_mask), completion_ids)  # same samples either way
    assert rollout_logprobs.shape == completion_ids.shape
    mask = completion_mask(completion_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, mask], 1)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        ).logits
    forward_logprobs = completion_logprobs(logits, completion_ids, TEMPERATURE)
    real = mask.bool()
    assert real.sum() > len(PROMPTS)
    return (rollout_logprobs[real] - forward_logprobs[real]).abs().max().item()


@pytest.mark.parametrize(
    "generation",
    [{}, {"cache_implementation": "static"}],  # read during decoding; from generate's stored logits (output_logits)
)
def test_rollout_logprobs_agree_with_a_forward_tiny_opt(tiny_base_dir, generation):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    assert _max_disagreement(model, tokenizer, **generation) < 1e-4  # fp32: measured about 1e-6


def test_rollout_logprobs_agree_with_a_forward_lora(tiny_chat_dir):
    """With PEFT adapters generate runs the base model's forward: the log-probs are read there, adapters included."""
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert _max_disagreement(model.eval(), tokenizer) < 1e-4
    with model.disable_adapter():  # the adapters change the answer's log-probs: the check above sees them
        assert _max_disagreement(model.eval(), tokenizer) < 1e-4


def test_decoding_logits_are_not_kept_for_every_step(tiny_chat_dir):
    """By default generate is not asked for every step's logits (a [batch, vocab] tensor per generated token); the
    hooks that read them step by step are gone afterwards."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir).eval()
    asked = []
    generate = model.generate

    def spy(*args, generation_config, **kwargs):
        asked.append(bool(generation_config.output_logits))
        return generate(*args, generation_config=generation_config, **kwargs)

    model.generate = spy
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    rollout = HFRollout(model, tokenizer, _sampling_config(tokenizer))
    completion_ids, logprobs = rollout.generate_with_logprobs(batch["input_ids"], batch["attention_mask"], 0.7)
    assert asked == [False] and logprobs.shape == completion_ids.shape
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_decode_logprobs_that_do_not_line_up_give_none(caplog):
    from rlhf_trl.ppo.rollout import DecodeLogprobs

    reader = DecodeLogprobs(torch.nn.Identity(), TEMPERATURE)
    reader.values = [torch.zeros(2)]  # one step read, three tokens returned
    with caplog.at_level("WARNING"):
        assert reader.logprobs(torch.zeros(2, 3, dtype=torch.long)) is None
    assert "recomputing" in caplog.text


@pytest.mark.parametrize("fixture", ["tiny_chat_dir", "tiny_qwen2_chat_dir"])
def test_rollout_logprobs_agree_with_a_forward_chat_models(request, fixture):
    path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert _max_disagreement(model, tokenizer) < 1e-4


def test_processed_scores_would_not_agree(tiny_base_dir):
    """The check above can fail: log-probs from top-k/top-p filtered scores differ from the forward's."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    output = model.generate(
        **batch, generation_config=_sampling_config(tokenizer), output_scores=True, output_logits=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    completion_ids = output.sequences[:, batch["input_ids"].shape[1] :]
    from_scores = losses.logprobs_from_logits(torch.stack(output.scores, 1), completion_ids, 1.0)
    from_logits = losses.logprobs_from_logits(torch.stack(output.logits, 1), completion_ids, TEMPERATURE)
    assert (from_scores - from_logits).abs().max() > 1e-2


def _count_actor_forwards(trainer) -> list[int]:
    calls = [0]
    policy = trainer.policy

    def count(module, args, kwargs):
        calls[0] += 1

    policy.register_forward_pre_hook(count, with_kwargs=True)
    return calls


@pytest.mark.parametrize("recompute", [False, True])
def test_trainer_scores_without_the_actor_forward(tmp_path, tiny_base_dir, tiny_reward_dir, recompute):
    trainer = ppo_helpers.build(
        tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=1, num_mini_batches=1, temperature=TEMPERATURE,
        recompute_rollout_logprobs=recompute,
    )  # fmt: skip
    rollout = trainer.generate(trainer.next_batch())
    assert (rollout.logprobs is None) == recompute
    from_generation = rollout.logprobs
    calls = _count_actor_forwards(trainer)
    trainer.score(rollout)
    # ref_model is a separate copy here, so every policy forward in score() is the actor's own
    assert calls[0] == (1 if recompute else 0) * -(-len(rollout) // trainer.args.micro_batch_size)
    real = rollout.completion_mask.bool()
    if not recompute:
        assert rollout.logprobs is from_generation
        trainer.args.recompute_rollout_logprobs = True
        rollout.logprobs = None
        trainer.score(rollout)
        assert (from_generation[real] - rollout.logprobs[real]).abs().max() < 1e-4
    trainer.compute_advantages(rollout)
    stats = trainer.update(rollout)
    assert stats["policy/ratio_max"] < 1.01  # first pass over the rollout: the ratio is 1 up to rounding
