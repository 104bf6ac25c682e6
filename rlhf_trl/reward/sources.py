"""Rewards behind one interface: a reward model, Python reward functions (``module:function``), or a weighted mix.

A reward function has the signature of TRL's GRPO reward functions: ``f(prompts, completions, **columns) ->
list[float | None]`` where ``columns`` holds the other dataset columns of the batch, so functions move between the
two trainers unchanged. For conversational prompts (message lists) each completion is a list of one assistant message
``[{"role": "assistant", "content": text}]``; for plain prompts both are strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


class RewardModelError(ValueError):
    """A folder that holds no usable reward model; the message is one line naming the folder."""


def load_reward_function(spec: str) -> Callable:
    """The reward function ``spec`` names: 'module:function', a dotted path, a TRL reward function name or an
    http(s) URL of a reward server (see rlhf_trl.reward.functions); errors name the spec."""
    from rlhf_trl.reward.functions import resolve_reward_function

    return resolve_reward_function(spec)


def load_reward_model(path: str | Path, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` of a reward model folder (full model or LoRA adapter with its score head), in
    eval mode.

    Fails (:class:`RewardModelError`) when the checkpoint lacks weights the model needs: transformers would silently
    initialise a fresh score head, and every score would be noise.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_trl.models import ADAPTER_CONFIG, adapter_tokenizer_source, is_lora_folder

    path = Path(path)
    if is_lora_folder(path):
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            path, num_labels=1, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(adapter_tokenizer_source(path), trust_remote_code=trust_remote_code)
    else:
        if not (path / "config.json").exists():
            raise RewardModelError(f"{path}: no reward model here (no config.json or {ADAPTER_CONFIG})")
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, trust_remote_code=trust_remote_code
        )
        if loading_info["missing_keys"]:
            missing = ", ".join(sorted(loading_info["missing_keys"]))
            raise RewardModelError(
                f"{path}: not a trained reward model, weights missing from the checkpoint: {missing}"
            )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise RewardModelError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def reward_input_ids(tokenizer, prompt, completion) -> list[int]:
    """Token ids of (prompt, completion) as a reward model reads them, built as TRL's RewardTrainer builds its pairs.

    A conversational prompt (message list) plus the completion (assistant messages, or their text) is rendered by
    ``tokenizer``'s chat template with the special tokens the template writes and no others; a plain prompt and
    completion are joined as they are, EOS appended, with the tokenizer's special tokens (no second BOS).
    """
    from rlhf_trl.generation import encode_text, is_conversation

    if is_conversation(prompt):
        if not tokenizer.chat_template:
            raise ValueError(
                "conversational prompts need a reward model whose tokenizer has a chat template (the format it was "
                "trained on); this one has none"
            )
        answer = completion if is_conversation(completion) else [{"role": "assistant", "content": completion}]
        return encode_text(tokenizer, tokenizer.apply_chat_template(prompt + answer, tokenize=False), rendered=True)
    if is_conversation(completion):
        raise ValueError("a conversational completion needs a conversational prompt (a list of messages)")
    eos = tokenizer.eos_token or ""
    text = prompt + completion
    return encode_text(tokenizer, text if text.endswith(eos) else text + eos)


class RewardModelScorer:
    """Score prompts and completions with a sequence-classification reward model, in the format it was trained on.

    The inputs are built as TRL's RewardTrainer builds its training pairs, with the reward model's OWN tokenizer (so
    actor and reward model may use different tokenizers and templates):

    - a conversational prompt (message list) and its completion (an assistant message, or its text) are rendered
      by the reward tokenizer's chat template, with the special tokens the template writes and no others;
    - a plain prompt and completion are joined as they are, the EOS token is appended and the tokenizer adds its
      special tokens (no second BOS when the text already starts with one).

    The score is the logit at the last token; inputs longer than ``max_length`` (default: the model's positions)
    keep their end, where the answer is.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None):
        from accelerate.utils import extract_model_from_parallel

        self.model = model
        # Under DeepSpeed the frozen reward model is an engine whose ``config`` is DeepSpeed's: read the model's own.
        self.config = extract_model_from_parallel(model).config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or getattr(self.config, "max_position_embeddings", None)
        self.__name__ = "reward_model"

    @classmethod
    def from_pretrained(
        cls, path: str | Path, batch_size: int = 32, trust_remote_code: bool = False
    ) -> RewardModelScorer:
        """A scorer over the reward model folder ``path`` (see :func:`load_reward_model`)."""
        return cls(*load_reward_model(path, trust_remote_code), batch_size=batch_size)

    def encode(self, prompt, completion) -> list[int]:
        """Token ids of one (prompt, completion) as the reward model read them in training."""
        return reward_input_ids(self.tokenizer, prompt, completion)

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        """Scores [len(sequences)] on CPU of token-id sequences, in batches padded on the right."""
        device = next(self.model.parameters()).device
        if self.max_length is not None:
            sequences = [ids[-self.max_length :] for ids in sequences]
        # The head pools at the last token that is not the config's pad id, so padding uses that id, as in training.
        pad_id = self.config.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            self.config.pad_token_id = pad_id
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            rows = sequences[start : start + self.batch_size]
            length = max(len(ids) for ids in rows)
            input_ids = torch.tensor([ids + [pad_id] * (length - len(ids)) for ids in rows], device=device)
            attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in rows], device=device)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            scores.append(logits[:, 0].float().cpu())  # [batch]
        return torch.cat(scores) if scores else torch.zeros(0)

    def score(self, prompts: Sequence, completions: Sequence) -> torch.Tensor:
        """Scores [len(prompts)] of completions (texts or TRL assistant messages) to their prompts."""
        return self.score_ids([self.encode(prompt, completion) for prompt, completion in zip(prompts, completions)])

    def __call__(self, prompts, completions, **_columns) -> list[float]:
        return self.score(prompts, completions).tolist()


