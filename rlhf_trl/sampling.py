"""Batched answer generation from a model object (used for gold-score evaluation in the step scripts)."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_completions(model, tokenizer, prompts, max_new_tokens: int = 32, batch_size: int = 64, **generate_kwargs):
    """Greedy (unless told otherwise) answers for text prompts; returns the decoded new text of each prompt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            padding_side="left",
        ).to(device)
        generate_kwargs.setdefault("do_sample", False)
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **generate_kwargs
        )
        completions.extend(tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    model.train(was_training)
    return completions


def mean_gold_score(gold_function, model, tokenizer, prompts, max_new_tokens: int = 32) -> float:
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    scores = gold_function(prompts=list(prompts), completions=completions)
    return float(sum(scores) / len(scores))
