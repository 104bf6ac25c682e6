"""Rewards behind one interface: a reward model, Python reward functions (``module:function``), or a weighted mix.

A reward function has the signature of TRL's GRPO reward functions: ``f(prompts, completions, **columns) ->
list[float | None]`` where ``columns`` holds the other dataset columns of the batch, so functions move between the
two trainers unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch


def load_reward_function(spec: str) -> Callable:
    """Import ``package.module:function``; errors name the spec."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"reward function {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward function {spec!r}: cannot import module {module_name!r} ({error})") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"reward function {spec!r}: module {module_name!r} has no callable {function_name!r}")
    return function


class RewardModelScorer:
    """Score prompt + completion texts with a sequence-classification reward model (score of the last real token).

    The texts are re-tokenized with the reward model's own tokenizer, so actor and reward model may differ. Like
    TRL's RewardTrainer during training, each text ends with the tokenizer's EOS token, where the score is read.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = "reward_model"

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """texts: full conversations. Returns [len(texts)] float scores on CPU."""
        device = next(self.model.parameters()).device
        eos = self.tokenizer.eos_token or ""
        texts = [text if text.endswith(eos) else text + eos for text in texts]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                padding_side="right",
                truncation=self.max_length is not None,
                max_length=self.max_length,
            ).to(device)
            logits = self.model(**batch).logits  # [batch, 1]: HF pools at the last non-pad token
            scores.append(logits[:, 0].float().cpu())
        return torch.cat(scores)

    def __call__(self, prompts, completions, **_columns) -> list[float]:
        return self.score_texts([prompt + completion for prompt, completion in zip(prompts, completions)]).tolist()


class CombinedReward:
    """Weighted sum of reward sources. A function returning None for a sample contributes 0 for it."""

    def __init__(self, functions: Sequence[Callable], weights: Sequence[float] | None = None):
        if not functions:
            raise ValueError("at least one reward model or reward function is needed")
        weights = list(weights) if weights is not None else [1.0] * len(functions)
        if len(weights) != len(functions):
            raise ValueError(f"{len(weights)} reward weights given for {len(functions)} reward sources")
        self.functions = list(functions)
        self.weights = weights

    def names(self) -> list[str]:
        return [getattr(function, "__name__", type(function).__name__) for function in self.functions]

    def __call__(self, prompts, completions, texts=None, **columns) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total [B], {name: per-source scores [B]}).

        ``texts`` are the whole conversations decoded in one piece; reward models read them, because joining a
        separately decoded prompt and completion can lose the space between them (word-level and SentencePiece
        tokenizers drop a leading space when decoding).
        """
        total = torch.zeros(len(prompts))
        parts = {}
        for name, function, weight in zip(self.names(), self.functions, self.weights):
            if isinstance(function, RewardModelScorer) and texts is not None:
                values = function.score_texts(list(texts)).tolist()
            else:
                values = function(prompts=list(prompts), completions=list(completions), **columns)
            if len(values) != len(prompts):
                raise ValueError(f"reward function {name} returned {len(values)} values for {len(prompts)} samples")
            scores = torch.tensor([float("nan") if value is None else float(value) for value in values])
            parts[name] = scores
            total += weight * torch.nan_to_num(scores, nan=0.0)
        return total, parts
