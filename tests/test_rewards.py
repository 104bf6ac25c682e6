"""Reward sources: functions named 'module:function', reward-model scoring with EOS, and clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_trl.reward.sources import RewardModelScorer, load_reward_function
from rlhf_trl.tiny.task import gold_scores


def test_reward_function_by_name_has_the_grpo_signature():
    function = load_reward_function("rlhf_trl.tiny.task:gold_scores")
    assert function.__wrapped__ is gold_scores  # wrapped to be called as TRL calls reward functions
    scores = function(prompts=["Human: sort 3 1 2 Assistant:"] * 2, completions=[" 1 2 3", " 1 3 2"], extra=[1, 2])
    assert scores == [1.0, pytest.approx(1 / 3)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must look like"),
        ("rlhf_trl.no_such_module:f", "cannot import module"),
        ("rlhf_trl.tiny.task:no_such_function", "has no callable"),
    ],
)
def test_bad_reward_function_names_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward_function(spec)


def test_reward_model_scores_at_the_eos_token_like_training(tiny_reward_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_dir)
    scorer = RewardModelScorer(model, tokenizer, batch_size=2)
    prompts = ["Human: sort 2 1 Assistant:", "Human: sort 9 8 7 6 Assistant:"]
    completions = [" 1 2", " 6 7 8 9"]
    batched = scorer.score(prompts, completions)
    texts = [prompt + completion for prompt, completion in zip(prompts, completions)]
    for text, score in zip(texts, batched):
        ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt")
        with torch.no_grad():
            alone = model(**ids).logits[0, 0]
        assert score.item() == pytest.approx(alone.item(), abs=1e-5), "padding must not change a score"
