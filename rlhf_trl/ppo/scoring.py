"""CompletionScorer: what PPO's rewards say about completions. The reward sources (reward model and/or functions)
give the score trained on, the gold scorer a true quality that is only logged; a NaN/inf score either stops
training with an error naming the source and the sample, agreed across processes, or (drop_invalid_rewards) leaves
the sample out."""

from __future__ import annotations

import logging

import torch

from rlhf_trl.generation import completion_mask, is_conversation
from rlhf_trl.guards import InvalidRewardError, any_process
from rlhf_trl.reward.functions import TRLRewardKwargs
from rlhf_trl.reward.sources import CombinedReward, RewardModelScorer, first_invalid_score

logger = logging.getLogger("rlhf_trl.ppo.trainer")


def build_reward(
    reward_model, reward_tokenizer, reward_funcs, weights, micro_batch_size: int, prompts: list
) -> CombinedReward:
    """The reward model (already placed on its device) and the reward functions as one weighted reward."""
    sources = []
    if reward_model is not None:
        scorer = RewardModelScorer(reward_model, reward_tokenizer, micro_batch_size)
        if not scorer.tokenizer.chat_template and any(map(is_conversation, prompts)):
            raise ValueError(
                "the prompts are conversations but the reward model's tokenizer has no chat template: it would "
                "not read them in the format it was trained on"
            )
        sources.append(scorer)
    sources.extend(reward_funcs or [])
    return CombinedReward(sources, weights)


class CompletionScorer:
    """Scores completions with the reward and, where one exists, the gold scorer.

    Args:
        reward: the reward sources, combined.
        gold: the gold scorer (None: no gold score).
        tokenizer: the actor's tokenizer (its EOS and pad ids cut the completion ids reward functions receive).
        accelerator: the trainer's Accelerator (NaN/inf decisions are agreed across its processes).
        drop_invalid: leave samples with a NaN/inf score out (logged) instead of stopping.
        max_steps: PPO steps of the run (TRL's ``trainer_state.max_steps`` for reward functions).
    """

    def __init__(self, reward, gold, tokenizer, accelerator, drop_invalid: bool, max_steps: int):
        self.reward = reward
        self.gold = gold
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.drop_invalid = drop_invalid
        self.max_steps = max_steps
        # TRL's extra reward-function arguments (completion_ids, trainer_state, log_metric), built per batch.
        self.reward_kwargs = TRLRewardKwargs()

    def rewards(self, prompts, completions, columns, completion_ids, step: int):
        """Returns (total [B] on the CPU, parts {source: [B]}, valid [B] bool on the device) for the completions of
        ``prompts``; completion_ids [B, C] are the answers' tokens (real up to the first EOS)."""
        mask = completion_mask(completion_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        call_kwargs = self.reward_kwargs.for_batch(completion_ids, mask, step, self.max_steps)
        total, parts = self.reward(prompts, completions, **columns, **call_kwargs)
        return total, parts, self.valid(total, parts, prompts, step)

    def gold_scores(self, prompts, completions, columns, step: int) -> torch.Tensor:
        """Gold scores [B]; a NaN/inf one is an error like a reward's, or NaN (left out of the means) when dropping."""
        total, parts = self.gold(prompts, completions, **columns)
        valid = self.valid(total, parts, prompts, step).cpu()
        return torch.where(valid, total, float("nan"))

    def valid(self, total: torch.Tensor, parts: dict[str, torch.Tensor], prompts, step: int) -> torch.Tensor:
        """[B] bool on the device: which samples every source scored with a finite number."""
        valid = torch.isfinite(total)
        problem = None
        if not bool(valid.all()):
            problem = first_invalid_score(total, parts, prompts)
        if self.drop_invalid:
            if problem:
                logger.warning("step %d: %s; left out of the update", step, problem)
        elif any_process(problem is not None, self.accelerator.device):
            raise InvalidRewardError(
                f"step {step}: {problem or 'a reward source returned NaN/inf on another process'}"
                "; fix the reward source or set drop_invalid_rewards: true to leave such samples out"
            )
        return valid.to(self.accelerator.device)

    def logged_metrics(self) -> dict[str, float]:
        """What reward functions logged with ``log_metric`` since the last call."""
        return self.reward_kwargs.pop_metrics()