def first_invalid_score(total: torch.Tensor, parts: dict[str, torch.Tensor], prompts: Sequence) -> str | None:
    """A one-line description of the first sample whose ``total`` score is NaN/inf, naming the source(s) with a
    non-finite part there, the sample and its prompt; None when every total is finite. ``parts`` are
    {source name: [B] scores} as CombinedReward returns them (NaN there may also mean "not applicable")."""
    bad = (~torch.isfinite(total)).nonzero().flatten().tolist()
    if not bad:
        return None
    index = bad[0]
    sources = [(name, scores[index].item()) for name, scores in parts.items() if not math.isfinite(scores[index])]
    if math.isinf(total[index]):  # only an infinite part makes the total infinite (NaN there may be a None)
        sources = [(name, value) for name, value in sources if math.isinf(value)]
    named = " or ".join(f"{name} returned {value}" for name, value in sources) or f"the total is {total[index].item()}"
    prompt = str(prompts[index]) if index < len(prompts) else ""
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    more = f" and {len(bad) - 1} more sample(s)" if len(bad) > 1 else ""
    return f"reward source {named} for sample {index} (prompt {shown!r}){more}"


class CombinedReward:
    """Weighted sum of reward sources. A function returning None for a sample contributes 0 to the total (TRL's
    meaning: the function does not apply to that sample; its part shows NaN there). A NaN or inf value makes the
    sample's total NaN/inf, so the caller sees and refuses it (see ``first_invalid_score``) instead of training on a
    silently replaced value."""

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

    def __call__(self, prompts, completions, **columns) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total [B], {name: per-source scores [B]}); a sample's total is NaN/inf when a source gave one.

        Every source gets TRL's forms: for conversational prompts, ``prompts`` are message lists and each
        completion is a list of one assistant message; for plain prompts both are strings.
        """
        total = torch.zeros(len(prompts))
        parts = {}
        for name, function, weight in zip(self.names(), self.functions, self.weights):
            values = function(prompts=list(prompts), completions=list(completions), **columns)
            if len(values) != len(prompts):
                raise ValueError(f"reward function {name} returned {len(values)} values for {len(prompts)} samples")
            scores = torch.tensor([float("nan") if value is None else float(value) for value in values])
            not_applicable = torch.tensor([value is None for value in values], dtype=torch.bool)
            parts[name] = scores  # NaN where the source does not apply (None)
            total += weight * torch.where(not_applicable, 0.0, scores)
        return total, parts
