"""PPOObjective: the loss of one micro-batch of a rollout, what PPO's update minimises."""

from __future__ import annotations

import random

import torch

from rlhf_trl.ppo import losses, packing
from rlhf_trl.ppo.masks import masked_mean
from rlhf_trl.ppo.modeling import completion_logits, completion_logprobs, completion_values, position_ids_from_mask


def non_finite(tensor: torch.Tensor, name: str) -> str | None:
    """'policy loss is nan' when the scalar is NaN/inf, else None."""
    return None if bool(torch.isfinite(tensor).all()) else f"{name} is {tensor.item()}"


class PPOObjective:
    """Clipped policy loss (reduced as loss_type says) + vf_coef * clipped value loss (with a critic only)
    - entropy_coef * entropy, plus the KL penalty as a loss (kl_in_reward off, weighted by the KL controller's
    coefficient) and the pretraining loss (ptx_coef > 0).

    Args:
        args: PPOConfig.
        kl_controller: gives the KL coefficient.
        tokenizer: the actor's tokenizer (encodes ptx texts).
        ptx_texts: texts for PPO-ptx (None without).
        device: where ptx batches go.
    """

    def __init__(self, args, kl_controller, tokenizer, ptx_texts: list[str] | None, device):
        self.args = args
        self.kl_controller = kl_controller
        self.tokenizer = tokenizer
        self.ptx_texts = ptx_texts
        self.device = device

    def __call__(self, model, policy, rows):
        """model: the prepared policy-and-value model; policy: its unwrapped actor; rows: the micro-batch, the
        scored rollout's samples with their advantages (``Rollout.select``). Returns (stats, loss, problem or None,
        blown_up): ``problem`` names a NaN/inf loss, ``blown_up`` says the ratio or approximate KL passed its
        threshold."""
        args = self.args
        micro_mask = rows.loss_mask()
        new_logprobs, token_entropy, new_values = self.forward(model, policy, rows)
        policy_loss, policy_stats = losses.policy_loss(
            new_logprobs,
            rows.logprobs,
            rows.advantages,
            micro_mask,
            args.cliprange,
            loss_type=args.loss_type,
            max_completion_length=args.max_new_tokens,
        )
        problems = [non_finite(policy_loss, "policy loss")]
        loss = policy_loss
        value_stats = {}
        if new_values is not None:  # a critic: PPO's value loss
            value_loss, value_stats = losses.value_loss(
                new_values, rows.values, rows.returns, micro_mask, args.cliprange_value
            )
            problems.append(non_finite(value_loss, "value loss"))
            loss = loss + args.vf_coef * value_loss
            value_stats["loss"] = value_loss
        entropy = masked_mean(token_entropy, micro_mask)
        if args.entropy_coef:
            loss = loss - args.entropy_coef * entropy
        stats = {
            "policy/loss": policy_loss.item(),
            "policy/entropy": entropy.item(),
            "policy/approx_kl": policy_stats["approx_kl"].item(),
            "policy/clip_fraction": policy_stats["clip_fraction"].item(),
            "policy/ratio_mean": policy_stats["ratio_mean"].item(),
            "policy/ratio_max": policy_stats["ratio_max"].item(),
        }
        stats.update({f"value/{name}": value.item() for name, value in value_stats.items()})
        if not args.kl_in_reward:
            old_logprobs = rows.logprobs if args.use_bias_correction_kl else None
            kl_term = losses.kl_loss(new_logprobs, rows.ref_logprobs, micro_mask, args.kl_loss_estimator, old_logprobs)
            loss = loss + self.kl_controller.value * kl_term
            stats["policy/kl_loss"] = kl_term.item()
        if args.ptx_coef > 0:
            ptx_loss = self.ptx_loss(policy)
            problems.append(non_finite(ptx_loss, "ptx loss"))
            loss = loss + args.ptx_coef * ptx_loss
            stats["ptx/loss"] = ptx_loss.item()
        blown_up = stats["policy/ratio_max"] > args.ratio_threshold or (
            args.approx_kl_threshold is not None and stats["policy/approx_kl"] > args.approx_kl_threshold
        )
        problem = next((problem for problem in problems if problem), None)
        return stats, loss, problem, blown_up

    def forward(self, model, policy, rows):
        """(log-probs [M, C] with gradient, entropy per token [M, C] (with gradient when entropy_coef > 0), values
        [M, C] or None without a critic) of the micro-batch's answers, from padded rows or, with
        max_tokens_per_micro_batch, from the same samples packed without pad tokens (packing.packed_forward)."""
        args = self.args
        entropy_grad = args.entropy_coef > 0
        if args.max_tokens_per_micro_batch is not None:

            def policy_and_value(ids, mask, positions, keep):
                return model(ids, mask, positions, logits_to_keep=keep)

            (outputs,) = packing.packed_forward(
                [policy_and_value], rows, list(range(len(rows))), args.max_tokens_per_micro_batch, policy.dtype,
                args.temperature, entropy=True, entropy_grad=entropy_grad,
            )  # fmt: skip
            return outputs
        completion = rows.completion_ids
        attention_mask = rows.attention_mask()
        # The head runs on the answer's positions only (the C+1 last): the prompt's logits are never read.
        logits, values = model(
            rows.input_ids(), attention_mask, position_ids_from_mask(attention_mask),
            logits_to_keep=completion.shape[1] + 1,
        )  # fmt: skip
        logprobs = completion_logprobs(logits, completion, args.temperature)
        with torch.set_grad_enabled(entropy_grad):
            answer_logits = completion_logits(logits, completion.shape[1])
            entropy = losses.entropy_from_logits(answer_logits, args.temperature)
        prompt_length = rows.prompt_ids.shape[1]
        return logprobs, entropy, (completion_values(values, prompt_length) if values is not None else None)

    def ptx_loss(self, policy) -> torch.Tensor:
        """Language-modelling loss of the actor on a random micro-batch of ptx texts."""
        args = self.args
        texts = random.sample(self.ptx_texts, min(args.micro_batch_size, len(self.ptx_texts)))
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=args.max_prompt_length + args.max_new_tokens,
        )
        batch = batch.to(self.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return policy(**batch, labels=labels).loss
