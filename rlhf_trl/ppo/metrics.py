"""What a PPO run measures: rollout statistics gathered over processes, and greedy evaluation on held-out prompts
(reward score, and the gold score where a gold scorer exists). Mixed into PPOTrainer."""

from __future__ import annotations

import copy

import torch

from rlhf_trl.generation import as_completions, completion_mask, completion_texts, has_eos
from rlhf_trl.ppo import losses
from rlhf_trl.ppo.experience import Rollout
from rlhf_trl.ppo.rollout import HFRollout


class MetricsMixin:
    def _gathered_mean(self, tensor: torch.Tensor) -> float:
        return self.accelerator.gather(tensor.float().reshape(-1).to(self.accelerator.device)).mean().item()

    def _gathered_nanmean(self, tensor: torch.Tensor) -> float:
        """Mean over processes leaving out NaN (scores of samples dropped for an invalid gold score)."""
        return self.accelerator.gather(tensor.float().reshape(-1).to(self.accelerator.device)).nanmean().item()

    def _rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        mask = rollout.completion_mask.float()
        kl_per_answer = losses.fill_padding(rollout.kl, mask).sum(dim=1)
        non_score = -self.kl_controller.value * kl_per_answer
        ended = has_eos(rollout.completion_ids, self.tokenizer.eos_token_id).float()
        metrics = {
            "objective/score": self._gathered_mean(rollout.raw_scores),
            "objective/shaped_score": self._gathered_mean(rollout.scores),
            "objective/kl": self._gathered_mean(kl_per_answer),
            "objective/non_score_reward": self._gathered_mean(non_score),
            "objective/rlhf_reward": self._gathered_mean(rollout.scores + non_score),
            "objective/advantage_mean": self._gathered_mean(losses.masked_mean(rollout.advantages, mask)),
            "value/mean": self._gathered_mean(losses.masked_mean(rollout.values, mask)),
            "response/length": self._gathered_mean(mask.sum(dim=1)),
            "response/no_eos_fraction": 1.0 - self._gathered_mean(ended),
            "episodes": float(self.state["episodes"]),
        }
        metrics["objective/entropy"] = self._gathered_mean(-losses.fill_padding(rollout.logprobs, mask).sum(dim=1))
        if rollout.valid is not None:
            # Samples left out because a reward source gave NaN/inf (drop_invalid_rewards), summed over processes.
            dropped = self.accelerator.gather((~rollout.valid).float().sum().reshape(1).to(self.accelerator.device))
            metrics["reward/invalid_samples"] = dropped.sum().item()
        for name, values in rollout.score_parts.items():
            if len(rollout.score_parts) > 1:
                metrics[f"objective/score_{name}"] = self._gathered_mean(torch.nan_to_num(values))
        if rollout.gold_scores is not None:
            metrics["objective/gold_score"] = self._gathered_nanmean(rollout.gold_scores)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy answers on held-out prompts: mean reward score, and gold score where a gold scorer exists."""
        prompts = self.eval_prompts
        count = min(len(prompts["prompt"]), self.args.eval_prompts_limit)
        greedy = copy.deepcopy(self.generation_config)
        greedy.do_sample, greedy.temperature, greedy.top_k, greedy.top_p = False, 1.0, None, None
        completions, answer_ids = [], []
        # Plain HF generate (whatever the training backend), so evaluations compare across backends.
        generator = HFRollout(self.model, self.tokenizer, greedy, self.accelerator)
        for part in self._micro_batches(count, max(self.args.per_device_train_batch_size, 1)):
            batch = self._collate(prompts["prompt"][part], prompts["ids"][part], {})
            new_tokens = generator.generate(batch["prompt_ids"], batch["prompt_mask"])
            ended = completion_mask(new_tokens, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            new_tokens = new_tokens.masked_fill(ended == 0, self.tokenizer.pad_token_id)
            completions.extend(completion_texts(self.tokenizer, batch["prompt_ids"], new_tokens))
            answer_ids.extend(new_tokens.cpu().unbind(0))
        texts = prompts["prompt"][:count]
        completions = as_completions(texts, completions)
        columns = {key: values[:count] for key, values in prompts["columns"].items()}
        answer_ids = torch.nn.utils.rnn.pad_sequence(
            answer_ids, batch_first=True, padding_value=self.tokenizer.pad_token_id
        )
        scores, parts = self.reward(texts, completions, **columns, **self._reward_call_kwargs(answer_ids))
        valid = self._valid_scores(scores, parts, texts).cpu()
        metrics = {"eval/score": scores[valid].mean().item()}
        if self.gold is not None:
            metrics["eval/gold_score"] = self._gold_scores(texts, completions, columns).nanmean().item()
        return metrics
