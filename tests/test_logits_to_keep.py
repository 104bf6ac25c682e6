"""The language-model head on the answer's positions only (``logits_to_keep``): log-probs and entropy equal those of
the full logits, for OPT and a Llama-style chat model; a model that does not take the argument runs whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_trl.ppo import losses
from rlhf_trl.ppo.modeling import (
    PolicyAndValueWrapper,
    causal_lm_logits,
    completion_logits,
    completion_logprobs,
    position_ids_from_mask,
)


def left_padded_batch(tokenizer, prompts, completion_length, seed=0):
    encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    completion = torch.randint(5, len(tokenizer), (len(prompts), completion_length), generator=generator)
    input_ids = torch.cat([encoded["input_ids"], completion], dim=1)
    attention_mask = torch.cat([encoded["attention_mask"], torch.ones_like(completion)], dim=1)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask), completion


@pytest.mark.parametrize("model_fixture", ["tiny_base_dir", "tiny_chat_dir"])
def test_kept_logits_give_the_full_logits_answer_log_probs(model_fixture, request):
    folder = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    input_ids, attention_mask, position_ids, completion = left_padded_batch(
        tokenizer, ["Human: sort 3 1 2 Assistant:", "Human: sort 9 8 7 6 5 4 Assistant:"], completion_length=5
    )
    keep = completion.shape[1] + 1
    with torch.no_grad():
        full = causal_lm_logits(model, input_ids, attention_mask, position_ids)
        kept = causal_lm_logits(model, input_ids, attention_mask, position_ids, keep)
    assert full.shape[1] == input_ids.shape[1] and kept.shape[1] == keep  # the head really ran on fewer positions
    for temperature in (1.0, 0.7):
        torch.testing.assert_close(
            completion_logprobs(kept, completion, temperature), completion_logprobs(full, completion, temperature)
        )
    # The slice that predicts the answer: position P-1 to the second last, whatever the logits kept.
    prompt_length = input_ids.shape[1] - completion.shape[1]
    torch.testing.assert_close(completion_logits(full, completion.shape[1]), full[:, prompt_length - 1 : -1])
    torch.testing.assert_close(
        losses.entropy_from_logits(completion_logits(kept, 5)),
        losses.entropy_from_logits(full[:, prompt_length - 1 : -1]),
    )


def test_wrapper_passes_logits_to_keep_and_gradients_match(tiny_base_dir, tiny_reward_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, num_labels=1)
    wrapper = PolicyAndValueWrapper(policy, critic)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    input_ids, attention_mask, position_ids, completion = left_padded_batch(
        tokenizer, ["Human: sort 3 1 Assistant:", "Human: sort 5 Assistant:"], completion_length=4
    )
    gradients = []
    for keep in (0, completion.shape[1] + 1):
        wrapper.zero_grad()
        logits, values = wrapper(input_ids, attention_mask, position_ids, logits_to_keep=keep)
        assert values.shape == input_ids.shape  # the critic always sees every position
        completion_logprobs(logits, completion, 1.0).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[0], gradients[1])


class NoKeepModel(nn.Module):
    """A causal LM whose forward predates logits_to_keep (as some remote-code models do)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        return type("Output", (), {"logits": self.head(self.embedding(input_ids))})()


def test_model_without_logits_to_keep_runs_whole_and_is_not_retried(caplog):
    """It runs whole and is sliced afterwards, so callers get the positions they asked for either way."""
    model = NoKeepModel()
    ids = torch.randint(0, 10, (2, 6))
    mask = torch.ones_like(ids)
    with caplog.at_level("WARNING"):
        first = causal_lm_logits(model, ids, mask, position_ids_from_mask(mask), logits_to_keep=3)
        second = causal_lm_logits(model, ids, mask, position_ids_from_mask(mask), logits_to_keep=3)
    assert first.shape == (2, 3, 10) and torch.equal(first, second)
    assert model.calls == 2  # the refused call never reaches forward; the second goes straight to the whole one
    assert sum("takes no logits_to_keep" in record.message for record in caplog.records) == 1
    whole = causal_lm_logits(model, ids, mask, position_ids_from_mask(mask))
    assert torch.equal(first, whole[:, -3:])
    positions = torch.tensor([0, 4, 5])  # a packed row's answer states
    assert torch.equal(causal_lm_logits(model, ids, mask, None, logits_to_keep=positions), whole[:, positions])
