"""The models PPO holds and their forward passes: actor log-probs, critic values per token, frozen reference."""

from __future__ import annotations

import logging

import torch
from torch import nn

from rlhf_trl.ppo.losses import logprobs_from_logits

logger = logging.getLogger(__name__)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Left padding shifts every token; positions must count real tokens only. [B, L] -> [B, L]."""
    positions = attention_mask.long().cumsum(dim=1) - 1
    return positions.clamp(min=0)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio must be 1 on the first pass over a rollout; dropout would make it noisy."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def unwrap_peft(model):
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(type(model), "get_base_model", None)
    return model.get_base_model() if get_base is not None else model


class CriticValues(nn.Module):
    """Per-token values from a sequence-classification model: its score head applied to every position.

    DS-Chat initialises the critic from the reward model; the same head that scores a whole answer at its last
    token here estimates the return from every token.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        inner = unwrap_peft(model)
        if not hasattr(inner, "score") or not hasattr(inner, inner.base_model_prefix):
            raise ValueError(
                f"critic {type(inner).__name__} has no 'score' head over '{inner.base_model_prefix}': load it with "
                "AutoModelForSequenceClassification (num_labels=1)"
            )
        self.model = model  # registered so the optimizer, ZeRO and LoRA see the parameters

    def forward(self, input_ids, attention_mask, position_ids):
        """-> values [B, L]"""
        inner = unwrap_peft(self.model)
        backbone = getattr(inner, inner.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        return inner.score(hidden).squeeze(-1).float()


class PolicyAndValueWrapper(nn.Module):
    """Actor and critic in one module so Accelerate/DeepSpeed prepare a single engine with one optimizer whose two
    parameter groups carry the actor's and the critic's learning rates. ``value_model=None`` (an advantage estimator
    without a critic): the wrapper holds the actor alone and returns no values."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None):
        super().__init__()
        self.policy = policy
        self.critic = CriticValues(value_model) if value_model is not None else None

    def forward(
        self,
        input_ids,
        attention_mask,
        position_ids,
        with_values: bool = True,
        with_logits: bool = True,
        logits_to_keep: int = 0,
    ):
        """-> (logits [B, L, V] (or [B, logits_to_keep, V]) or None, values [B, L] or None). ``with_logits=False``
        skips the actor: scoring does so when generation already gave the rollout's log-probs. ``logits_to_keep``:
        the language-model head runs on the last positions only (0: all), see :func:`causal_lm_logits`."""
        logits = None
        if with_logits:
            logits = causal_lm_logits(self.policy, input_ids, attention_mask, position_ids, logits_to_keep)
        values = None
        if with_values and self.critic is not None:
            values = self.critic(input_ids, attention_mask, position_ids)
        return logits, values


def causal_lm_logits(model, input_ids, attention_mask, position_ids, logits_to_keep=0) -> torch.Tensor:
    """Logits of a causal LM [B, L, V], or of its last ``logits_to_keep`` positions [B, logits_to_keep, V], or of
    the positions a 1D tensor ``logits_to_keep`` lists [B, len(logits_to_keep), V] (packed rows).

    PPO reads the logits of the answer only: keeping C + 1 of them (see :func:`completion_logits`) spares the
    language-model head (hidden x vocabulary, most of a small model's compute) every prompt position. A model whose
    forward does not take Transformers' ``logits_to_keep`` (some remote-code models) is run whole and sliced
    afterwards instead, and that is logged once.
    """
    keep_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if not keep_all and _KEEPS_LOGITS.get(type(model), True):
        try:
            return model(**inputs, logits_to_keep=logits_to_keep).logits
        except TypeError as error:
            if "logits_to_keep" not in str(error):
                raise
            _KEEPS_LOGITS[type(model)] = False
            logger.warning("%s takes no logits_to_keep: its head runs on every position", type(model).__name__)
    logits = model(**inputs).logits
    if keep_all:
        return logits
    return logits[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else logits[:, logits_to_keep]


# Model classes found (by calling them) not to take logits_to_keep.
_KEEPS_LOGITS: dict[type, bool] = {}


def completion_logits(logits: torch.Tensor, completion_length: int) -> torch.Tensor:
    """logits [B, L, V] ending at the last completion token (all of prompt+completion, or the last C + 1 positions
    kept by ``logits_to_keep``) -> the logits that predict the completion tokens [B, C, V].

    The token at position t is predicted by the logits at t-1, so the completion is read from the C+1-th last
    position to the second last; counted from the end, the same slice serves full and kept logits.
    """
    return logits[:, -(completion_length + 1) : -1]


def completion_logprobs(logits, completion_ids, temperature: float):
    """logits ending at the last completion token [B, L >= C+1, V] -> log-probs of the completion tokens [B, C]."""
    return logprobs_from_logits(completion_logits(logits, completion_ids.shape[1]), completion_ids, temperature)


def completion_values(values, prompt_length: int):
    """values over prompt+completion [B, P+C] -> value of the state before each completion token [B, C]."""
    return values[:, prompt_length - 1 : -1]
